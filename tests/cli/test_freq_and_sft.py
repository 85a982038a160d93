"""`pdl-freq` counts exactly what the trainer counts; `pdl-sft` trains and leaves adapter, table and settings."""

import json

import torch
from datasets import Dataset

from conftest import CONVERSATIONS, PROMPT_COMPLETION, cpu_args, make_tiny_model
from pdl_plugin import FrequencyTable, PDLSFTTrainer
from pdl_plugin.cli.freq import freq
from pdl_plugin.cli.sft import train


def _local_data_recipe(tmp_path, rows: list[dict], extra: str = "") -> str:
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "model_name_or_path: embedded:SmolLM2-135M-Instruct\n"
        f"datasets:\n  - path: json\n    data_files: {data}\n    split: train\n"
        f"output_dir: {tmp_path / 'out'}\nloss_type: pdl\npdl_alpha: 0.8\nbf16: false\nuse_cpu: true\n{extra}"
    )
    return str(recipe)


def _trainer_table(tmp_path, tokenizer, rows, **overrides):
    trainer = PDLSFTTrainer(make_tiny_model(len(tokenizer)), cpu_args(tmp_path / "t", loss_type="pdl", **overrides),
                            Dataset.from_list(rows), processing_class=tokenizer)
    return trainer.pdl_table


def test_freq_equals_the_trainer_table_for_prompt_completion(tmp_path, tokenizer):
    rows = [dict(zip(PROMPT_COMPLETION, values)) for values in zip(*PROMPT_COMPLETION.values())]
    recipe = _local_data_recipe(tmp_path, rows)
    table = freq(["--config", recipe, "--output", str(tmp_path / "t.safetensors"), "--plot", str(tmp_path / "p.png")])
    expected = _trainer_table(tmp_path, tokenizer, rows)
    assert torch.equal(table.counts, expected.counts) and table.masking == expected.masking == "completion_only"
    # the same data, so the same fingerprint: a reused table is not reported as counted on other data
    assert table.data_fingerprint == expected.data_fingerprint != "unavailable"
    assert torch.equal(FrequencyTable.load(tmp_path / "t.safetensors").counts, expected.counts)
    assert (tmp_path / "p.png").stat().st_size > 10_000


def test_freq_equals_the_trainer_table_for_assistant_only_conversations(tmp_path, tokenizer):
    rows = [{"messages": conversation} for conversation in CONVERSATIONS]
    recipe = _local_data_recipe(tmp_path, rows, "assistant_only_loss: true\n")
    table = freq(["--config", recipe, "--output", str(tmp_path / "t.safetensors")])
    expected = _trainer_table(tmp_path, tokenizer, rows, assistant_only_loss=True)
    assert torch.equal(table.counts, expected.counts) and table.masking == "assistant_only"
    assert table.data_fingerprint == expected.data_fingerprint != "unavailable"


def test_freq_inspects_an_existing_table(tmp_path):
    rows = [dict(zip(PROMPT_COMPLETION, values)) for values in zip(*PROMPT_COMPLETION.values())]
    recipe = _local_data_recipe(tmp_path, rows)
    counted = freq(["--config", recipe, "--output", str(tmp_path / "t.safetensors")])
    shown = freq(["--config", recipe, "--table", str(tmp_path / "t.safetensors")])
    assert torch.equal(shown.counts, counted.counts)


def test_sft_trains_lora_and_saves_adapter_table_and_settings(tmp_path):
    rows = [{"messages": conversation} for conversation in CONVERSATIONS]
    recipe = _local_data_recipe(
        tmp_path, rows,
        "assistant_only_loss: true\nuse_peft: true\nlora_r: 4\nlora_target_modules: [q_proj, v_proj]\n"
        "max_steps: 2\nper_device_train_batch_size: 2\nlogging_steps: 1\nreport_to: none\nsave_strategy: 'no'\n"
        "gradient_checkpointing: false\nmax_length: 64\n",
    )
    trainer = train(["--config", recipe])
    out = tmp_path / "out"
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    assert FrequencyTable.load(out).total == trainer.pdl_table.total > 0
    assert json.loads((out / "pdl_config.json").read_text())["pdl_alpha"] == 0.8
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 2 and all("ce_loss" in entry and "pdl_mean_weight" in entry for entry in logged)
