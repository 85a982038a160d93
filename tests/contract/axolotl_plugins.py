"""Test-only Axolotl plugins for the contract suite (imported by `axolotl train` subprocesses, Axolotl venv only).

`CrashAfterCheckpointPlugin`: when `PDL_CONTRACT_CRASH_AFTER_STEP=N` is set, the process dies (`os._exit`, no
clean-up, no final save) right after the Trainer has written `checkpoint-N`: an interruption as a crash or a
pre-empted job leaves it (its data-loader workers are killed with it). Without the variable it does nothing.
"""

from __future__ import annotations

import multiprocessing
import os
import sys

from axolotl.integrations.base import BasePlugin
from transformers import TrainerCallback

CRASH_ENV = "PDL_CONTRACT_CRASH_AFTER_STEP"
CRASH_CODE = 17


class _CrashAfterCheckpoint(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            print(f"contract test: crashing after checkpoint-{self.step}", file=sys.stderr, flush=True)
            # A killed job takes its data-loader workers with it; orphaned, they would hold the test's output pipes
            for child in multiprocessing.active_children():
                child.kill()
            os._exit(CRASH_CODE)


class CrashAfterCheckpointPlugin(BasePlugin):
    def post_trainer_create(self, cfg, trainer):
        step = os.environ.get(CRASH_ENV)
        if step:
            trainer.add_callback(_CrashAfterCheckpoint(int(step)))
