"""What an evaluation generates and how it scores (`pdl-eval` and `pdl-compare` options), declared and checked once
here: the commands take their defaults from these fields, and a bad value is refused when the settings are made."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import PDLConfigError

TASK_TYPES = ("auto", "code", "text")


@dataclass
class EvalSettings:
    max_prompts: int = 48
    max_new_tokens: int = 64
    batch_size: int = 16
    seed: int = 0
    temperature: float = 0.7
    top_p: float = 0.95
    sampled: bool = True  # also one seeded sampled run beside greedy
    reference_alpha: float | None = None  # alpha of the reported validation PDL; default: the recipe's pdl_alpha
    rare_fraction: float = 0.2
    repetition_n: int = 3
    test_timeout: float = 10.0
    max_prompt_tokens: int | None = None
    task_type: str = "auto"  # 'code' (stop sequences, parse rate), 'text', or 'auto' (see `resolve_task_type`)

    def __post_init__(self):
        for name, flag in (("max_prompts", "--max_prompts"), ("max_new_tokens", "--max_new_tokens"),
                           ("batch_size", "--eval_batch_size")):
            if getattr(self, name) < 1:
                raise PDLConfigError(f"{flag} must be >= 1, got {getattr(self, name)}.")
        if not self.temperature > 0 or not 0 < self.top_p <= 1:
            raise PDLConfigError("--temperature must be > 0 and --top_p in (0, 1].")
        alpha = self.reference_alpha
        if alpha is not None and not (math.isfinite(alpha) and alpha >= 0):
            raise PDLConfigError(f"--reference_alpha must be a finite number >= 0 (the alpha of the reported "
                                 f"validation PDL; leave it out for the recipe's), got {alpha}.")
        if self.task_type not in TASK_TYPES:
            raise PDLConfigError(f"--task_type must be one of {', '.join(TASK_TYPES)}, got {self.task_type!r}.")
