"""Kill -9 while a checkpoint is being saved, then resume: the result is exact or refused with a clear error.

A run of 6 steps saves checkpoints at steps 2, 4 and 6. A child process trains it and is SIGKILLed at one point of
saving checkpoint-4 (checkpoint-2 is complete by then). Then, in fresh children, from copies of the folder it left:

- `pdl-sft`'s choice (`recipe.check_resume_checkpoint(True, ...)`: the newest complete checkpoint) must give exactly
  the losses and final weights of the uninterrupted run;
- `trainer.train(resume_from_checkpoint=True)` must be exact too: the Trainer glue of both hosts
  (`hf_trainer.PDLTrainerMixin.train`) resolves `True` with the same `checkpoints.check_resume_checkpoint`, so it
  skips a checkpoint-N folder that the kill left half-saved; never an unexplained exception, never a silently
  different run.

Each child is a fresh (spawned) interpreter: a child forked from a test process whose torch thread pools already ran
other tests can deadlock (it hung in the full suite).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import traceback
from pathlib import Path

import pytest

from conftest import PROMPT_COMPLETION, cpu_args, make_tiny_model

STEPS, SAVE_EVERY, KILLED_AT = 6, 2, "checkpoint-4"


def _trainer(output: Path, tokenizer):
    from datasets import Dataset

    from pdl_plugin import PDLSFTTrainer

    args = cpu_args(output.parent, output_dir=str(output), loss_type="pdl", pdl_alpha=0.8, max_steps=STEPS,
                    per_device_train_batch_size=2, save_strategy="steps", save_steps=SAVE_EVERY, learning_rate=1e-2,
                    logging_steps=1)
    return PDLSFTTrainer(make_tiny_model(len(tokenizer)), args, Dataset.from_dict(PROMPT_COMPLETION),
                         processing_class=tokenizer)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _in_killed_checkpoint(path) -> bool:
    return KILLED_AT in str(path)


# ---- kill points: each patches one step of checkpoint saving to SIGKILL the process there -----------------------


def _kill_mid_pdl_table():
    import pdl_plugin.frequency as frequency

    original = frequency.save_file

    def save_file(tensors, filename, metadata=None):
        if _in_killed_checkpoint(filename):
            Path(filename).write_bytes(b"\0" * 32)  # half a table in the temporary file
            _die()
        return original(tensors, filename, metadata=metadata)

    frequency.save_file = save_file


def _kill_after(cls, name: str, path_arg: int = 1):
    """SIGKILL right after `cls.name(...)` returns for the killed checkpoint (its path is positional `path_arg`)."""
    original = getattr(cls, name)

    def wrapped(*args, **kwargs):
        result = original(*args, **kwargs)
        path = args[path_arg] if len(args) > path_arg else next(iter(kwargs.values()), "")
        if _in_killed_checkpoint(path):
            _die()
        return result

    setattr(cls, name, wrapped)


def _kill_after_pdl_files():
    from pdl_plugin.engine import PDLEngine

    _kill_after(PDLEngine, "save")


def _kill_after_model():
    from transformers import Trainer

    _kill_after(Trainer, "save_model")


def _kill_after_optimizer():
    from transformers import Trainer

    _kill_after(Trainer, "_save_optimizer_and_scheduler")


def _kill_mid_trainer_state():
    from transformers import TrainerState

    original = TrainerState.save_to_json

    def save_to_json(self, json_path):
        if _in_killed_checkpoint(json_path):
            Path(json_path).write_text('{"global_step": 4, "log_hist')  # transformers writes it in place
            _die()
        return original(self, json_path)

    TrainerState.save_to_json = save_to_json


def _kill_after_trainer_state():
    from transformers import TrainerState

    _kill_after(TrainerState, "save_to_json")


KILL_POINTS = {
    "mid-pdl-table": _kill_mid_pdl_table,
    "after-pdl-files": _kill_after_pdl_files,
    "after-model": _kill_after_model,
    "after-optimizer": _kill_after_optimizer,
    "mid-trainer-state": _kill_mid_trainer_state,
    "after-trainer-state": _kill_after_trainer_state,
}


# ---- children ----------------------------------------------------------------------------------------------------


def _weights(trainer) -> dict:
    return {name: tensor.detach().clone() for name, tensor in trainer.model.state_dict().items()}


def _child(job: str, output: str, result_file: str, smol_path: str, kill: str | None, resume) -> None:
    """Runs in a child process: train (possibly killed at `kill`, possibly resuming), write the outcome as JSON."""
    import torch
    from transformers import AutoTokenizer

    outcome: dict = {"job": job}
    try:
        if kill:
            KILL_POINTS[kill]()
        if resume is True:
            from transformers.trainer_utils import get_last_checkpoint

            outcome["checkpoint"] = Path(get_last_checkpoint(output)).name  # the Trainer's choice
        tokenizer = AutoTokenizer.from_pretrained(smol_path)
        trainer = _trainer(Path(output), tokenizer)
        trainer.train(resume_from_checkpoint=resume)
        outcome["losses"] = {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e}
        outcome["num_tokens"] = {e["step"]: e.get("num_tokens") for e in trainer.state.log_history if "loss" in e}
        torch.save(_weights(trainer), result_file + ".pt")
        outcome["status"] = "trained"
    except Exception as err:  # noqa: BLE001 - reported to the parent
        from pdl_plugin.errors import PDLError

        outcome["status"] = "refused" if isinstance(err, PDLError) else "exception"
        outcome["error"] = f"{type(err).__name__}: {err}"
        outcome["traceback"] = traceback.format_exc()
    Path(result_file).write_text(json.dumps(outcome))


def _run(tmp: Path, job: str, output: Path, smol_path: str, kill: str | None = None, resume=None) -> dict:
    result_file = tmp / f"{job}.json"
    process = multiprocessing.get_context("spawn").Process(
        target=_child, args=(job, str(output), str(result_file), smol_path, kill, resume)
    )
    process.start()
    process.join(timeout=600)
    if process.is_alive():
        process.kill()
        pytest.fail(f"{job}: still running after 600 s")
    if not result_file.exists():
        return {"job": job, "status": "killed" if process.exitcode == -signal.SIGKILL else f"exit {process.exitcode}"}
    outcome = json.loads(result_file.read_text())
    outcome["losses"] = {int(k): v for k, v in outcome.get("losses", {}).items()}
    outcome["num_tokens"] = {int(k): v for k, v in outcome.get("num_tokens", {}).items()}
    return outcome


def _same_weights(file_a: Path, file_b: Path) -> bool:
    import torch

    a, b = torch.load(file_a), torch.load(file_b)
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7) for k in a)


def _exact(resumed: dict, whole: dict, tmp: Path, whole_file: Path) -> bool:
    """The resumed run's log (the checkpoint's history, then its own steps) and final weights are the whole run's."""
    got = resumed["losses"]
    return (
        sorted(got) == sorted(whole["losses"])
        and all(got[s] == pytest.approx(whole["losses"][s], rel=1e-5) for s in whole["losses"])
        and _same_weights(tmp / f"{resumed['job']}.json.pt", whole_file)
    )


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory, smol_path):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tmp = tmp_path_factory.mktemp("whole")
    whole = _run(tmp, "whole", tmp / "out", smol_path)
    assert whole["status"] == "trained", whole
    assert sorted(whole["losses"]) == list(range(1, STEPS + 1))
    return whole, tmp / "whole.json.pt"


