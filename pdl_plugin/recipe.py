"""Recipes as library code: reading a TRL-CLI style recipe (YAML + `--key value` overrides) into TRL's dataclasses
plus `PDLSFTConfig`, loading its datasets, and running it. The CLIs (`pdl-sft`, `pdl-freq`, `pdl-eval`) and the
evaluation call these; nothing here prints or exits."""

from __future__ import annotations

import difflib
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments, TrlParser

from .checkpoints import check_resume_checkpoint
from .config import PDLSFTConfig
from .data.embedded_model import EMBEDDED_PREFIX, resolve_embedded_model
from .errors import PDLConfigError, PDLError
from .settings import check_loss_type
from .recipe_data import (check_local_data_files, first_rows, load_dataset_dict,  # noqa: F401  (re-exported)
                          load_recipe_datasets)

if TYPE_CHECKING:
    from .frequency import FrequencyTable
    from .preparation import PreparationReport


@dataclass
class RecipeScriptArguments(ScriptArguments):
    """TRL's ScriptArguments plus what a pdl-sft recipe adds for its data."""

    max_eval_samples: int | None = field(
        default=None,
        metadata={"help": "Evaluate during training on the first N rows of the eval split only (as in transformers' "
                  "example scripts): a large validation split evaluated every `eval_steps` can cost more than the "
                  "training. Default: all rows."},
    )

    def __post_init__(self):
        if self.max_eval_samples is not None and self.max_eval_samples < 1:
            raise PDLConfigError(f"max_eval_samples must be a whole number >= 1 (or left out for all rows), got "
                                 f"{self.max_eval_samples}.")


@dataclass
class Recipe:
    script: RecipeScriptArguments
    training: PDLSFTConfig
    model: ModelConfig
    datasets: DatasetMixtureConfig


class _RecipeParser(TrlParser):
    """TrlParser whose argument errors become one clear message instead of a screen of usage."""

    def error(self, message):  # argparse calls this on a bad value or an unknown flag
        raise PDLConfigError(f"{message}. Fix that value in the recipe or on the command line.")


def _parser() -> _RecipeParser:
    return _RecipeParser((RecipeScriptArguments, PDLSFTConfig, ModelConfig, DatasetMixtureConfig))


