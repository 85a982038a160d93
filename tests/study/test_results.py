"""Reading a study's runs back: end-of-reply figures measured after a run's evaluation (`end_of_reply.json` beside
its results) count as the run's own, a run's recorded figures win over a side file, and a broken side file is an
error that names it."""

import json

import pytest

from pdl_plugin import PDLConfigError
from pdl_plugin.study.results import load_runs


def _store(folder, end_of_reply=None, side=None):
    folder.mkdir(parents=True)
    validation = {"ce": 2.0, "pdl": 3.0, "pdl_alpha": 0.5, "rows": 4,
                  **({"end_of_reply": end_of_reply} if end_of_reply else {})}
    result = {"arm": "alpha-0", "alpha": 0.0, "warmup_steps": 0, "seed": 0, "prompts": 4,
              "settings": {"max_new_tokens": 8, "temperature": 0.7, "top_p": 0.95}, "generation": {},
              "references": {}, "validation": validation, "ranks": {}, "time": {"cpu_s": 1.0, "wall_s": 1.0}}
    (folder / "results.json").write_text(json.dumps(result))
    (folder / "train.json").write_text(json.dumps({"log_history": [], "global_step": 4, "cpu_s": 1.0, "wall_s": 1.0}))
    if side is not None:
        (folder / "end_of_reply.json").write_text(side if isinstance(side, str) else json.dumps(side))


def test_side_file_fills_a_run_that_did_not_record_it(tmp_path):
    _store(tmp_path / "alpha-0" / "seed-0", side={"source": "re-run", "ce": 0.86, "probability": 0.836})
    [run] = load_runs(tmp_path)["alpha-0"]
    assert run["validation"]["end_of_reply"]["probability"] == 0.836


def test_the_runs_own_record_wins(tmp_path):
    _store(tmp_path / "alpha-0" / "seed-0", end_of_reply={"ce": 0.5, "probability": 0.6},
           side={"ce": 0.86, "probability": 0.836})
    [run] = load_runs(tmp_path)["alpha-0"]
    assert run["validation"]["end_of_reply"]["probability"] == 0.6


@pytest.mark.parametrize("side", ["{not json", "[1, 2]"])
def test_a_broken_side_file_is_named(tmp_path, side):
    _store(tmp_path / "alpha-0" / "seed-0", side=side)
    with pytest.raises(PDLConfigError, match="end_of_reply.json"):
        load_runs(tmp_path)
