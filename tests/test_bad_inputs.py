"""Bad inputs and faults, table-driven: each must end with one `error:` line (exit 2) that names the problem, no
traceback, and no file of the run's folder changed; the API raises its documented exception type with a clear message.

Every case is a `Case` record in `CASES`; append new ones there (`run="pdl-sft"`, `"pdl-freq"`, `"pdl-eval"`,
`"pdl-compare"` or `"api"`). A case:

- builds its inputs under a fresh folder (`setup(tmp)` returns the CLI's argv, or for `"api"` a callable to call);
- finds `tmp/out` already holding the files of an earlier run (`PREVIOUS_RUN`), which must be left byte for byte
  (only `may_change` globs may appear or change);
- runs in-process through the console entry point's `main()` (or in a subprocess with `subprocess=True`), with an
  optional `fault` injected (e.g. a full disk) and, with `before_data=True`, TRL's dataset preparation forbidden so
  that a refusal must come before any counting or training.

The outcome is classified as `ok`, `traceback`, `data-losing`, `silent` (exit 0 / no exception / no warning),
`wrong-message`, or `late` (TRL's data preparation ran before a `before_data` case was refused). With
`PDL_BAD_INPUTS_TALLY=FILE` every outcome is appended to FILE as a JSON line: running this file once against an old
checkout (`PYTHONPATH=/tmp/old`) gives the before/after figures; `PDL_BAD_INPUTS_NO_GUARD=1` lets data preparation
run in `before_data` cases, to see what old code finally does with them.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import pytest
import yaml

EMBEDDED_MODEL = "embedded:SmolLM2-135M-Instruct"
CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help you today?"}],
    [{"role": "user", "content": "What is Python?"}, {"role": "assistant", "content": "A programming language."},
     {"role": "user", "content": "Who made it?"}, {"role": "assistant", "content": "Guido van Rossum made it."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
     {"role": "assistant", "content": "Paris, on the Seine."}],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue, like the sky at noon."}],
]
PREVIOUS_RUN = {  # an earlier run's files in output_dir: nothing may change them
    "adapter_model.safetensors": b"previous adapter weights " * 40,
    "adapter_config.json": b'{"r": 4, "previous": true}\n',
    "README.md": b"# the previous run's model card\n",
    "pdl_config.json": b'{"pdl_alpha": 0.5, "previous": true}\n',
    "pdl_frequency_table.safetensors": b"previous table " * 40,
}


# ---- inputs ------------------------------------------------------------------------------------------------------


def write_data(tmp: Path, rows: list[dict], name: str = "train.jsonl") -> Path:
    path = tmp / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def base_recipe(tmp: Path, data: Path | None = None) -> dict:
    """A recipe that fails fast or trains one tiny step: the embedded model, local data, LoRA r4, 64 tokens."""
    data = data or write_data(tmp, [{"messages": c} for c in CONVERSATIONS])
    return {
        "model_name_or_path": EMBEDDED_MODEL,
        "datasets": [{"path": "json", "data_files": str(data), "split": "train"}],
        "output_dir": str(tmp / "out"),
        "loss_type": "pdl", "pdl_alpha": 0.5, "assistant_only_loss": True, "max_length": 64,
        "use_peft": True, "lora_r": 4, "lora_alpha": 8, "lora_target_modules": ["q_proj", "v_proj"],
        "max_steps": 1, "per_device_train_batch_size": 2, "logging_steps": 1, "save_strategy": "no",
        "eval_strategy": "no", "report_to": "none", "bf16": False, "use_cpu": True, "gradient_checkpointing": False,
        "dataloader_num_workers": 0, "disable_tqdm": True, "seed": 0,
    }


def write_recipe(tmp: Path, overrides: dict | None = None, data: Path | None = None, drop: tuple = ()) -> Path:
    recipe = {**base_recipe(tmp, data), **(overrides or {})}
    for key in drop:
        recipe.pop(key, None)
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def recipe_argv(entry: str, tmp: Path, overrides: dict | None = None, *extra: str, **kwargs) -> list[str]:
    return [entry, "--config", str(write_recipe(tmp, overrides, **kwargs)), *extra]


def model_without_chat_template(tmp: Path) -> str:
    """The embedded model's folder without its chat template (links to the same config, weights and tokenizer)."""
    from pdl_plugin.data.embedded_model import resolve_embedded_model

    source, folder = Path(resolve_embedded_model(EMBEDDED_MODEL)), tmp / "no-template-model"
    folder.mkdir()
    for file in source.iterdir():
        if file.name != "chat_template.jinja":
            (folder / file.name).symlink_to(file)
    return str(folder)


def smol_table(vocab_delta: int = 0):
    """A table for the embedded tokenizer (its real fingerprint), with `vocab_delta` more or fewer entries."""
    import torch
    from transformers import AutoTokenizer

    from pdl_plugin.data.embedded_model import resolve_embedded_model
    from pdl_plugin.frequency import FrequencyTable, tokenizer_fingerprint

    tokenizer = AutoTokenizer.from_pretrained(resolve_embedded_model(EMBEDDED_MODEL))
    counts = torch.zeros(49152 + vocab_delta, dtype=torch.int64)
    counts[:500] = torch.arange(1, 501)
    return FrequencyTable(counts, tokenizer_fingerprint(tokenizer), "assistant_only", "test-data")


def disk_full_after(nbytes: int = 64):
    """A replacement for a `save_file(tensors, path, ...)` that writes `nbytes` of the file, then hits a full disk."""

    def save_file(tensors, filename, *args, **kwargs):
        with open(filename, "wb") as handle:
            handle.write(b"\0" * nbytes)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))

    return save_file


def _plain_table(counts):
    from pdl_plugin.frequency import FrequencyTable

    return FrequencyTable(counts, tokenizer_fingerprint="tok", masking="completion_only", data_fingerprint="data")


def _tensor(values):
    import torch

    return torch.tensor(values)


def _count_on_a_list():
    from pdl_plugin.frequency import count_trained_tokens

    return count_trained_tokens([[-100, 1, 2], [-100, 3]], 10)


def _table_save_disk_full(tmp: Path):
    return lambda: _plain_table([3, 1, 0, 2]).save(tmp / "out" / "pdl_frequency_table.safetensors")