def known_keys() -> set[str]:
    return {action.dest for action in _parser()._actions} - {"help"}


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that repeats a key (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
            seen: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:  # an unhashable key: let PyYAML report it
                    continue
                if first != key_node.start_mark.line + 1:
                    raise PDLConfigError(
                        f"Recipe {self.name}: the key `{key}` appears twice (lines {first} and "
                        f"{key_node.start_mark.line + 1}); YAML would silently keep the last one. Keep one of them."
                    )
        return super().construct_mapping(node, deep=deep)


def read_recipe_file(path: str | Path) -> dict:
    """Load the YAML mapping, refusing a missing file, bad YAML, a repeated key, or a key no dataclass knows."""
    path = Path(path)
    if path.is_dir():
        raise PDLConfigError(f"Recipe {path} is a folder, not a file. Pass a recipe's YAML file, e.g. "
                             "`--config recipes/offline/dialogue_lora.yaml`.")
    if not path.is_file():
        raise PDLConfigError(f"Recipe file {path} not found. Pass an existing YAML file, e.g. one under recipes/.")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise PDLConfigError(
            f"Recipe {path} is not UTF-8 text (byte {path.read_bytes()[err.start]:#04x} on line {line}). Save it as "
            "UTF-8 (e.g. `iconv -f latin1 -t utf-8`)."
        ) from None
    except OSError as err:
        raise PDLConfigError(f"Cannot read the recipe {path}: {err.strerror or err}.") from None
    try:
        loader = _UniqueKeyLoader(text)
        loader.name = str(path)
        try:
            config = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        raise PDLConfigError(f"Recipe {path} is not valid YAML: {err}") from None
    if not isinstance(config, dict):
        raise PDLConfigError(f"Recipe {path} must be a YAML mapping of `key: value` lines.")
    check_recipe_keys(config, source=f"in recipe {path}")
    return config


_LOCAL_DATA_KEYS = ("data_files", "data_dir")


def check_recipe_keys(config: dict, source: str) -> None:
    """Refuse a recipe key that no part of the recipe reads (a typo would otherwise keep the default)."""
    keys = known_keys() | {"env"}
    for key in config:
        if key not in keys:
            raise PDLConfigError(_unknown_key_message(str(key), keys, source))


def check_unused_options(unused: list[str], source: str) -> None:
    """Refuse what the parser left unused (an unknown `--option`, a stray value) with the recipe file's message and
    its "did you mean", instead of HfArgumentParser's list of unused arguments."""
    for token in unused:
        if token.startswith("--") and len(token) > 2:
            key = token[2:].split("=", 1)[0].replace("-", "_")
            raise PDLConfigError(_unknown_key_message(key, known_keys(), source, "--"))
    if unused:
        raise PDLConfigError(f"Unexpected {' '.join(unused)!r} {source}: every override is `--key value`.")


def _unknown_key_message(key: str, keys: set[str], source: str, prefix: str = "") -> str:
    if key in _LOCAL_DATA_KEYS:  # `load_dataset` takes them, TRL's recipes do not: say where they go
        hint = (" Local files go in a `datasets:` mixture, as TRL reads them: `datasets: [{path: json, data_files: "
                "train.jsonl}]`, or set `dataset_name` to a folder of data files.")
    else:
        close = difflib.get_close_matches(key, keys, n=1)
        hint = f" Did you mean `{prefix}{close[0]}`?" if close else ""
    return (f"Unknown key `{prefix}{key}` {source}: it is not a field of TRL's ScriptArguments, SFTConfig, "
            f"ModelConfig, DatasetMixtureConfig nor of the PDL settings.{hint} Remove or rename it.")


def parse_recipe(argv: list[str]) -> Recipe:
    """`--config RECIPE.yaml` plus overrides, exactly as `trl sft --config` reads them, with unknown keys refused."""
    argv = list(argv)
    given = {flag.split("=")[0][2:] for flag in argv if flag.startswith("--pdl_")}
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv):
            raise PDLConfigError("`--config` needs a recipe path, e.g. `--config recipes/offline/dialogue_lora.yaml`.")
        given |= {key for key, value in read_recipe_file(argv[index + 1]).items() if value is not None}
    saved_argv = sys.argv
    sys.argv = [saved_argv[0], *argv]
    try:
        script, training, model, datasets, unused_in_file, unused = _parser().parse_args_and_config(
            args=argv, return_remaining_strings=True, separate_remaining_strings=True
        )
    except PDLError:
        raise
    except ValueError as err:  # TRL's and transformers' own validation, e.g. bf16 asked for on a CPU
        raise PDLConfigError(f"The recipe's settings are invalid: {err}") from None
    finally:
        sys.argv = saved_argv
    check_unused_options(unused_in_file, "in the recipe file")  # none: read_recipe_file checked its keys
    check_unused_options(unused, "on the command line")
    # PDLSFTConfig can only see settings that differ from their defaults; the recipe says which ones were given
    check_loss_type(training.loss_type, sorted(given), "Set `loss_type: pdl`")
    model.model_name_or_path = resolve_model(model.model_name_or_path)
    training.resume_from_checkpoint = _resume_value(training.resume_from_checkpoint)
    return Recipe(script, training, model, datasets)


def _resume_value(value):
    """`resume_from_checkpoint` as the Trainer takes it: True (the last checkpoint of output_dir), a path, or None.

    On the command line `--resume_from_checkpoint true` arrives as the string 'true', which the Trainer would take
    for a folder named `true`."""
    if isinstance(value, str) and not Path(value).exists():
        if value.strip().lower() in ("true", "yes", "last"):
            return True
        if value.strip().lower() in ("false", "no", "none", "null", ""):
            return None
    return value or None


def resolve_model(name: str | None) -> str:
    if not name:
        raise PDLConfigError("The recipe names no model: set `model_name_or_path` (a hub id, a local folder, or "
                             f"`{EMBEDDED_PREFIX}SmolLM2-135M-Instruct`).")
    return resolve_embedded_model(name) if name.startswith(EMBEDDED_PREFIX) else name


