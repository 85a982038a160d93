"""Real faults, not simulated ones: a full file system (a small tmpfs) and a read-only one.

On a really full disk, safetensors raises `SafetensorError("... No space left on device (os error 28)")` and torch's
`torch.save` a `RuntimeError("... unexpected pos ...")`, not the `OSError` a simulated fault raises. Each writer must
still end in one `error:` line (exit 2) that says the disk is full and leave the previous files as they were: the
frequency table, `pdl_config.json`, `pdl-freq --output`, the final save of `pdl-sft`, and a checkpoint (removed when
incomplete, so that a resume takes the last complete one). `pdl-eval --output` on a read-only file system is refused
before the model loads.

The file systems are mounted with `mount -t tmpfs` (root only: the tests are skipped, with the reason, elsewhere) and
unmounted when each test ends.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import PROMPT_COMPLETION, make_tiny_model

EARLIER_RUN = {  # an earlier run's files in output_dir: a full disk must not change them
    "model.safetensors": b"earlier weights " * 64,
    "config.json": b'{"earlier": true}\n',
    "pdl_config.json": b'{"pdl_alpha": 0.5, "earlier": true}\n',
    "pdl_frequency_table.safetensors": b"earlier table " * 64,
}


# ---- file systems --------------------------------------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path):
    """`small_fs(size, read_only=False)` mounts a tmpfs of `size` (e.g. "2m") under tmp_path and returns it."""
    mounted: list[Path] = []

    def mount(size: str, read_only: bool = False) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a small tmpfs needs root; not root here")
        if shutil.which("mount") is None:
            pytest.skip("no `mount` command here")
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, check=False,
                              text=True)
        if done.returncode != 0:
            pytest.skip(f"`mount -t tmpfs` was refused here: {done.stderr.strip() or done.returncode}")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        if subprocess.run(["umount", str(where)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def remount_read_only(where: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True, capture_output=True)


def fill(fs: Path, leave: int) -> None:
    """Fill the file system of `fs` so that about `leave` bytes stay free."""
    stats = os.statvfs(fs)
    free = stats.f_bavail * stats.f_frsize
    with open(fs / "filler", "wb") as handle:
        handle.write(b"\0" * max(free - leave, 0))


def earlier_run(folder: Path) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in EARLIER_RUN.items():
        (folder / name).write_bytes(content)
    return dict(EARLIER_RUN)


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err[-3000:]
    return " ".join(err[err.index("error:"):].split())


# ---- a tiny run, through the real console entry points -------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model_folder(tmp_path_factory) -> Path:
    """A one-layer Llama on the real SmolLM2 vocabulary, saved as a model folder (3 MB of weights)."""
    from transformers import AutoTokenizer

    from pdl_plugin.data.embedded_model import resolve_embedded_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_embedded_model("embedded:SmolLM2-135M-Instruct"))
    folder = tmp_path_factory.mktemp("tiny") / "model"
    make_tiny_model(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def recipe(tmp_path: Path, model: Path, output: Path, **overrides) -> str:
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(dict(zip(PROMPT_COMPLETION, row))) + "\n"
                            for row in zip(*PROMPT_COMPLETION.values())))
    settings = {
        "model_name_or_path": str(model), "datasets": [{"path": "json", "data_files": str(data), "split": "train"}],
        "output_dir": str(output), "loss_type": "pdl", "pdl_alpha": 1.0, "max_steps": 2,
        "per_device_train_batch_size": 2, "save_strategy": "no", "report_to": "none", "use_cpu": True, "bf16": False,
        "disable_tqdm": True, "logging_steps": 1, "dataloader_num_workers": 0, "seed": 0, **overrides,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return str(path)


@pytest.fixture(autouse=True)
def _offline_and_one_thread(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


# ---- single files --------------------------------------------------------------------------------------------------


def _table(entries: int):
    import torch

    from pdl_plugin.frequency import FrequencyTable

    return FrequencyTable(torch.arange(entries, dtype=torch.int64), "tok", "completion_only", "data")


def test_a_table_saved_on_a_full_disk_says_so_and_keeps_the_previous_table(small_fs):
    from pdl_plugin import PDLWriteError

    fs = small_fs("1m")
    path = _table(4).save(fs / "pdl_frequency_table.safetensors")
    previous = path.read_bytes()
    fill(fs, leave=64 * 1024)
    with pytest.raises(PDLWriteError, match=r"No space left on device.*the previous file is unchanged") as raised:
        _table(49152).save(path)  # 393 KB
    assert raised.value.errno == errno.ENOSPC and path.read_bytes() == previous
    assert sorted(p.name for p in fs.iterdir()) == ["filler", path.name]  # no temporary left


def test_pdl_config_written_on_a_full_disk_says_so_and_keeps_the_previous_file(small_fs):
    from pdl_plugin import PDLWriteError
    from pdl_plugin.files import write_json

    fs = small_fs("1m")
    path = write_json(fs / "pdl_config.json", {"pdl_alpha": 0.5})
    fill(fs, leave=8 * 1024)
    with pytest.raises(PDLWriteError, match=r"No space left on device.*the previous file is unchanged"):
        write_json(path, {"pdl_alpha": 1.0, "exempt_token_ids": list(range(20000))})
    assert json.loads(path.read_text()) == {"pdl_alpha": 0.5}


def test_pdl_freq_output_on_a_full_disk_is_one_line_and_keeps_the_previous_table(small_fs, tmp_path, capsys):
    from pdl_plugin.cli.freq import main as freq_main

    fs = small_fs("1m")
    output = fs / "table.safetensors"
    output.write_bytes(b"the previous table")
    fill(fs, leave=64 * 1024)
    config = recipe(tmp_path, Path("embedded:SmolLM2-135M-Instruct"), tmp_path / "out")
    with pytest.raises(SystemExit) as exit_info:
        freq_main(["--config", config, "--output", str(output)])
    message = one_error_line(capsys)
    assert exit_info.value.code == 2
    assert "No space left on device" in message and "the previous file is unchanged" in message
    assert output.read_bytes() == b"the previous table"


def test_run_cli_turns_a_write_failure_from_inside_a_library_into_one_line(small_fs, capsys):
    """A write no writer of ours wraps (here safetensors' own `save_file`) still ends in one line, not a traceback;
    any other exception keeps its traceback."""
    import torch
    from safetensors.torch import save_file

    from pdl_plugin.cli import run_cli

    fs = small_fs("256k")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda argv: save_file({"a": torch.zeros(200_000)}, str(fs / "a.safetensors")), [])
    message = one_error_line(capsys)
    assert exit_info.value.code == 2 and "No space left on device (the disk is full)" in message
    with pytest.raises(ZeroDivisionError):
        run_cli(lambda argv: 1 / 0, [])


# ---- pdl-sft: the final save and a checkpoint ----------------------------------------------------------------------


def test_pdl_sft_final_save_on_a_full_disk_is_one_line_and_keeps_the_earlier_run(small_fs, tmp_path,
                                                                                tiny_model_folder, capsys):
    from pdl_plugin.cli.sft import main as sft_main

    fs = small_fs("16m")
    out = fs / "out"
    before = earlier_run(out)
    fill(fs, leave=2 << 20)  # the model alone is 3 MB
    with pytest.raises(SystemExit) as exit_info:
        sft_main(["--config", recipe(tmp_path, tiny_model_folder, out)])
    message = one_error_line(capsys)
    assert exit_info.value.code == 2 and f"Could not save the trained adapter/model and its PDL files into {out}" \
        in message
    assert "No space left on device (the disk is full)" in message and "every previous file is unchanged" in message
    assert files_of(out) == before  # no temporary folder, no lock file, the earlier run whole


def test_a_checkpoint_on_a_full_disk_is_removed_and_the_run_resumes_from_the_last_complete_one(
        small_fs, tmp_path, tiny_model_folder, capsys):
    from pdl_plugin.checkpoints import check_resume_checkpoint
    from pdl_plugin.cli.sft import main as sft_main

    fs = small_fs("64m")
    out = fs / "out"
    before = earlier_run(out)
    fill(fs, leave=20 << 20)  # a checkpoint of the tiny model is 13 MB: the first fits, the second does not
    config = recipe(tmp_path, tiny_model_folder, out, max_steps=3, save_strategy="steps", save_steps=1)
    with pytest.raises(SystemExit) as exit_info:
        sft_main(["--config", config])
    message = one_error_line(capsys)
    assert exit_info.value.code == 2 and f"Could not save checkpoint-2 into {out}" in message
    assert "No space left on device (the disk is full)" in message and "incomplete checkpoint-2 was removed" in message
    assert f"resume from {out / 'checkpoint-1'}" in message
    assert not (out / "checkpoint-2").exists() and check_resume_checkpoint(True, out) == out / "checkpoint-1"
    assert {name: files_of(out)[name] for name in before} == before
    (fs / "filler").unlink()  # space again: the run resumes from checkpoint-1 and finishes
    sft_main(["--config", config, "--resume_from_checkpoint", "true"])
    saved = json.loads((out / "pdl_config.json").read_text())
    assert saved["pdl_alpha"] == 1.0 and (out / "model.safetensors").read_bytes() != before["model.safetensors"]


# ---- pdl-eval on a read-only file system ---------------------------------------------------------------------------


def _adapter_folder(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text("{}")
    _table(49152).save(folder / "pdl_frequency_table.safetensors")


def test_pdl_eval_output_on_a_read_only_file_system_is_refused_before_the_model_loads(small_fs, tmp_path, capsys,
                                                                                     monkeypatch):
    from pdl_plugin.cli.eval import main as eval_main
    from pdl_plugin.eval import evaluate

    monkeypatch.setattr(evaluate, "load_for_eval",
                        lambda *a, **k: pytest.fail("the model was loaded before the unwritable output was refused"))
    config = recipe(tmp_path, Path("embedded:SmolLM2-135M-Instruct"), tmp_path / "out")
    _adapter_folder(tmp_path / "adapter")
    read_only = small_fs("1m", read_only=True)
    with pytest.raises(SystemExit) as exit_info:
        eval_main(["--adapter", str(tmp_path / "adapter"), "--config", config, "--output", str(read_only / "e.json")])
    message = one_error_line(capsys)
    assert exit_info.value.code == 2 and "--output" in message and "read-only file system" in message

    # the default output, ADAPTER/eval.json, in an adapter folder on a read-only file system
    adapter_fs = small_fs("2m")
    _adapter_folder(adapter_fs / "adapter")
    remount_read_only(adapter_fs)
    with pytest.raises(SystemExit) as exit_info:
        eval_main(["--adapter", str(adapter_fs / "adapter"), "--config", config])
    message = one_error_line(capsys)
    assert exit_info.value.code == 2 and "eval.json" in message and "read-only file system" in message