def _orphan_tmp_then_save(tmp: Path):
    """An earlier write killed mid-way left its temporary; the next save must remove it (and succeed)."""
    out = tmp / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = re.sub(r"[^A-Za-z0-9_-]", "_", os.uname().nodename)[:40]
    orphan = out / f".pdl_frequency_table.safetensors.{host}-{dead.stdout.strip()}.1a2b3c4d.tmp"
    orphan.write_bytes(b"half a table")
    legacy = out / ".pdl_frequency_table.safetensors.k2j3h4g5.tmp"  # a name of the old atomic writer, long ago
    legacy.write_bytes(b"half a table")
    os.utime(legacy, (time.time() - 7200, time.time() - 7200))

    def call():
        _plain_table([3, 1, 0, 2]).save(out / "pdl_frequency_table.safetensors")
        left = sorted(p.name for p in out.glob(".*.tmp"))
        if left:
            raise Unnoticed(f"orphaned temporaries left after the next write: {left}")
        raise _Done("orphans removed")

    return call


class _Done(Exception):
    """An API case that ends normally raises this, so the harness can tell it from an unexpected exception."""


class Unnoticed(AssertionError):
    """An API case's own check found a problem that the code let pass without a word."""


# ---- cases -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    run: str  # "pdl-sft" | "pdl-freq" | "pdl-eval" | "pdl-compare" | "api"
    setup: Callable[[Path], object]  # CLI: returns argv (entry point first); api: returns a callable
    message: str  # regex the error (or, with exit_code 0, the warning) must match, case-insensitive
    exit_code: int = 2  # CLI: 2 for a refusal, 0 for a case that must only warn, 130 for an interrupt
    exception: tuple[str, ...] = ("PDLError",)  # api: acceptable exception class names (any of the MRO)
    not_message: str | None = None  # regex the output must NOT match (the wrong culprit)
    may_change: tuple[str, ...] = ()  # globs under tmp/out that may appear or change
    before_data: bool = False  # refused before TRL prepares any data (no counting, no training)
    fault: Callable | None = None  # fault(monkeypatch, tmp): inject a failure (full disk, ...)
    subprocess: bool = False  # run the real console script in a child process
    previous_run: bool = True  # tmp/out holds PREVIOUS_RUN before the case runs


def _dup_key_recipe(tmp: Path) -> list[str]:
    text = yaml.safe_dump(base_recipe(tmp), sort_keys=False) + "pdl_alpha: 0.9\n"
    (tmp / "recipe.yaml").write_text(text, encoding="utf-8")
    return ["pdl-sft", "--config", str(tmp / "recipe.yaml")]


def _latin1_recipe(tmp: Path) -> list[str]:
    text = "# Réglages du modèle\n" + yaml.safe_dump(base_recipe(tmp), sort_keys=False)
    (tmp / "recipe.yaml").write_bytes(text.encode("latin-1"))
    return ["pdl-sft", "--config", str(tmp / "recipe.yaml")]


def _no_assistant_data(tmp: Path) -> Path:
    rows = [{"messages": c} for c in CONVERSATIONS] + [{"messages": [{"role": "user", "content": "Anyone there?"}]}]
    return write_data(tmp, rows)


def _empty_replies(tmp: Path) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": ""}]}
            for i in range(4)]
    return write_data(tmp, rows)


def _long_prompts(tmp: Path) -> Path:
    long = "Tell me about the history of the city and its rivers, bridges and markets. " * 6
    rows = [{"messages": [{"role": "user", "content": long}, {"role": "assistant", "content": "It is long."}]},
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello " * 60}]}]
    return write_data(tmp, rows + [{"messages": c} for c in CONVERSATIONS])


def _table_file(tmp: Path, vocab_delta: int) -> Path:
    path = tmp / "table.safetensors"
    smol_table(vocab_delta).save(path)
    return path


def _file_at(tmp: Path, name: str = "afile") -> Path:
    (tmp / name).write_text("not a folder\n")
    return tmp / name


def _resume_from(tmp: Path, checkpoint) -> list[str]:
    return recipe_argv("pdl-sft", tmp, {"resume_from_checkpoint": checkpoint})


def _incomplete_checkpoint(tmp: Path) -> list[str]:
    folder = tmp / "out" / "checkpoint-2"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"half")
    return _resume_from(tmp, str(folder))


def _truncated_state_checkpoint(tmp: Path) -> list[str]:
    argv = _incomplete_checkpoint(tmp)
    (tmp / "out" / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2, "log_hist')
    return argv


def _adapter_disk_full(monkeypatch, tmp):
    import peft.peft_model

    monkeypatch.setattr(peft.peft_model, "safe_save_file", disk_full_after(1000))


def safetensors_disk_full(nbytes: int = 64):
    """Like `disk_full_after`, but raising what safetensors really raises on a full disk (a SafetensorError)."""

    def save_file(tensors, filename, *args, **kwargs):
        from safetensors import SafetensorError

        with open(filename, "wb") as handle:
            handle.write(b"\0" * nbytes)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    return save_file


def _table_safetensors_full(monkeypatch, tmp):
    import pdl_plugin.frequency

    monkeypatch.setattr(pdl_plugin.frequency, "save_file", safetensors_disk_full())


def _adapter_safetensors_full(monkeypatch, tmp):
    import peft.peft_model

    monkeypatch.setattr(peft.peft_model, "safe_save_file", safetensors_disk_full(1000))


def _table_disk_full(monkeypatch, tmp):
    import pdl_plugin.frequency

    monkeypatch.setattr(pdl_plugin.frequency, "save_file", disk_full_after())


# ---- engine cases: settings that would train NaN or nothing, and resumes the engine must refuse


def _zero_table_file(tmp: Path) -> Path:
    table = smol_table()
    table.counts.zero_()
    path = tmp / "zero.safetensors"
    table.save(path)
    return path


def _shard_files(tmp: Path) -> list[str]:
    """Two shard tables of one count (0/2 and 1/2) and the whole's table, as `pdl-freq --shard` writes them."""
    paths = []
    for name, mark in (("shard0", "0/2"), ("shard1", "1/2"), ("whole", None)):
        table = smol_table()
        table.data_fingerprint = name
        if mark:
            table.extra["shard"] = mark
        paths.append(str(table.save(tmp / f"{name}.safetensors")))
    return paths


def _merge(tmp: Path, *picks: int) -> list[str]:
    files = _shard_files(tmp)
    return ["pdl-freq", "merge", "--output", str(tmp / "out" / "merged.safetensors"), *(files[i] for i in picks)]


def _damaged_file(tmp: Path) -> Path:
    path = tmp / "damaged.safetensors"
    path.write_bytes(_table_file(tmp, 0).read_bytes()[:300])
    return path


def _checkpoint_without_pdl_files(tmp: Path) -> list[str]:
    """A complete checkpoint (trainer_state.json is whole) that holds no PDL table: saved by a run without PDL."""
    folder = tmp / "out" / "checkpoint-2"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 2, "log_history": []}))
    return _resume_from(tmp, str(folder))