def model_vocab_rows(recipe: Recipe) -> int:
    """The rows of the recipe's model's output embedding, from its config alone (no weights are loaded)."""
    from transformers import AutoConfig

    name = recipe.model.model_name_or_path
    try:
        config = AutoConfig.from_pretrained(
            name, revision=recipe.model.model_revision, trust_remote_code=recipe.training.trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise PDLConfigError(
            f"Cannot load the model config of `model_name_or_path: {name}`: {str(err).splitlines()[0]} Use an "
            "existing local folder, a hub id (with network access), or `embedded:SmolLM2-135M-Instruct`."
        ) from None
    return int(config.get_text_config().vocab_size)


def load_recipe_tokenizer(recipe: Recipe):
    from transformers import AutoTokenizer

    name = recipe.model.model_name_or_path
    try:
        return AutoTokenizer.from_pretrained(
            name, revision=recipe.model.model_revision, trust_remote_code=recipe.training.trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise PDLConfigError(
            f"Cannot load the tokenizer of `model_name_or_path: {name}`: {str(err).splitlines()[0]}"
        ) from None


def check_before_training(recipe: Recipe) -> None:
    """Everything about the run's files that can be refused before a model loads or a token is counted."""
    from .files import check_can_create_folder

    training = recipe.training
    if not str(training.output_dir or "").strip():
        raise PDLConfigError("output_dir is empty: set it to the folder the run's adapter and PDL files go to, e.g. "
                             "`--output_dir outputs/my-run`.")
    check_can_create_folder(training.output_dir, "output_dir")
    check_ignored_settings(recipe)
    resume = check_resume_checkpoint(training.resume_from_checkpoint, training.output_dir)
    if resume is not None:
        training.resume_from_checkpoint = str(resume)  # the Trainer's True would take a half-saved newest folder
    if training.pdl_freq_path and not Path(training.pdl_freq_path).exists():
        raise PDLConfigError(
            f"pdl_freq_path {training.pdl_freq_path} does not exist. Count a table with `pdl-freq --config RECIPE.yaml "
            "--output TABLE`, or remove `pdl_freq_path` to count the training set."
        )
    if training.loss_type == "pdl" and training.pdl_prior_path:
        from .run_weights import read_prior_file

        read_prior_file(training.pdl_prior_path)


def check_ignored_settings(recipe: Recipe) -> None:
    """Refuse settings this run would silently not honour: `max_eval_samples` without an evaluation, an alpha
    warm-up longer than the run's `max_steps` (the other hosts' runs are checked when training begins)."""
    from .settings import check_alpha_warmup

    training, script = recipe.training, recipe.script
    if script.max_eval_samples is not None and training.eval_strategy == "no":
        raise PDLConfigError(
            f"max_eval_samples {script.max_eval_samples} is set but eval_strategy is 'no': nothing is evaluated "
            "during training, so it would be ignored. Set `eval_strategy: steps` (with `eval_steps` and a "
            "`dataset_test_split`) to evaluate on that many rows, or remove `max_eval_samples`."
        )
    if training.loss_type == "pdl" and training.max_steps > 0:
        check_alpha_warmup(training.pdl_alpha_warmup_steps, training.max_steps, "max_steps")


def check_training_data(recipe: Recipe, train_dataset) -> None:
    """Data problems TRL would report as a traceback or blame on the chat template, refused with the real cause."""
    from .data_checks import check_assistant_turns, check_chat_template, is_conversational_data

    training = recipe.training
    if training.chat_template_path is None and is_conversational_data(train_dataset):
        check_chat_template(load_recipe_tokenizer(recipe), train_dataset, recipe.model.model_name_or_path)
    if training.assistant_only_loss:
        from datasets import Dataset

        if isinstance(train_dataset, Dataset):
            check_assistant_turns(train_dataset)


def save_final_model(trainer, output_dir: str | Path) -> Path:
    """Save a `PDLSFTTrainer`'s (any `PDLTrainerMixin`'s) adapter/model into `output_dir` with the run's PDL files,
    atomically: everything goes to a temporary folder inside `output_dir` first, so a full disk leaves the previous
    adapter/model and its PDL files as they were (no half-written README or weights, no table of another run) and
    raises `PDLWriteError` (see `run_folder.save_run_folder`). No hub push: `run_recipe` pushes the finished folder."""
    trainer.save_model(str(output_dir), _internal_call=True)
    trainer.accelerator.wait_for_everyone()
    return Path(output_dir)


def run_recipe(argv: list[str], callbacks: list | None = None):
    """Train with the recipe `--config RECIPE.yaml [--key value ...]` and save the model; returns the trainer.
    `callbacks`: extra `TrainerCallback`s, as the Trainer takes them.

    From the checks on, the main process holds `output_dir` (`run_folder.lock_run_folder`): a second run into it is
    refused before its model loads. The hub push comes after, from the finished folder."""
    from .run_folder import holding_run_folder

    recipe = parse_recipe(argv)
    training = recipe.training
    check_before_training(recipe)
    model_vocab_rows(recipe)  # a model that does not exist fails here, before the datasets load
    with holding_run_folder(training.output_dir, hold=training.process_index == 0):
        trainer = _train_recipe(recipe, callbacks)
        save_final_model(trainer, training.output_dir)
    if training.push_to_hub:
        trainer.push_to_hub(commit_message="Model save", revision=training.hub_revision)
    return trainer


def _train_recipe(recipe: Recipe, callbacks: list | None):
    from trl import get_peft_config, get_quantization_config

    from .preparation import preparation_report
    from .trainer import PDLSFTTrainer

    training, model_args = recipe.training, recipe.model
    training.model_init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": training.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        **(training.model_init_kwargs or {}),
    }
    train_dataset, eval_dataset = load_recipe_datasets(recipe)
    check_training_data(recipe, train_dataset)
    if eval_dataset is not None and recipe.script.max_eval_samples is not None:
        eval_dataset = first_rows(eval_dataset, recipe.script.max_eval_samples)
    trainer = PDLSFTTrainer(
        model=model_args.model_name_or_path,
        args=training,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
        callbacks=callbacks,
    )
    # What TRL's preparation dropped or cut (one more tokenisation, without truncation): said before training and
    # again in the summary
    trainer.pdl_preparation_report = preparation_report(train_dataset, trainer.processing_class, training)
    summary = trainer.pdl_preparation_report.summary() if trainer.pdl_preparation_report is not None else None
    if summary:
        logging.getLogger(__name__).warning("Preparation: %s", summary)
    trainer.train(resume_from_checkpoint=training.resume_from_checkpoint)
    return trainer


@dataclass
class CountResult:
    table: FrequencyTable
    report: PreparationReport | None = None  # rows dropped or cut by preparation; None for a streaming dataset
    warnings: list[str] = field(default_factory=list)


def count_recipe(recipe, tokenizer, shard: tuple[int, int] | None = None) -> CountResult:
    """The table of the recipe's training split (or one contiguous shard of it), prepared as the trainer prepares it,
    with what preparation dropped or cut and warnings about the counted tokens."""
    from .counting import count_trained_tokens, data_fingerprint, few_trained_ids_warning
    from .frequency import FrequencyTable, tokenizer_fingerprint
    from .preparation import prepare_with_report

    vocab_rows = model_vocab_rows(recipe)
    train_dataset, _ = load_recipe_datasets(recipe)
    if shard is not None:
        index, count = shard
        train_dataset = train_dataset.shard(num_shards=count, index=index, contiguous=True)
    prepared, masking, report = prepare_with_report(train_dataset, tokenizer, recipe.training)
    counts = count_trained_tokens(prepared, vocab_rows)
    table = FrequencyTable(counts, tokenizer_fingerprint(tokenizer), masking, data_fingerprint(prepared))
    warnings = [line for line in [few_trained_ids_warning(table, tokenizer)] if line]
    return CountResult(table, report, warnings)


def count_recipe_table(recipe, tokenizer, shard: tuple[int, int] | None = None) -> FrequencyTable:
    """The table of the recipe's training split (or one contiguous shard of it), prepared as the trainer prepares it."""
    return count_recipe(recipe, tokenizer, shard).table
