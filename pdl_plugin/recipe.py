"""Recipes as library code: reading a TRL-CLI style recipe (YAML + `--key value` overrides) into TRL's dataclasses
plus `PDLSFTConfig`, loading its datasets, and running it. The CLIs (`pdl-sft`, `pdl-freq`, `pdl-eval`) and the
evaluation call these; nothing here prints or exits."""

from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments, TrlParser

from .config import PDLSFTConfig
from .data.embedded_model import EMBEDDED_PREFIX, resolve_embedded_model
from .data.registry import resolve_embedded_dataset
from .errors import PDLConfigError, PDLError


@dataclass
class Recipe:
    script: ScriptArguments
    training: PDLSFTConfig
    model: ModelConfig
    datasets: DatasetMixtureConfig


class _RecipeParser(TrlParser):
    """TrlParser whose argument errors become one clear message instead of a screen of usage."""

    def error(self, message):  # argparse calls this on a bad value or an unknown flag
        raise PDLConfigError(f"{message}. Fix that value in the recipe or on the command line.")


def _parser() -> _RecipeParser:
    return _RecipeParser((ScriptArguments, PDLSFTConfig, ModelConfig, DatasetMixtureConfig))


def known_keys() -> set[str]:
    return {action.dest for action in _parser()._actions} - {"help"}


def read_recipe_file(path: str | Path) -> dict:
    """Load the YAML mapping, refusing a missing file, bad YAML, or a key no dataclass knows (naming the key)."""
    path = Path(path)
    if not path.is_file():
        raise PDLConfigError(f"Recipe file {path} not found. Pass an existing YAML file, e.g. one under recipes/.")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise PDLConfigError(f"Recipe {path} is not valid YAML: {err}") from None
    if not isinstance(config, dict):
        raise PDLConfigError(f"Recipe {path} must be a YAML mapping of `key: value` lines.")
    check_keys(config, source=f"recipe {path}")
    return config


def check_keys(config: dict, source: str) -> None:
    keys = known_keys() | {"env"}
    for key in config:
        if key not in keys:
            close = difflib.get_close_matches(str(key), keys, n=1)
            hint = f" Did you mean `{close[0]}`?" if close else ""
            raise PDLConfigError(
                f"Unknown key `{key}` in {source}: it is not a field of TRL's ScriptArguments, SFTConfig, ModelConfig, "
                f"DatasetMixtureConfig nor of the PDL settings.{hint} Remove or rename it."
            )


def parse_recipe(argv: list[str]) -> Recipe:
    """`--config RECIPE.yaml` plus overrides, exactly as `trl sft --config` reads them, with unknown keys refused."""
    argv = list(argv)
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv):
            raise PDLConfigError("`--config` needs a recipe path, e.g. `--config recipes/offline/dialogue_lora.yaml`.")
        read_recipe_file(argv[index + 1])
    saved_argv = sys.argv
    sys.argv = [saved_argv[0], *argv]
    try:
        script, training, model, datasets = _parser().parse_args_and_config(args=argv)
    except PDLError:
        raise
    except ValueError as err:  # TRL's and transformers' own validation, e.g. bf16 asked for on a CPU
        raise PDLConfigError(f"The recipe's settings are invalid: {err}") from None
    finally:
        sys.argv = saved_argv
    model.model_name_or_path = resolve_model(model.model_name_or_path)
    return Recipe(script, training, model, datasets)


def resolve_model(name: str | None) -> str:
    if not name:
        raise PDLConfigError("The recipe names no model: set `model_name_or_path` (a hub id, a local folder, or "
                             f"`{EMBEDDED_PREFIX}SmolLM2-135M-Instruct`).")
    return resolve_embedded_model(name) if name.startswith(EMBEDDED_PREFIX) else name


def load_recipe_datasets(recipe: Recipe):
    """The train and (optional) eval splits, from the hub, local files, or a dataset this package ships."""
    from datasets import load_dataset
    from trl import get_dataset

    script = recipe.script
    if recipe.datasets.datasets:
        dataset = get_dataset(recipe.datasets)
    elif script.dataset_name and script.dataset_name.startswith(EMBEDDED_PREFIX):
        dataset = resolve_embedded_dataset(script.dataset_name)
    elif script.dataset_name:
        dataset = load_dataset(script.dataset_name, name=script.dataset_config, streaming=script.dataset_streaming)
    else:
        raise PDLConfigError("The recipe names no dataset: set `dataset_name` (hub id, local path or "
                             f"`{EMBEDDED_PREFIX}dialogue`) or a `datasets:` mixture.")
    if script.dataset_train_split not in dataset:
        raise PDLConfigError(
            f"The dataset has no split `{script.dataset_train_split}` (it has {list(dataset)}). "
            "Set `dataset_train_split` to one of them."
        )
    train = dataset[script.dataset_train_split]
    evaluate = recipe.training.eval_strategy != "no"
    eval_split = script.dataset_test_split
    if evaluate and eval_split not in dataset:
        raise PDLConfigError(
            f"eval_strategy is {recipe.training.eval_strategy!r} but the dataset has no split `{eval_split}` "
            f"(it has {list(dataset)}). Set `dataset_test_split`, or `eval_strategy: 'no'`."
        )
    return train, dataset[eval_split] if evaluate else None


def run_recipe(argv: list[str]):
    """Train with the recipe `--config RECIPE.yaml [--key value ...]` and save the model; returns the trainer."""
    from trl import get_peft_config, get_quantization_config

    from .trainer import PDLSFTTrainer

    recipe = parse_recipe(argv)
    training, model_args = recipe.training, recipe.model
    training.model_init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": training.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        **(training.model_init_kwargs or {}),
    }
    train_dataset, eval_dataset = load_recipe_datasets(recipe)
    trainer = PDLSFTTrainer(
        model=model_args.model_name_or_path,
        args=training,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training.resume_from_checkpoint)
    trainer.save_model(training.output_dir)
    return trainer


def count_recipe_table(recipe, tokenizer, shard: tuple[int, int] | None = None) -> FrequencyTable:
    """The table of the recipe's training split (or one contiguous shard of it), prepared as the trainer prepares it."""
    from transformers import AutoConfig

    from .engine import data_fingerprint
    from .frequency import FrequencyTable, count_trained_tokens, tokenizer_fingerprint
    from .preparation import prepare_like_sft_trainer

    train_dataset, _ = load_recipe_datasets(recipe)
    if shard is not None:
        index, count = shard
        train_dataset = train_dataset.shard(num_shards=count, index=index, contiguous=True)
    prepared, masking = prepare_like_sft_trainer(train_dataset, tokenizer, recipe.training)
    config = AutoConfig.from_pretrained(recipe.model.model_name_or_path, revision=recipe.model.model_revision)
    vocab_rows = config.get_text_config().vocab_size
    counts = count_trained_tokens(prepared, vocab_rows)
    return FrequencyTable(counts, tokenizer_fingerprint(tokenizer), masking, data_fingerprint(prepared))