# ---- silent results and wrong messages (issue 27): evaluation, comparison, caches


def split_data(tmp: Path, validation: list[dict] | None = None, with_validation: bool = True) -> Path:
    """A data folder with train.jsonl (and validation.jsonl: `validation` rows, by default the training ones)."""
    folder = tmp / "data"
    folder.mkdir(exist_ok=True)
    rows = [{"messages": c} for c in CONVERSATIONS]
    write_data(folder, rows)
    if with_validation:
        write_data(folder, validation if validation is not None else rows, "validation.jsonl")
    return folder


def split_recipe(tmp: Path, overrides: dict | None = None, **data) -> Path:
    """A recipe on `split_data` (its validation split as `dataset_test_split`)."""
    settings = {"dataset_name": str(split_data(tmp, **data)), "dataset_test_split": "validation", **(overrides or {})}
    return write_recipe(tmp, settings, drop=("datasets",))


def lora_adapter(folder: Path, nan: bool = False) -> Path:
    """A fresh LoRA r4 adapter of the embedded model saved into `folder` (with `nan`: every LoRA weight NaN)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from pdl_plugin.data.embedded_model import resolve_embedded_model

    model = AutoModelForCausalLM.from_pretrained(resolve_embedded_model(EMBEDDED_MODEL))
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    if nan:
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_" in name:
                    parameter.fill_(float("nan"))
    model.save_pretrained(str(folder))
    return folder


def eval_argv(tmp: Path, *extra: str, nan: bool = False, table=None, recipe: Path | None = None, **data) -> list[str]:
    """`pdl-eval` of a LoRA adapter saved in tmp/out (its output, eval.json, would go there too) on 2 prompts."""
    lora_adapter(tmp / "out", nan=nan)
    (table or smol_table()).save(tmp / "out" / "pdl_frequency_table.safetensors")
    recipe = recipe or split_recipe(tmp, **data)
    return ["pdl-eval", "--adapter", str(tmp / "out"), "--config", str(recipe), "--max_prompts", "2",
            "--max_new_tokens", "2", "--no_sampled", *extra]


def one_token_table(vocab_delta: int = 0):
    table = smol_table(vocab_delta)
    table.counts.zero_()
    table.counts[28] = 100
    return table


def _one_token_table_file(tmp: Path) -> Path:
    path = tmp / "one-token.safetensors"
    one_token_table().save(path)
    return path


def compare_argv(tmp: Path, *extra: str, outdir: Path | None = None) -> list[str]:
    return ["pdl-compare", "--config", str(split_recipe(tmp)), "--alphas", "0", "--seeds", "0", "--outdir",
            str(outdir or tmp / "study"), "--max_prompts", "2", "--max_new_tokens", "2", "--no_sampled", *extra]


def _wrong_shape_results(tmp: Path) -> list[str]:
    run = tmp / "study" / "recipe" / "alpha-0" / "seed-0"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"arm": "alpha-0", "alpha": 0, "validation": [1, 2]}))
    (run / "train.json").write_text(json.dumps({"log_history": []}))
    return compare_argv(tmp, "--report_only", "--report", str(tmp / "report" / "r.md"))


def _ctrl_c_in_a_run(monkeypatch, tmp):
    import pdl_plugin.study.runner

    def run_one(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pdl_plugin.study.runner, "run_one", run_one)


def _cache_is_a_file(monkeypatch, tmp):
    monkeypatch.setenv("PDL_PLUGIN_CACHE", str(_file_at(tmp, "cache-file")))


def _damaged_data_cache(part: str):
    """A data cache (the embedded model's folder linked in) whose cached `part` (`arrow`, `json`) is cut short."""

    def fault(monkeypatch, tmp):
        from pdl_plugin.data.cache import cache_dir
        from pdl_plugin.data.registry import resolve_embedded_dataset

        models = cache_dir("models")
        monkeypatch.setenv("PDL_PLUGIN_CACHE", str(tmp / "cache"))
        (tmp / "cache").mkdir()
        (tmp / "cache" / "models").symlink_to(models)
        resolve_embedded_dataset("embedded:dialogue")
        for file in (tmp / "cache" / "data").rglob(f"*.{part}"):
            file.write_bytes(file.read_bytes()[: len(file.read_bytes()) // 3])

    return fault


def _zero_counts_table():
    table = smol_table()
    table.counts.zero_()
    return table


def _other_tokenizer_prior(tmp: Path) -> Path:
    """A `pdl-freq --model-prior` table of another tokenizer (fractional expected counts)."""
    from pdl_plugin.frequency import FrequencyTable

    counts = smol_table().counts.double() / 3
    path = tmp / "model-prior.safetensors"
    FrequencyTable(counts, "another-tokenizer", "assistant_only", "prior-data", kind="model_prior").save(path)
    return path


def _embedded_dialogue(tmp: Path) -> list[str]:
    return recipe_argv("pdl-sft", tmp, {"dataset_name": "embedded:dialogue"}, drop=("datasets",))


def _dangling_output_dir(tmp: Path) -> list[str]:
    (tmp / "run-link").symlink_to(tmp / "gone" / "run")
    return recipe_argv("pdl-sft", tmp, {"output_dir": str(tmp / "run-link")})


CASES: list[Case] = [
    # ---- recipe files
    Case("recipe-duplicate-key", "pdl-sft", _dup_key_recipe, r"`?pdl_alpha`? appears twice.*line", before_data=True),
    Case("recipe-not-utf8", "pdl-sft", _latin1_recipe, r"not UTF-8", before_data=True, subprocess=True),
    Case("pdl-freq-path-empty", "pdl-sft", lambda t: recipe_argv("pdl-sft", t, {"pdl_freq_path": ""}),
         r"pdl_freq_path", before_data=True),
    # ---- data
    Case("dataset-file-missing", "pdl-sft",
         lambda t: recipe_argv("pdl-sft", t, data=t / "missing.jsonl"), r"missing\.jsonl.*not found", before_data=True),
    Case("dataset-file-missing-freq", "pdl-freq",
         lambda t: recipe_argv("pdl-freq", t, None, "--output", str(t / "out" / "t.safetensors"),
                               data=t / "missing.jsonl"), r"missing\.jsonl.*not found", before_data=True),
    Case("dataset-folder-missing", "pdl-freq",
         lambda t: recipe_argv("pdl-freq", t, {"dataset_name": str(t / "no-such-folder")}, "--output",
                               str(t / "out" / "t.safetensors"), drop=("datasets",)),
         r"no-such-folder", before_data=True),
    Case("no-assistant-turn", "pdl-sft", lambda t: recipe_argv("pdl-sft", t, data=_no_assistant_data(t)),
         r"no assistant message.*rows? 4", not_message=r"needs a chat template", before_data=True),
    Case("no-assistant-turn-freq", "pdl-freq",
         lambda t: recipe_argv("pdl-freq", t, None, "--output", str(t / "out" / "t.safetensors"),
                               data=_no_assistant_data(t)),
         r"no assistant message.*rows? 4", not_message=r"needs a chat template", before_data=True),
    Case("no-chat-template-assistant-only", "pdl-sft",
         lambda t: recipe_argv("pdl-sft", t, {"model_name_or_path": model_without_chat_template(t)}),
         r"no chat template", before_data=True),
    Case("no-chat-template-all-tokens", "pdl-sft",
         lambda t: recipe_argv("pdl-sft", t, {"model_name_or_path": model_without_chat_template(t),
                                              "assistant_only_loss": False}),
         r"no chat template", before_data=True),
    Case("no-chat-template-freq", "pdl-freq",
         lambda t: recipe_argv("pdl-freq", t, {"model_name_or_path": model_without_chat_template(t)}, "--output",
                               str(t / "out" / "t.safetensors")),
         r"no chat template", before_data=True),
    Case("model-missing", "pdl-sft", lambda t: recipe_argv("pdl-sft", t, {"model_name_or_path": str(t / "nomodel")}),
         r"nomodel", before_data=True),
    # ---- output paths
    Case("output-dir-under-a-file", "pdl-sft",
         lambda t: recipe_argv("pdl-sft", t, {"output_dir": str(_file_at(t / "out") / "run")}),
         r"cannot be created.*not a folder", before_data=True),
    Case("output-dir-is-a-file", "pdl-sft", lambda t: recipe_argv("pdl-sft", t, {"output_dir": str(_file_at(t))}),
         r"is a file, not a folder", before_data=True),
    Case("freq-output-under-a-file", "pdl-freq",
         lambda t: recipe_argv("pdl-freq", t, None, "--output", str(_file_at(t / "out") / "t.safetensors")),
         r"--output.*not a folder", before_data=True, subprocess=True),
    Case("freq-plot-under-a-file", "pdl-freq",
         lambda t: recipe_argv("pdl-freq", t, None, "--output", str(t / "out" / "t.safetensors"), "--plot",
                               str(_file_at(t / "out") / "p.png")),
         r"--plot.*not a folder", before_data=True),
    # ---- resume
    Case("resume-missing-checkpoint", "pdl-sft", lambda t: _resume_from(t, str(t / "out" / "checkpoint-7")),
         r"checkpoint-7.*no such checkpoint", before_data=True),
    Case("resume-true-without-checkpoint", "pdl-sft", lambda t: _resume_from(t, True),
         r"no (complete )?checkpoint", before_data=True),
    Case("resume-true-only-incomplete-checkpoint", "pdl-sft",
         lambda t: (_incomplete_checkpoint(t), _resume_from(t, True))[1],
         r"no complete checkpoint.*checkpoint-2 incomplete", before_data=True),
    Case("resume-truncated-trainer-state", "pdl-sft", lambda t: _truncated_state_checkpoint(t),
         r"trainer_state\.json is truncated", before_data=True),
    Case("resume-incomplete-checkpoint", "pdl-sft", _incomplete_checkpoint, r"trainer_state\.json",
         before_data=True),
    # ---- tables
    Case("freq-table-vocab-mismatch", "pdl-freq",
         lambda t: recipe_argv("pdl-freq", t, None, "--table", str(_table_file(t, 7))),
         r"49159 entries.*49152 rows", before_data=True),
    Case("freq-disk-full-saving-table", "pdl-freq",
         lambda t: recipe_argv("pdl-freq", t, None, "--output", str(t / "out" / "pdl_frequency_table.safetensors")),
         r"No space left on device.*previous file is unchanged", fault=_table_disk_full),
    Case("freq-merge-a-shard-with-itself", "pdl-freq", lambda t: _merge(t, 0, 0),
         r"same data .* given twice.*count twice"),
    Case("freq-merge-the-whole-with-a-shard", "pdl-freq", lambda t: _merge(t, 2, 1),
         r"whole table .* with shard tables.*count twice"),
    Case("freq-shard-count-zero", "pdl-freq",
         lambda t: recipe_argv("pdl-freq", t, None, "--shard", "1/0", "--output", str(t / "out" / "t.safetensors")),
         r"--shard 1/0: the number of shards N must be at least 1", not_message=r"0\.\.-1", before_data=True),
    Case("freq-table-and-output", "pdl-freq",
         lambda t: recipe_argv("pdl-freq", t, None, "--table", str(_table_file(t, 0)), "--output",
                               str(t / "out" / "t.safetensors")),
         r"--table inspects an existing table and writes nothing", before_data=True),
    Case("freq-merge-output-under-a-file", "pdl-freq",
         lambda t: ["pdl-freq", "merge", "--output", str(_file_at(t / "out") / "t.safetensors"),
                    str(_table_file(t, 0)), str(_table_file(t, 0))],
         r"--output.*not a folder"),
    Case("sft-disk-full-saving-table", "pdl-sft", lambda t: recipe_argv("pdl-sft", t),
         r"frequency table.*No space left on device.*previous file is unchanged", fault=_table_disk_full),
    # ---- the final save
    Case("sft-disk-full-saving-adapter", "pdl-sft", lambda t: recipe_argv("pdl-sft", t),
         r"No space left on device.*Nothing there was changed", fault=_adapter_disk_full),
    Case("sft-disk-full-saving-table-safetensors", "pdl-sft", lambda t: recipe_argv("pdl-sft", t),
         r"frequency table.*No space left on device.*previous file is unchanged", fault=_table_safetensors_full),
    Case("sft-disk-full-saving-adapter-safetensors", "pdl-sft", lambda t: recipe_argv("pdl-sft", t),
         r"No space left on device.*Nothing there was changed", fault=_adapter_safetensors_full),
    Case("sft-disk-full-saving-checkpoint", "pdl-sft",
         lambda t: recipe_argv("pdl-sft", t, {"save_strategy": "steps", "save_steps": 1}),
         r"Could not save checkpoint-1 .*No space left on device.*incomplete checkpoint-1 was removed",
         fault=_adapter_safetensors_full, may_change=("README.md",)),
    Case("freq-disk-full-saving-table-safetensors", "pdl-freq",
         lambda t: recipe_argv("pdl-freq", t, None, "--output", str(t / "out" / "pdl_frequency_table.safetensors")),
         r"No space left on device.*previous file is unchanged", fault=_table_safetensors_full),
    # ---- warnings (exit 0): silent before
    Case("freq-few-distinct-trained-ids", "pdl-freq",
         lambda t: recipe_argv("pdl-freq", t, None, "--output", str(t / "out" / "t.safetensors"),
                               data=_empty_replies(t)),
         r"Only \d distinct token ids? (is|are) trained", exit_code=0, may_change=("t.safetensors",)),
    Case("freq-rows-dropped-or-cut", "pdl-freq",
         lambda t: recipe_argv("pdl-freq", t, {"max_length": 40}, "--output", str(t / "out" / "t.safetensors"),
                               data=_long_prompts(t)),
         r"1 row lost every trained token to max_length 40.*dropped by TRL.*rows? lost part", exit_code=0,
         may_change=("t.safetensors",)),
    # ---- Python API
    Case("api-table-from-a-string", "api", lambda t: lambda: _plain_table("abc"), r"counts must be",
         exception=("TypeError",)),
    Case("api-table-nan-counts", "api", lambda t: lambda: _plain_table(_tensor([1.0, float("nan"), 2.0])), r"NaN",
         exception=("FrequencyTableError",)),
    Case("api-table-fractional-counts", "api", lambda t: lambda: _plain_table([0.4, 2.0, 1.0]), r"whole numbers",
         exception=("FrequencyTableError",)),
    Case("api-table-sum-overflows-int64", "api", lambda t: lambda: _plain_table([2**62, 2**62, 5]), r"int64",
         exception=("FrequencyTableError",)),
    Case("api-count-on-a-list", "api", lambda t: _count_on_a_list, r"Dataset", exception=("TypeError",)),
    Case("api-table-save-disk-full", "api", _table_save_disk_full, r"No space left.*previous file is unchanged",
         exception=("PDLWriteError",), fault=_table_disk_full),
    Case("api-orphan-tmp-removed-on-next-write", "api", _orphan_tmp_then_save, r"orphans removed",
         exception=("_Done",), may_change=("pdl_frequency_table.safetensors", ".*.tmp")),
    # ---- engine: settings that would train NaN (weights overflow or vanish in float32), PDL keys that would be
    # ignored, a table that counts nothing, a resume the loss could change under
    Case("alpha-1e9-overflows", "pdl-sft", lambda t: recipe_argv("pdl-sft", t, {"pdl_alpha": 1e9}),
         r"pdl_alpha 1000000000.0 with pdl_epsilon 1e-06 gives unusable weights"),
    Case("epsilon-1e300-vanishes", "pdl-sft", lambda t: recipe_argv("pdl-sft", t, {"pdl_epsilon": 1e300}),
         r"gives unusable weights: the weights of frequent tokens underflow to 0"),
    Case("pdl-keys-with-nll", "pdl-sft", lambda t: recipe_argv("pdl-sft", t, {"loss_type": "nll", "pdl_alpha": 0.9}),
         r"pdl_alpha set but loss_type is 'nll'", before_data=True),
    Case("liger-with-pdl", "pdl-sft", lambda t: recipe_argv("pdl-sft", t, {"use_liger_kernel": True}),
         r"use_liger_kernel", before_data=True),
    Case("all-zero-table", "pdl-sft", lambda t: recipe_argv("pdl-sft", t, {"pdl_freq_path": str(_zero_table_file(t))}),
         r"zero.safetensors counts no trained token", not_message=r"max_length"),
    Case("resume-checkpoint-without-pdl-table", "pdl-sft", _checkpoint_without_pdl_files,
         r"holds no PDL table.*pdl_resume_without_table"),
    # ---- the protections on top of equation (3): floor, cross-entropy anchor, frequency prior
    Case("min-weight-negative", "pdl-sft", lambda t: recipe_argv("pdl-sft", t, {"pdl_min_weight": -1}),
         r"pdl_min_weight must be a finite number > 0", before_data=True),
    Case("min-weight-above-max-weight", "pdl-sft",
         lambda t: recipe_argv("pdl-sft", t, {"pdl_min_weight": 5, "pdl_max_weight": 2}),
         r"pdl_min_weight 5.0 is above pdl_max_weight 2.0", before_data=True),
    Case("ce-mix-out-of-range", "pdl-sft", lambda t: recipe_argv("pdl-sft", t, {"pdl_ce_mix": 1.5}),
         r"pdl_ce_mix must be a number in \[0, 1\]", before_data=True),
    Case("ce-mix-with-nll", "pdl-sft",
         lambda t: recipe_argv("pdl-sft", t, {"loss_type": "nll", "pdl_ce_mix": 0.5}, drop=("pdl_alpha",)),
         r"pdl_ce_mix set but loss_type is 'nll'", before_data=True),
    Case("default-valued-pdl-key-with-nll", "pdl-sft",  # equal to its default, so only the recipe shows it given
         lambda t: recipe_argv("pdl-sft", t, {"loss_type": "nll", "pdl_exempt_special_tokens": False},
                               drop=("pdl_alpha",)),
         r"pdl_exempt_special_tokens set but loss_type is 'nll'", before_data=True),
    Case("prior-with-nll", "pdl-sft",
         lambda t: recipe_argv("pdl-sft", t, {"loss_type": "nll", "pdl_prior_path": str(_table_file(t, 0)),
                                              "pdl_prior_mix": 0.5}, drop=("pdl_alpha",)),
         r"pdl_prior_path, pdl_prior_mix set but loss_type is 'nll'", before_data=True),
    Case("prior-mix-without-path", "pdl-sft", lambda t: recipe_argv("pdl-sft", t, {"pdl_prior_mix": 0.5}),
         r"pdl_prior_mix is set but pdl_prior_path is not", before_data=True),
    Case("prior-path-without-mix", "pdl-sft",
         lambda t: recipe_argv("pdl-sft", t, {"pdl_prior_path": str(_table_file(t, 0))}),
         r"pdl_prior_path is set .* but pdl_prior_mix is not", before_data=True),
    Case("prior-mix-out-of-range", "pdl-sft",
         lambda t: recipe_argv("pdl-sft", t, {"pdl_prior_path": str(_table_file(t, 0)), "pdl_prior_mix": 2}),
         r"pdl_prior_mix must be a number in \[0, 1\]", before_data=True),
    Case("prior-file-missing", "pdl-sft",
         lambda t: recipe_argv("pdl-sft", t, {"pdl_prior_path": str(t / "nope.safetensors"), "pdl_prior_mix": 0.5}),
         r"pdl_prior_path .*nope\.safetensors does not exist.*--model-prior", before_data=True),
    Case("prior-file-damaged", "pdl-sft",
         lambda t: recipe_argv("pdl-sft", t, {"pdl_prior_path": str(_damaged_file(t)), "pdl_prior_mix": 0.5}),
         r"pdl_prior_path: .*damaged\.safetensors is not a readable safetensors", before_data=True),
    Case("prior-file-empty", "pdl-sft",
         lambda t: recipe_argv("pdl-sft", t, {"pdl_prior_path": str(_zero_table_file(t)), "pdl_prior_mix": 0.5}),
         r"prior table .*zero\.safetensors counts nothing", before_data=True),
    Case("prior-other-vocabulary", "pdl-sft",
         lambda t: recipe_argv("pdl-sft", t, {"pdl_prior_path": str(_table_file(t, 8)), "pdl_prior_mix": 0.5}),
         r"prior table .*table\.safetensors has 49160 entries.*--all-tokens", not_message=r"pdl_freq_path"),
    # ---- silent results (issue 27): settings that train or report something else than asked, without a word
    Case("warmup-longer-than-max-steps", "pdl-sft",
         lambda t: recipe_argv("pdl-sft", t, {"max_steps": 3, "pdl_alpha_warmup_steps": 50}),
         r"pdl_alpha_warmup_steps 50 is longer than the run's 3 optimizer steps.*never reaches pdl_alpha",
         before_data=True),
    Case("warmup-longer-than-epochs", "pdl-sft",
         lambda t: recipe_argv("pdl-sft", t, {"num_train_epochs": 1, "pdl_alpha_warmup_steps": 40}, drop=("max_steps",)),
         r"pdl_alpha_warmup_steps 40 is longer than the run's 2 optimizer steps.*never reaches pdl_alpha"),
    Case("max-eval-samples-without-evaluation", "pdl-sft",
         lambda t: recipe_argv("pdl-sft", t, {"max_eval_samples": 2}),
         r"max_eval_samples 2 .*would be ignored.*eval_strategy", before_data=True),
    Case("eval-nan-adapter", "pdl-eval", lambda t: eval_argv(t, nan=True),
         r"validation cross-entropy is nan.*nothing was written", not_message=r"Results:"),
    Case("eval-all-zero-table", "pdl-eval", lambda t: eval_argv(t, table=_zero_counts_table()),
         r"counts no trained token", not_message=r"Results:"),
    # ---- wrong messages (issue 27): the right culprit and the fix that fits the command
    Case("reused-table-counts-one-token", "pdl-sft",
         lambda t: recipe_argv("pdl-sft", t, {"pdl_freq_path": str(_one_token_table_file(t))}),
         r"table .*one-token\.safetensors counts only 1 distinct token id", exit_code=0,
         not_message=r"check the dataset", may_change=("*",)),
    Case("eval-table-other-vocabulary", "pdl-eval",
         lambda t: eval_argv(t, "--table", str(_table_file(t, 8))),
         r"49160 entries.*--table", not_message=r"pdl_freq_path"),
    Case("eval-reference-alpha-nan", "pdl-eval", lambda t: eval_argv(t, "--reference_alpha", "nan"),
         r"--reference_alpha must be a finite number >= 0", not_message=r"\bpdl_alpha\b"),
    Case("eval-missing-test-split", "pdl-eval", lambda t: eval_argv(t, with_validation=False),
         r"no split `validation`.*dataset_test_split", not_message=r"eval_strategy"),
    Case("compare-missing-test-split", "pdl-compare",
         lambda t: ["pdl-compare", "--config", str(write_recipe(t)), "--alphas", "0", "--seeds", "0", "--outdir",
                    str(t / "study")],
         r"no split `test`.*dataset_test_split", not_message=r"eval_strategy", before_data=True),
    Case("validation-columns-unlike-training", "pdl-sft",
         lambda t: ["pdl-sft", "--config", str(split_recipe(t, {"eval_strategy": "steps", "eval_steps": 1}, validation=[
             {"prompt": "Hi", "completion": "Hello"}]))],
         r"columns.*messages.*completion.*prompt|columns.*completion.*prompt.*messages", before_data=True),
    Case("config-is-a-folder", "pdl-sft", lambda t: ["pdl-sft", "--config", str(t)], r"is a folder",
         not_message=r"not found", before_data=True),
    Case("output-dir-dangling-symlink", "pdl-sft", _dangling_output_dir,
         r"broken symbolic link.*gone/run", not_message=r"is a file", before_data=True),
    # ---- tracebacks (issue 27)
    Case("compare-outdir-is-a-file", "pdl-compare", lambda t: compare_argv(t, outdir=_file_at(t)),
         r"--outdir .*is a file, not a folder", before_data=True),
    Case("compare-results-dir-is-a-file", "pdl-compare",
         lambda t: compare_argv(t, "--results_dir", str(_file_at(t, "results"))),
         r"--results_dir .*is a file, not a folder", before_data=True),
    Case("compare-results-wrong-shape", "pdl-compare", _wrong_shape_results,
         r"results\.json .*not the shape pdl-compare writes \(no `warmup_steps`"),
    Case("compare-ctrl-c", "pdl-compare", lambda t: compare_argv(t),
         r"interrupted.*finished runs are kept.*rerun the same command", exit_code=130, fault=_ctrl_c_in_a_run),
    Case("data-cache-is-a-file", "pdl-sft", _embedded_dialogue, r"PDL_PLUGIN_CACHE .*cache-file.*not a folder",
         fault=_cache_is_a_file, before_data=True),
    Case("data-cache-truncated-arrow", "pdl-sft", _embedded_dialogue, r"cached data set .* is damaged.*delete",
         fault=_damaged_data_cache("arrow"), before_data=True),
    Case("data-cache-truncated-json", "pdl-sft", _embedded_dialogue, r"cached data set .* is damaged.*delete",
         fault=_damaged_data_cache("json"), before_data=True),
    Case("output-dir-empty", "pdl-sft", lambda t: recipe_argv("pdl-sft", t, {"output_dir": ""}),
         r"output_dir is empty", before_data=True),
    Case("freq-plot-not-png", "pdl-freq",
         lambda t: recipe_argv("pdl-freq", t, None, "--output", str(t / "out" / "t.safetensors"), "--plot",
                               str(t / "p.txt")), r"--plot .*p\.txt.*\.png", before_data=True),
    # ---- more of the same kind: settings given as words, a prior that is a folder or of another tokenizer
    Case("min-weight-word", "pdl-sft", lambda t: recipe_argv("pdl-sft", t, {"pdl_min_weight": "half"}),
         r"pdl_min_weight.*invalid float value: 'half'", before_data=True),
    Case("prior-mix-word", "pdl-sft",
         lambda t: recipe_argv("pdl-sft", t, {"pdl_prior_path": str(_table_file(t, 0)), "pdl_prior_mix": "half"}),
         r"pdl_prior_mix.*invalid float value: 'half'", before_data=True),
    Case("prior-path-is-a-folder", "pdl-sft",
         lambda t: recipe_argv("pdl-sft", t, {"pdl_prior_path": str(t / "data"), "pdl_prior_mix": 0.5},
                               data=split_data(t) / "train.jsonl"),
         r"pdl_prior_path .*data is a folder", not_message=r"pdl_freq_path", before_data=True),
    Case("prior-model-prior-other-tokenizer", "pdl-sft",
         lambda t: recipe_argv("pdl-sft", t, {"pdl_prior_path": str(_other_tokenizer_prior(t)), "pdl_prior_mix": 0.5}),
         r"prior table .*counted with another tokenizer.*--model-prior", not_message=r"pdl_freq_path"),
]


# ---- harness -----------------------------------------------------------------------------------------------------


@dataclass
class Result:
    code: object  # exit status, or "raised" (api), or "returned" (api)
    output: str
    error: BaseException | None = None


def file_hashes(folder: Path) -> dict[str, str]:
    if not folder.is_dir():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


class PreparedTooEarly(AssertionError):
    """TRL's dataset preparation ran although the case must be refused before any data work."""


def _forbid_data_preparation(monkeypatch) -> None:
    from trl import SFTTrainer

    def refuse(*args, **kwargs):
        raise PreparedTooEarly("TRL prepared the dataset before the bad input was refused")

    monkeypatch.setattr(SFTTrainer, "_prepare_dataset", refuse)


ENTRY_MODULES = {"pdl-sft": "pdl_plugin.cli.sft", "pdl-freq": "pdl_plugin.cli.freq", "pdl-eval": "pdl_plugin.cli.eval",
                 "pdl-compare": "pdl_plugin.cli.compare"}


def _main_of(entry: str):
    import importlib

    return importlib.import_module(ENTRY_MODULES[entry]).main


def run_case(case: Case, prepared, tmp: Path, monkeypatch) -> Result:
    """Run a case whose `setup` has returned `prepared` (the argv, or the callable of an api case)."""
    if case.fault is not None and not case.subprocess:
        case.fault(monkeypatch, tmp)
    if case.run == "api":
        call = prepared
        try:
            call()
        except BaseException as err:  # noqa: BLE001 - classified below
            return Result("raised", f"{type(err).__name__}: {err}", err)
        return Result("returned", "")
    argv = prepared
    if case.subprocess:
        module = ENTRY_MODULES[argv[0]]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        done = subprocess.run([sys.executable, "-m", module, *argv[1:]], capture_output=True, text=True, env=env,
                              timeout=600, cwd=tmp)
        return Result(done.returncode, done.stdout + done.stderr)
    if case.before_data and not os.environ.get("PDL_BAD_INPUTS_NO_GUARD"):
        _forbid_data_preparation(monkeypatch)
    out, err = io.StringIO(), io.StringIO()
    code: object = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            _main_of(argv[0])(argv[1:])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        except PreparedTooEarly:
            code = "late"
        except BaseException:  # noqa: BLE001 - an escaped exception is what a user sees as a traceback
            code = "traceback"
            print(traceback.format_exc(), file=sys.stderr)
    return Result(code, out.getvalue() + err.getvalue())


def classify(case: Case, result: Result, before: dict, after: dict) -> list[str]:
    """The problems of one outcome; empty when the case is handled as it should be."""
    problems = []
    if case.run == "api":
        names = {cls.__name__ for cls in type(result.error).__mro__} if result.error is not None else set()
        if result.error is None or isinstance(result.error, Unnoticed):
            problems.append("silent")
        elif not names & set(case.exception):
            problems.append("traceback")  # an undocumented exception type escapes
    else:
        if result.code == "late":
            problems.append("late")  # refused (or not) only after TRL prepared the data
        elif result.code == "traceback" or "Traceback (most recent call last)" in result.output:
            problems.append("traceback")
        elif result.code == 0 and case.exit_code != 0:
            problems.append("silent")
        elif result.code != case.exit_code:
            problems.append(f"exit-{result.code}")
    changed = sorted(  # files of the earlier run modified or removed
        name for name in before
        if before.get(name) != after.get(name) and not any(fnmatch(name, pattern) for pattern in case.may_change)
    )
    added = sorted(  # files left behind by a run that failed
        name for name in set(after) - set(before) if not any(fnmatch(name, pattern) for pattern in case.may_change)
    )
    if changed:
        problems.append("data-losing")
    if added:
        problems.append("leaves-files")
    text = " ".join(result.output.split())  # messages wrapped at a terminal's width still match
    if not problems:
        if not re.search(case.message, text, re.IGNORECASE | re.DOTALL):
            problems.append("silent" if case.exit_code == 0 and case.run != "api" else "wrong-message")
        elif case.not_message and re.search(case.not_message, text, re.IGNORECASE | re.DOTALL):
            problems.append("wrong-message")
    return problems + ([f"changed: {changed}"] if changed else []) + ([f"added: {added}"] if added else [])


def _record(case: Case, problems: list[str], seconds: float) -> None:
    tally = os.environ.get("PDL_BAD_INPUTS_TALLY")
    if tally:
        with open(tally, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"case": case.id, "problems": problems, "seconds": round(seconds, 1)}) + "\n")


@pytest.fixture(autouse=True)
def _offline_and_one_thread(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case: Case, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    if case.previous_run:
        for name, content in PREVIOUS_RUN.items():
            (out / name).write_bytes(content)
    monkeypatch.chdir(tmp_path)
    prepared = case.setup(tmp_path)
    before = file_hashes(out)
    start = time.monotonic()
    result = run_case(case, prepared, tmp_path, monkeypatch)
    after = file_hashes(out)
    problems = classify(case, result, before, after)
    _record(case, problems, time.monotonic() - start)
    assert not problems, f"{case.id}: {problems}\n--- output ---\n{result.output[-4000:]}"
    if case.run != "api":
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == (0 if case.exit_code == 0 else 1), result.output[-2000:]


# ---- the atomic writers these cases rely on ----------------------------------------------------------------------


def test_folder_save_moves_every_file_into_place_and_leaves_no_temporary(tmp_path):
    from pdl_plugin.files import FOLDER_SAVE_NAME, save_folder_atomically

    (tmp_path / "adapter_model.safetensors").write_bytes(b"old")
    (tmp_path / "keep.txt").write_bytes(b"untouched")

    def save(folder: Path) -> None:
        (folder / "adapter_model.safetensors").write_bytes(b"new")
        (folder / "README.md").write_text("card")
        (folder / "sub").mkdir()
        (folder / "sub" / "x.bin").write_bytes(b"x")

    save_folder_atomically(tmp_path, save, what="adapter")
    assert (tmp_path / "adapter_model.safetensors").read_bytes() == b"new"
    assert (tmp_path / "keep.txt").read_bytes() == b"untouched" and (tmp_path / "sub" / "x.bin").is_file()
    assert not (tmp_path / FOLDER_SAVE_NAME).exists()


def test_folder_save_that_fails_changes_nothing_and_removes_a_stale_temporary(tmp_path):
    from pdl_plugin.errors import PDLWriteError
    from pdl_plugin.files import FOLDER_SAVE_NAME, save_folder_atomically

    (tmp_path / "adapter_model.safetensors").write_bytes(b"old")
    (tmp_path / FOLDER_SAVE_NAME).mkdir()  # left by a save that was killed
    (tmp_path / FOLDER_SAVE_NAME / "README.md").write_text("")
    before = file_hashes(tmp_path)

    def save(folder: Path) -> None:
        (folder / "README.md").write_text("")
        disk_full_after()({}, folder / "adapter_model.safetensors")

    with pytest.raises(PDLWriteError, match="No space left on device") as raised:
        save_folder_atomically(tmp_path, save, what="adapter")
    assert isinstance(raised.value, OSError) and raised.value.errno == errno.ENOSPC
    assert file_hashes(tmp_path) == {k: v for k, v in before.items() if not k.startswith(FOLDER_SAVE_NAME)}


def test_a_live_writers_temporary_is_kept(tmp_path):
    from pdl_plugin.files import remove_stale_temporaries

    host = re.sub(r"[^A-Za-z0-9_-]", "_", os.uname().nodename)[:40]
    live = tmp_path / f".t.safetensors.{host}-{os.getppid()}.0a0a0a0a.tmp"  # our parent: alive
    live.write_bytes(b"being written")
    assert remove_stale_temporaries(tmp_path / "t.safetensors") == [] and live.exists()


def test_truncation_report_counts_rows_dropped_and_cut_by_hand():
    from types import SimpleNamespace

    from datasets import Dataset

    from pdl_plugin.preparation import truncation_report

    x = -100
    rows = [
        [x, x, x, x],  # trains nothing at all
        [x, x, x, 5, 6],  # keep_start 3: every trained token cut -> dropped; keep_end 3: kept whole
        [x, 5, 6, 7, 8],  # keep_start 3: 2 of 4 cut; keep_end 3: 1 of 4 cut
        [x, 5],  # short: untouched
    ]
    data = Dataset.from_dict({"labels": rows})
    args = dict(max_length=3, packing=False, packing_strategy="bfd")
    start = truncation_report(data, SimpleNamespace(truncation_mode="keep_start", **args))
    assert (start.rows, start.rows_without_trained_tokens, start.rows_emptied_by_truncation, start.rows_cut) == (
        4, 1, 1, 1)
    assert (start.trained_tokens, start.trained_tokens_cut, start.rows_dropped) == (7, 4, 2)
    end = truncation_report(data, SimpleNamespace(truncation_mode="keep_end", **args))
    assert (end.rows_emptied_by_truncation, end.rows_cut, end.trained_tokens_cut, end.rows_dropped) == (0, 1, 1, 1)
    packed = truncation_report(data, SimpleNamespace(truncation_mode="keep_start", **{**args, "packing": True}))
    assert (packed.truncation, packed.rows_dropped, packed.trained_tokens_cut) == ("packing", 0, 4)
    assert "kept, but they train nothing" in packed.summary()
    whole = truncation_report(data, SimpleNamespace(truncation_mode="keep_start", **{**args, "max_length": None}))
    assert (whole.trained_tokens_cut, whole.rows_dropped, whole.lines()[0].startswith("1 row of 4")) == (0, 0, True)
