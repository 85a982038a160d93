"""A run folder never mixes two runs: its adapter, table and `pdl_config.json` always come from one run.

An earlier run (alpha 0.5) has finished in `out`; a new run (alpha 1.0, other data, so another table) writes the same
`out`. Whatever happens to the new run (Ctrl-C, kill -9 mid-training, its final save) the folder holds, at every
instant, either the earlier run's adapter with its PDL files, the new run's adapter with its PDL files, or an adapter
without PDL files (which `pdl-eval` refuses). A second run while one is writing `out` is refused and changes nothing.
The helpers here are shared with `test_real_faults.py`.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROMPT_COMPLETION, cpu_args, make_tiny_model

TABLE, CONFIG, ADAPTER = "pdl_frequency_table.safetensors", "pdl_config.json", "adapter_model.safetensors"
WATCHED = (ADAPTER, "adapter_config.json", TABLE, CONFIG)
MORE_DATA = {"prompt": ["Count to three."], "completion": [" One, two, three: the counting is done."]}
LOCK_NAME = ".pdl_run.lock"


# ---- runs --------------------------------------------------------------------------------------------------------


def lora_trainer(output: Path, tokenizer, alpha: float | None, more_data: bool = False, callbacks=None, **overrides):
    """A LoRA PDL run (alpha None: plain cross-entropy) of a tiny Llama on the real tokenizer (a second of CPU)."""
    from datasets import Dataset
    from peft import LoraConfig

    from pdl_plugin import PDLSFTTrainer

    data = {key: PROMPT_COMPLETION[key] + (MORE_DATA[key] if more_data else []) for key in PROMPT_COMPLETION}
    loss = {"loss_type": "pdl", "pdl_alpha": alpha} if alpha is not None else {"loss_type": "nll"}
    settings = {"output_dir": str(output), "max_steps": 2, "per_device_train_batch_size": 2, "learning_rate": 1e-2,
                **loss}
    return PDLSFTTrainer(make_tiny_model(len(tokenizer)), cpu_args(output.parent, **{**settings, **overrides}),
                         Dataset.from_dict(data), processing_class=tokenizer, callbacks=callbacks,
                         peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))


def finish(trainer) -> None:
    from pdl_plugin.recipe import save_final_model

    trainer.train()
    save_final_model(trainer, trainer.args.output_dir)


def hashes(folder: Path, names=None) -> dict[str, str]:
    """sha256 of the files directly in `folder` (or of `names` there that exist)."""
    files = [folder / name for name in names] if names else sorted(folder.iterdir()) if folder.is_dir() else []
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file()}


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory):
    """A finished alpha-0.5 run's folder (adapter, table, config, tokenizer, model card), copied by each test."""
    from transformers import AutoTokenizer

    from pdl_plugin.data.embedded_model import resolve_embedded_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_embedded_model("embedded:SmolLM2-135M-Instruct"))
    folder = tmp_path_factory.mktemp("earlier") / "out"
    finish(lora_trainer(folder, tokenizer, alpha=0.5))
    assert {ADAPTER, TABLE, CONFIG} <= set(hashes(folder))
    return folder