@pytest.mark.parametrize("kill", list(KILL_POINTS))
def test_kill_during_checkpoint_save_then_resume_is_exact_or_refused(kill, tmp_path, smol_path, whole_run):
    from pdl_plugin.checkpoints import check_resume_checkpoint

    whole, whole_file = whole_run
    output = tmp_path / "out"
    killed = _run(tmp_path, "killed", output, smol_path, kill=kill)
    assert killed["status"] == "killed", killed
    assert (output / "checkpoint-2" / "trainer_state.json").is_file()
    snapshot = tmp_path / "out-as-killed"  # each resume starts from the folder as the kill left it
    shutil.copytree(output, snapshot, symlinks=True)

    # 1. pdl-sft's choice: the newest complete checkpoint
    chosen = check_resume_checkpoint(True, snapshot)
    report = {"kill": kill, "pdl_sft_resumes_from": chosen.name}
    again = _run(tmp_path, "resume-complete", snapshot, smol_path, resume=str(chosen))
    assert again["status"] == "trained", again.get("traceback", again)
    assert _exact(again, whole, tmp_path, whole_file), report

    # 2. trainer.train(resume_from_checkpoint=True) through the Trainer glue: the same choice, the same run
    resumed = _run(tmp_path, "resume-true", output, smol_path, resume=True)
    report.update(newest_folder=resumed.get("checkpoint"), resume_true=resumed["status"],
                  message=resumed.get("error", "")[:300])
    print(json.dumps(report))
    assert resumed["status"] == "trained", resumed.get("traceback", resumed)
    assert _exact(resumed, whole, tmp_path, whole_file), report


