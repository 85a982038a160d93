"""Test-only Axolotl plugins for the contract suite (imported by `axolotl train` subprocesses, Axolotl venv only).

`CrashAfterCheckpointPlugin`: when `PDL_CONTRACT_CRASH_AFTER_STEP=N` is set, the process dies (`os._exit`, no
clean-up, no final save) right after the Trainer has written `checkpoint-N`: an interruption as a crash or a
pre-empted job leaves it (its data-loader workers are killed with it). Without the variable it does nothing. With
`PDL_CONTRACT_CRASH_KEEPS_RECORD=1` as well, the test recorder (tests/integrations/pdl_axolotl_recorder.py) first
writes what it recorded so far (it normally writes at the end of training), so that the steps before the crash can be
checked too; nothing else is written.
"""

from __future__ import annotations

import multiprocessing
import os
import sys

from axolotl.integrations.base import BasePlugin
from transformers import TrainerCallback

CRASH_ENV = "PDL_CONTRACT_CRASH_AFTER_STEP"
KEEP_RECORD_ENV = "PDL_CONTRACT_CRASH_KEEPS_RECORD"
CRASH_CODE = 17


class _CrashAfterCheckpoint(TrainerCallback):
    def __init__(self, step: int, trainer=None):
        self.step, self.trainer = step, trainer  # trainer: keep the recorder's record (KEEP_RECORD_ENV)

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            if self.trainer is not None:
                for callback in self.trainer.callback_handler.callbacks:
                    if type(callback).__name__ == "_Recorder":
                        callback.on_train_end(args, state, control)
            print(f"contract test: crashing after checkpoint-{self.step}", file=sys.stderr, flush=True)
            # A killed job takes its data-loader workers with it; orphaned, they would hold the test's output pipes
            for child in multiprocessing.active_children():
                child.kill()
            os._exit(CRASH_CODE)


class CrashAfterCheckpointPlugin(BasePlugin):
    def post_trainer_create(self, cfg, trainer):
        step = os.environ.get(CRASH_ENV)
        if step:
            keep = trainer if os.environ.get(KEEP_RECORD_ENV) == "1" else None
            trainer.add_callback(_CrashAfterCheckpoint(int(step), keep))
