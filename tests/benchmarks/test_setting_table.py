"""benchmarks/setting_table.py: a row's differences and 95% t-intervals worked out by hand on a tiny results folder,
and the tables in docs/results.md and the README are exactly what the script draws from the committed results
(`--update` puts them there)."""

import json
from pathlib import Path

import pytest
from conftest import load_benchmark

ROOT = Path(__file__).resolve().parents[2]
setting_table = load_benchmark("setting_table")


def _store(root: Path, arm: str, alpha: float, seed: int, ce: float, rare_ce: float, rouge: float) -> None:
    folder = root / "toy" / arm / f"seed-{seed}"
    folder.mkdir(parents=True)
    options = {"min_weight": "1"} if alpha else {}
    result = {
        "arm": arm, "alpha": alpha, "warmup_steps": 0, "exempt": alpha > 0, "options": options, "seed": seed,
        "prompts": 4, "settings": {"max_new_tokens": 8, "temperature": 0.7, "top_p": 0.95},
        "generation": {"greedy": {"rouge_l": rouge, "hit_token_limit": 0.05}}, "references": {}, "ranks": {},
        "validation": {"ce": ce, "pdl": 3.0, "pdl_alpha": 0.5, "rows": 4,
                       "ce_by_bucket": [{"bucket": "1-2", "tokens": 5, "ce": rare_ce}]},
        "time": {"cpu_s": 1.0, "wall_s": 1.0}, "samples": [],
    }
    (folder / "results.json").write_text(json.dumps(result))
    (folder / "train.json").write_text(json.dumps({"log_history": [], "global_step": 4, "cpu_s": 1.0, "wall_s": 1.0}))


def test_a_row_by_hand(tmp_path):
    for seed, (ce, arm_ce, arm_rare, arm_rouge) in enumerate([(2.0, 2.1, 2.8, 0.21), (2.2, 2.4, 2.6, 0.23)]):
        _store(tmp_path, "alpha-0", 0.0, seed, ce, 3.0, 0.20)
        _store(tmp_path, "alpha-0.5-exempt-min_weight-1", 0.5, seed, arm_ce, arm_rare, arm_rouge)
    _store(tmp_path, "alpha-0", 0.0, 2, 2.1, 3.0, 0.20)  # a CE seed the arm lacks: not paired
    rows = setting_table.task_rows("toy", setting_table.load_runs(tmp_path / "toy"))
    # differences over seeds 0, 1; half width t(0.975; 1) * sd / sqrt(2) = 12.7062 * sd / 1.41421:
    # val CE 0.1, 0.2: mean 0.15, sd 0.070711 -> 0.63531; CE seen 1-2 times -0.2, -0.4: mean -0.3, sd 0.141421 ->
    # 1.27062; ROUGE-L 0.01, 0.03: mean 0.02, sd 0.014142 -> 0.127062; at the limit 0, 0: the point; end of reply
    # not recorded; no interval excludes 0 and no specificity is recorded: neither
    assert rows == {"alpha 0.5 + exemption, min_weight 1": (
        "| alpha 0.5 + exemption, min_weight 1 | toy | 0, 1 | +0.150 [-0.485, +0.785] | -0.300 [-1.571, +0.971] | "
        "+0.020 [-0.107, +0.147] |  | +0.000 [+0.000, +0.000] | - | neither |")}


def test_the_tables_in_docs_and_readme_are_drawn_from_the_committed_results():
    drawn = setting_table.table(ROOT / "docs" / "results" / "study2", ["dialogue", "summarization", "code"])
    for document in (ROOT / "docs" / "results.md", ROOT / "README.md"):
        assert drawn in document.read_text(), f"redraw it: python benchmarks/setting_table.py ... --update {document}"


def test_update_replaces_exactly_the_drawn_table_and_refuses_an_ambiguous_file(tmp_path):
    replace_table = load_benchmark("_common").replace_table

    old = setting_table.HEAD + "\n| A | toy | 0 | +0.1 |\n| B | toy | 0 | +0.2 |\n"
    document = tmp_path / "doc.md"
    document.write_text("# title\n\ntext before\n" + old + "\ntext after\n| another | table |\n")
    new = setting_table.HEAD + "\n| A | toy | 0, 1 | +0.3 [-0.1, +0.7] |\n"
    assert replace_table(document.read_text(), new) == (
        "# title\n\ntext before\n" + new + "\ntext after\n| another | table |\n")
    with pytest.raises(SystemExit, match="found 2"):  # two copies: which one is meant is unknowable
        replace_table(old + "\n" + old, new)
    with pytest.raises(SystemExit, match="found 0"):
        replace_table("# nothing drawn here yet\n", new)