def test_num_tokens_continues_after_a_resume(tmp_path, smol_path, whole_run):
    """TRL keeps num_tokens in memory only (plain TRL restarts it at 0 after a resume); PDLSFTTrainer saves it with
    each checkpoint. The resumed run's values must be those of an uninterrupted run at the same steps."""
    whole, _ = whole_run
    output = tmp_path / "out"
    assert _run(tmp_path, "killed", output, smol_path, kill="after-trainer-state")["status"] == "killed"
    resumed = _run(tmp_path, "resumed", output, smol_path, resume=str(output / "checkpoint-4"))
    assert resumed["status"] == "trained" and max(resumed["num_tokens"]) == STEPS, resumed
    assert resumed["num_tokens"] == {s: whole["num_tokens"][s] for s in resumed["num_tokens"]}
    assert (output / "checkpoint-4" / "trl_num_tokens.json").is_file()


# ---- kill -9 during the final save: the run folder holds one run's files at every point ---------------------------

# SIGKILL at the k-th rename into or removal from output_dir during the final save: here 1-2 remove the earlier PDL
# files, 3-9 move the model's files in (the weights at 6), 10 the table, 11 pdl_config.json
FINAL_KILLS = [1, 2, 6, 10, 11]
WATCHED = ("model.safetensors", "pdl_frequency_table.safetensors", "pdl_config.json")  # config.json: same in both


def _final_trainer(output: Path, tokenizer, alpha: float, extra_row: bool):
    from datasets import Dataset

    from pdl_plugin import PDLSFTTrainer

    data = {key: values + ([f"{key} of one more row"] if extra_row else []) for key, values in PROMPT_COMPLETION.items()}
    args = cpu_args(output.parent, output_dir=str(output), loss_type="pdl", pdl_alpha=alpha, max_steps=2,
                    per_device_train_batch_size=2, learning_rate=1e-2)
    return PDLSFTTrainer(make_tiny_model(len(tokenizer)), args, Dataset.from_dict(data), processing_class=tokenizer)


def _die_at_the_kth_change_of(folder: Path, kill_at: int) -> None:
    """From now on, SIGKILL this process right after its `kill_at`-th rename into or removal from `folder`."""
    seen = [0]
    folder = folder.resolve()
    for name in ("replace", "unlink"):
        original = getattr(os, name)

        def call(*args, _original=original, _name=name, **kwargs):
            result = _original(*args, **kwargs)
            if Path(args[1] if _name == "replace" else args[0]).resolve().parent == folder:
                seen[0] += 1
                if seen[0] == kill_at:
                    _die()
            return result

        setattr(os, name, call)


def _final_save_child(output: str, smol_path: str, kill_at: int, result_file: str) -> None:
    from transformers import AutoTokenizer

    from pdl_plugin.recipe import save_final_model

    trainer = _final_trainer(Path(output), AutoTokenizer.from_pretrained(smol_path), alpha=1.0, extra_row=True)
    trainer.train()
    _die_at_the_kth_change_of(Path(output), kill_at)
    save_final_model(trainer, output)
    Path(result_file).write_text("saved")


def _owners(folder: Path, earlier: dict) -> dict[str, str]:
    """Which run each watched file of `folder` is from: `earlier` (the same bytes as then) or `new`."""
    import hashlib

    return {name: "earlier" if hashlib.sha256((folder / name).read_bytes()).hexdigest() == earlier[name] else "new"
            for name in WATCHED if (folder / name).is_file()}


@pytest.mark.parametrize("kill_at", FINAL_KILLS)
def test_kill_during_the_final_save_never_pairs_a_model_with_another_runs_pdl_files(kill_at, tmp_path, smol_path):
    import hashlib

    from transformers import AutoTokenizer

    from pdl_plugin.recipe import save_final_model

    output = tmp_path / "out"
    earlier = _final_trainer(output, AutoTokenizer.from_pretrained(smol_path), alpha=0.5, extra_row=False)
    earlier.train()
    save_final_model(earlier, output)
    del earlier
    before = {name: hashlib.sha256((output / name).read_bytes()).hexdigest() for name in WATCHED}
    child = multiprocessing.get_context("spawn").Process(
        target=_final_save_child, args=(str(output), smol_path, kill_at, str(tmp_path / "saved")))
    child.start()
    child.join(timeout=600)
    assert not child.is_alive() and child.exitcode == -signal.SIGKILL, (child.exitcode, kill_at)
    owners = _owners(output, before)
    has_pdl = "pdl_frequency_table.safetensors" in owners or "pdl_config.json" in owners
    print(json.dumps({"kill_at": kill_at, "owners": owners}))
    assert not has_pdl or len(set(owners.values())) == 1, owners  # PDL files only ever beside their own run's model
    if set(owners.values()) == {"new"} and "pdl_config.json" in owners:
        assert json.loads((output / "pdl_config.json").read_text())["pdl_alpha"] == 1.0
