"""Every recipe parses with no unknown key; every offline twin trains 2 steps on CPU and leaves adapter and table."""

from pathlib import Path

import pytest

from pdl_plugin import FrequencyTable
from pdl_plugin.recipe import parse_recipe, read_recipe_file
from pdl_plugin.cli.sft import train

RECIPES = Path(__file__).parents[2] / "recipes"
GPU_RECIPES = sorted((RECIPES / "gpu").glob("*.yaml"))
OFFLINE_RECIPES = sorted((RECIPES / "offline").glob("*.yaml"))
TASKS = ("summarization", "dialogue", "code")


def test_each_task_has_lora_and_qlora_gpu_recipes_and_an_offline_twin():
    names = {path.stem for path in GPU_RECIPES}
    assert names >= {f"{task}_{adapter}" for task in TASKS for adapter in ("lora", "qlora")}
    assert {path.stem.split("_")[0] for path in OFFLINE_RECIPES} >= set(TASKS)


@pytest.mark.parametrize("path", GPU_RECIPES, ids=lambda p: p.stem)
def test_gpu_recipe_fields(path):
    """No hub here: check the fields only (use_cpu lets the bf16 setting parse on a machine without a GPU)."""
    read_recipe_file(path)
    recipe = parse_recipe(["--config", str(path), "--use_cpu", "true"])
    training, model = recipe.training, recipe.model
    assert training.loss_type == "pdl" and 0 < training.pdl_alpha <= 1.5
    assert "/" in model.model_name_or_path and "/" in recipe.script.dataset_name  # hub ids
    assert model.use_peft and training.bf16 and training.gradient_checkpointing
    assert model.load_in_4bit == path.stem.endswith("qlora")
    assert training.max_length and training.per_device_train_batch_size and training.gradient_accumulation_steps
    assert training.assistant_only_loss == path.stem.startswith("dialogue")
    assert "Expected peak GPU memory" in path.read_text()


@pytest.mark.parametrize("path", OFFLINE_RECIPES, ids=lambda p: p.stem)
def test_offline_twin_trains_two_steps_and_writes_adapter_and_table(path, tmp_path):
    trainer = train(["--config", str(path), "--max_steps", "2", "--logging_steps", "1",
                     "--output_dir", str(tmp_path), "--per_device_train_batch_size", "2",
                     "--gradient_accumulation_steps", "1"])
    assert (tmp_path / "adapter_model.safetensors").is_file()
    table = FrequencyTable.load(tmp_path)
    assert table.total == trainer.pdl_table.total > 0
    expected_masking = "assistant_only" if path.stem.startswith("dialogue") else "completion_only"
    assert table.masking == expected_masking
    assert [entry["step"] for entry in trainer.state.log_history if "ce_loss" in entry] == [1, 2]


def test_max_eval_samples_evaluates_on_the_first_rows_only(tmp_path):
    """A capped validation split during training: the trainer holds exactly the first N rows and logs eval metrics."""
    from pdl_plugin.recipe import load_recipe_datasets

    argv = ["--config", str(RECIPES / "offline" / "dialogue_lora.yaml"), "--max_steps", "1",
            "--output_dir", str(tmp_path), "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
            "--eval_strategy", "steps", "--eval_steps", "1", "--max_eval_samples", "3"]
    full_validation = load_recipe_datasets(parse_recipe(argv))[1]
    trainer = train(argv)
    assert len(trainer.eval_dataset) == 3 < len(full_validation)
    # the same rows as the first three of the split (TRL tokenised them: compare the decoded assistant reply)
    replies = [row["messages"][-1]["content"] for row in full_validation.select(range(3))]
    decoded = [trainer.processing_class.decode(row["input_ids"]) for row in trainer.eval_dataset]
    assert all(reply.strip() in text for reply, text in zip(replies, decoded))
    assert any("eval_ce_loss" in entry for entry in trainer.state.log_history)


@pytest.mark.parametrize("value", ["0", "-2"])
def test_max_eval_samples_below_one_is_refused(value):
    from pdl_plugin.errors import PDLConfigError

    with pytest.raises(PDLConfigError, match="max_eval_samples must be a whole number >= 1"):
        parse_recipe(["--config", str(RECIPES / "offline" / "dialogue_lora.yaml"), "--max_eval_samples", value])