def copy_of(earlier: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(earlier, out)
    return out


class Interrupt:
    """A callback that stops training after `step` as the user or the system would: Ctrl-C or kill -9."""

    def __new__(cls, step: int, kill: bool = False):
        from transformers import TrainerCallback

        class _Interrupt(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == step:
                    if kill:
                        os.kill(os.getpid(), signal.SIGKILL)
                    raise KeyboardInterrupt

        return _Interrupt()


# ---- the instants of a save -----------------------------------------------------------------------------------------


class Instants:
    """Records the watched files of `folder` after every rename or removal in it (patched `os.replace`/`os.unlink`),
    to check that no instant pairs one run's adapter with another run's PDL files."""

    def __init__(self, folder: Path, monkeypatch):
        self.folder, self.states = folder.resolve(), []
        for module, name in ((os, "replace"), (os, "unlink"), (shutil, "copy")):
            monkeypatch.setattr(module, name, self._watch(getattr(module, name)))

    def _watch(self, original):
        def call(*args, **kwargs):
            result = original(*args, **kwargs)
            touched = args[0] if original.__name__ == "unlink" else args[1]
            if Path(touched).resolve().parent == self.folder:
                self.snapshot()
            return result

        return call

    def snapshot(self) -> None:
        self.states.append(hashes(self.folder, WATCHED))

    def mixed(self, runs: dict[str, dict[str, str]]) -> list[str]:
        """The instants at which a PDL file sits beside an adapter (or PDL file) of another run, described."""
        problems = []
        for index, state in enumerate(self.states):
            if TABLE not in state and CONFIG not in state:
                continue  # an adapter without PDL files: refused by pdl-eval, mixes nothing
            owners = {name: {run for run, files in runs.items() if files.get(name) == digest}
                      for name, digest in state.items()}
            common = set(runs)
            for owned in owners.values():
                common &= owned
            if not common:
                problems.append(f"instant {index}: " + ", ".join(f"{n} of {sorted(o) or '?'}" for n, o in owners.items()))
        return problems


# ---- A: interrupted runs leave the earlier run whole ----------------------------------------------------------------


def test_ctrl_c_mid_training_leaves_the_earlier_runs_files_byte_for_byte(earlier_run, tmp_path, tokenizer):
    out = copy_of(earlier_run, tmp_path)
    before = hashes(out)
    trainer = lora_trainer(out, tokenizer, alpha=1.0, more_data=True, callbacks=[Interrupt(2)], max_steps=4,
                           save_strategy="steps", save_steps=1)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    after = hashes(out)
    # TRL writes its model card (README.md) into output_dir at every checkpoint (SFTTrainer._save_checkpoint)
    changed = sorted(name for name in before if after.get(name) != before[name] and name != "README.md")
    assert changed == [], f"the earlier run's {changed} changed: an interrupted run must not touch them"
    assert (out / "checkpoint-1" / TABLE).is_file()  # the checkpoint has the new run's PDL files
    assert not (out / LOCK_NAME).exists()  # the interrupted run let go of the folder


def _killed_child(output: str, done_file: str) -> None:
    """Runs in a spawned child: the alpha-1.0 run into `output`, killed with SIGKILL at step 2."""
    from transformers import AutoTokenizer

    from pdl_plugin.data.embedded_model import resolve_embedded_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_embedded_model("embedded:SmolLM2-135M-Instruct"))
    trainer = lora_trainer(Path(output), tokenizer, alpha=1.0, more_data=True, callbacks=[Interrupt(2, kill=True)],
                           max_steps=4, save_strategy="steps", save_steps=1)
    Path(done_file).write_text("training")
    trainer.train()
    Path(done_file).write_text("not killed")


def test_kill_9_mid_training_leaves_the_earlier_runs_files_and_frees_the_folder(earlier_run, tmp_path):
    out = copy_of(earlier_run, tmp_path)
    before = hashes(out)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    child = multiprocessing.get_context("spawn").Process(target=_killed_child, args=(str(out), str(tmp_path / "st")))
    child.start()
    child.join(timeout=600)
    if child.is_alive():
        child.kill()
        pytest.fail("the killed run was still running after 600 s")
    assert child.exitcode == -signal.SIGKILL and (tmp_path / "st").read_text() == "training"
    after = hashes(out)
    assert sorted(n for n in before if after.get(n) != before[n] and n != "README.md") == []
    assert (out / "checkpoint-1" / "trainer_state.json").is_file()
    # the killed run's lock file may stay, its lock does not: the next run takes the folder
    from pdl_plugin.run_folder import lock_run_folder, unlock_run_folder

    lock_run_folder(out)
    unlock_run_folder(out)
    assert not (out / LOCK_NAME).exists()


# ---- A: the final save replaces the earlier run's files without an instant of mixture -------------------------------


def test_no_instant_of_a_new_run_pairs_an_adapter_with_another_runs_pdl_files(earlier_run, tmp_path, tokenizer,
                                                                            monkeypatch):
    out = copy_of(earlier_run, tmp_path)
    earlier = hashes(out, WATCHED)
    trainer = lora_trainer(out, tokenizer, alpha=1.0, more_data=True)
    instants = Instants(out, monkeypatch)
    trainer.train()
    instants.snapshot()  # trained, not yet saved
    from pdl_plugin.recipe import save_final_model

    save_final_model(trainer, out)
    monkeypatch.undo()
    new = hashes(out, WATCHED)
    assert new[TABLE] != earlier[TABLE] and new[ADAPTER] != earlier[ADAPTER]
    assert json.loads((out / CONFIG).read_text())["pdl_alpha"] == 1.0
    assert instants.mixed({"earlier": earlier, "new": new}) == []
    assert len(instants.states) > 3 and not (out / ".pdl-save.tmp").exists() and not (out / LOCK_NAME).exists()


def test_a_save_by_the_models_own_save_pretrained_into_output_dir_keeps_the_run_together(earlier_run, tmp_path,
                                                                                       tokenizer, monkeypatch):
    """Axolotl saves its final adapter (and, on Ctrl-C, the adapter so far) with `model.save_pretrained(output_dir)`,
    not through the Trainer: that save too replaces the earlier run's PDL files with the run's own, atomically."""
    out = copy_of(earlier_run, tmp_path)
    earlier = hashes(out, WATCHED)
    trainer = lora_trainer(out, tokenizer, alpha=1.0, more_data=True)
    instants = Instants(out, monkeypatch)
    trainer.train()
    trainer.model.save_pretrained(str(out))  # axolotl.train.save_trained_model, its default path
    monkeypatch.undo()
    new = hashes(out, WATCHED)
    assert new[TABLE] != earlier[TABLE] and new[ADAPTER] != earlier[ADAPTER]
    assert json.loads((out / CONFIG).read_text())["pdl_alpha"] == 1.0
    assert instants.mixed({"earlier": earlier, "new": new}) == []
    assert not (out / LOCK_NAME).exists()
    trainer.model.save_pretrained(str(tmp_path / "elsewhere"))  # a save elsewhere is a plain save
    assert not (tmp_path / "elsewhere" / TABLE).exists() and (tmp_path / "elsewhere" / ADAPTER).is_file()


def test_a_push_during_training_copies_the_checkpoints_pdl_files_with_its_adapter(earlier_run, tmp_path, tokenizer,
                                                                                 monkeypatch):
    """With `push_to_hub`, the Trainer copies each checkpoint's adapter into output_dir before uploading it."""
    import transformers.trainer

    out = copy_of(earlier_run, tmp_path)
    earlier = hashes(out, WATCHED)
    trainer = lora_trainer(out, tokenizer, alpha=1.0, more_data=True, max_steps=1, save_strategy="steps", save_steps=1)
    trainer.train()
    checkpoint = out / "checkpoint-1"
    uploads = []

    class FakeApi:
        def upload_folder(self, folder_path, **kwargs):
            uploads.append(hashes(Path(folder_path), WATCHED))
            return type("Job", (), {"done": lambda self: True})()

    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: FakeApi())
    trainer.hub_model_id, trainer.push_in_progress = "someone/some-model", None  # as init_hf_repo sets them
    instants = Instants(out, monkeypatch)
    trainer._push_from_checkpoint(str(checkpoint))
    monkeypatch.undo()
    assert hashes(out, WATCHED) == hashes(checkpoint, WATCHED)
    assert instants.mixed({"earlier": earlier, "new": hashes(checkpoint, WATCHED)}) == []
    assert uploads and all(TABLE not in upload or upload[ADAPTER] == hashes(checkpoint)[ADAPTER] for upload in uploads)


