"""Resume: a run interrupted after 2 steps and resumed follows the uninterrupted loss curve; a changed table is refused."""

import hashlib
from pathlib import Path

import pytest
from datasets import Dataset
from transformers import TrainerCallback

from conftest import PROMPT_COMPLETION, cpu_args, make_tiny_model
from pdl_plugin import PDLConfigError, PDLSFTTrainer
from pdl_plugin.frequency import TABLE_FILENAME


class _StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def _trainer(tmp_path, tokenizer, output, dataset=None, callbacks=None, **overrides):
    settings = dict(output_dir=str(tmp_path / output), loss_type="pdl", pdl_alpha=0.8, max_steps=4,
                    per_device_train_batch_size=2, save_strategy="steps", save_steps=2, learning_rate=1e-2)
    args = cpu_args(tmp_path, **{**settings, **overrides})
    return PDLSFTTrainer(make_tiny_model(len(tokenizer)), args, dataset or Dataset.from_dict(PROMPT_COMPLETION),
                         processing_class=tokenizer, callbacks=callbacks)


def _losses(trainer):
    return {entry["step"]: entry["loss"] for entry in trainer.state.log_history if "loss" in entry}


def test_interrupted_and_resumed_run_matches_the_uninterrupted_one(tmp_path, tokenizer):
    whole = _trainer(tmp_path, tokenizer, "whole")
    whole.train()
    interrupted = _trainer(tmp_path, tokenizer, "split", callbacks=[_StopAt(2)])
    interrupted.train()
    assert sorted(_losses(interrupted)) == [1, 2]
    assert (tmp_path / "split" / "checkpoint-2" / TABLE_FILENAME).is_file()
    resumed = _trainer(tmp_path, tokenizer, "split")
    resumed.train(resume_from_checkpoint=True)
    expected, got = _losses(whole), {**_losses(interrupted), **_losses(resumed)}
    assert sorted(got) == [1, 2, 3, 4]
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-5), step


def _file_hashes(folder) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def test_resuming_with_a_changed_table_or_alpha_is_refused(tmp_path, tokenizer):
    _trainer(tmp_path, tokenizer, "run", callbacks=[_StopAt(2)]).train()
    before = _file_hashes(tmp_path / "run")
    other_data = Dataset.from_dict({"prompt": ["Other data"], "completion": [" entirely different words here"]})
    with pytest.raises(PDLConfigError, match="frequency table .*differ"):
        _trainer(tmp_path, tokenizer, "run", dataset=other_data).train(resume_from_checkpoint=True)
    with pytest.raises(PDLConfigError, match=r"settings pdl_alpha \(0.8 -> 0.3\) differ"):
        _trainer(tmp_path, tokenizer, "run", pdl_alpha=0.3).train(resume_from_checkpoint=True)
    assert _file_hashes(tmp_path / "run") == before  # a refused resume changes none of the interrupted run's files
