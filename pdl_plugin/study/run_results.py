"""The shape of a finished run's results (`results.json`, `train.json`), as `pdl-compare` writes them, checked before
a report reads them: a file of another shape (another tool's, an older format, edited by hand) is one clear error
that names the file and what it lacks, not a `KeyError` deep in the report."""

from __future__ import annotations

from numbers import Real
from pathlib import Path

from ..errors import PDLConfigError

# key -> the type its value must have (a tuple: any of them)
RESULT_SHAPE = {"arm": str, "alpha": Real, "warmup_steps": int, "seed": int, "prompts": int, "settings": dict,
                "generation": dict, "references": dict, "validation": dict, "ranks": dict, "time": dict}
NESTED_SHAPE = {"validation": {"ce": Real, "pdl": Real, "pdl_alpha": Real, "rows": int},
                "time": {"cpu_s": Real, "wall_s": Real},
                "settings": {"max_new_tokens": int, "temperature": Real, "top_p": Real}}
TRAIN_SHAPE = {"log_history": list, "global_step": int, "cpu_s": Real, "wall_s": Real}


def shape_problems(data, shape: dict, where: str = "") -> list[str]:
    """What of `shape` `data` lacks or has of another type, in words (empty when it fits)."""
    if not isinstance(data, dict):
        return [f"{where or 'the file'} is a JSON {type(data).__name__}, not an object"]
    problems = []
    for key, kind in shape.items():
        if key not in data:
            problems.append(f"no `{where}{key}`")
        elif not isinstance(data[key], kind) or isinstance(data[key], bool):
            problems.append(f"`{where}{key}` is a {type(data[key]).__name__}")
    return problems


def check_run_results(folder: Path, result, train) -> None:
    """Refuse, naming the file and its first problems, a run's results of another shape than pdl-compare writes."""
    problems = shape_problems(result, RESULT_SHAPE)
    if not problems:
        for key, shape in NESTED_SHAPE.items():
            problems += shape_problems(result[key], shape, f"{key}.")
        problems += [f"`generation.{mode}` is a {type(scored).__name__}" for mode, scored in result["generation"].items()
                     if not isinstance(scored, dict)]
    name = "results.json"
    if not problems:
        problems, name = shape_problems(train, TRAIN_SHAPE), "train.json"
    if problems:
        raise PDLConfigError(
            f"{Path(folder) / name} is not the shape pdl-compare writes ({'; '.join(problems[:4])}). Restore the "
            "file pdl-compare wrote, or delete the run's folder to redo the run."
        )