def test_a_run_without_pdl_removes_an_earlier_runs_pdl_files_at_its_final_save(earlier_run, tmp_path, tokenizer):
    out = copy_of(earlier_run, tmp_path)
    finish(lora_trainer(out, tokenizer, alpha=None))
    assert (out / ADAPTER).is_file() and not (out / TABLE).exists() and not (out / CONFIG).exists()


def test_pdl_eval_refuses_an_adapter_without_its_table_and_says_why(tmp_path, capsys):
    from pdl_plugin.cli.eval import main as eval_main

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model_name_or_path: embedded:SmolLM2-135M-Instruct\ndataset_name: embedded:dialogue\nuse_cpu: true\n"
                      f"output_dir: {tmp_path / 'out'}\n")
    adapter = tmp_path / "out"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / ".pdl-save.tmp").mkdir()  # a final save killed while moving its files in
    with pytest.raises(SystemExit) as exit_info:
        eval_main(["--adapter", str(adapter), "--config", str(recipe)])
    err = " ".join(capsys.readouterr().err.split())
    assert exit_info.value.code == 2 and err.count("error:") == 1 and "Traceback" not in err
    assert "No training frequency table" in err and "last save was interrupted" in err


# ---- A: one run at a time ------------------------------------------------------------------------------------------


@pytest.fixture
def held_elsewhere():
    """Hold a folder's run lock from another process (as a second `pdl-sft` would) until the test ends."""
    children = []

    def hold(folder: Path):
        code = ("import sys; from pdl_plugin.run_folder import lock_run_folder; lock_run_folder(sys.argv[1]); "
                "print('held', flush=True); sys.stdin.read()")
        child = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        children.append(child)
        assert child.stdout.readline().strip() == "held"
        return child

    yield hold
    for child in children:
        child.stdin.close()
        child.wait(timeout=60)


def test_a_second_trainer_into_a_folder_another_run_is_writing_is_refused(earlier_run, tmp_path, tokenizer,
                                                                        held_elsewhere):
    from pdl_plugin import PDLWriteError

    out = copy_of(earlier_run, tmp_path)
    held = held_elsewhere(out)
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    trainer = lora_trainer(out, tokenizer, alpha=1.0, more_data=True)
    busy = rf"output_dir {re.escape(str(out))} is being written by another run \(pid {held.pid} "
    with pytest.raises(PDLWriteError, match=busy):
        trainer.train()
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before
    assert trainer.state.global_step == 0


def test_pdl_sft_into_a_folder_another_run_is_writing_is_refused_before_the_model_loads(tmp_path, held_elsewhere,
                                                                                      capsys, monkeypatch):
    import transformers

    from pdl_plugin.cli.sft import main as sft_main

    out = tmp_path / "out"
    out.mkdir()
    (out / TABLE).write_bytes(b"an earlier run's table")
    held_elsewhere(out)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: pytest.fail("the model was loaded before the busy folder was refused"))
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(dict(zip(PROMPT_COMPLETION, row))) + "\n"
                            for row in zip(*PROMPT_COMPLETION.values())))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model_name_or_path: embedded:SmolLM2-135M-Instruct\ndatasets: [{{path: json, data_files: "
                      f"{data}, split: train}}]\noutput_dir: {out}\nloss_type: pdl\nuse_cpu: true\nreport_to: none\n")
    with pytest.raises(SystemExit) as exit_info:
        sft_main(["--config", str(recipe)])
    err = " ".join(capsys.readouterr().err.split())
    assert exit_info.value.code == 2 and err.count("error:") == 1 and "Traceback" not in err
    assert f"output_dir {out} is being written by another run" in err
    assert sorted(p.name for p in out.iterdir()) == sorted([TABLE, LOCK_NAME])  # the holder's lock, nothing else
    assert (out / TABLE).read_bytes() == b"an earlier run's table"
