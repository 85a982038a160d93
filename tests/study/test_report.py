"""pdl-compare's statistics and report from stored results (no model): paired t-intervals, frequency buckets, the CE
arm's flattening check, and clear errors for incomplete run folders. Numbers are worked out by hand."""

import json
import math

import pytest

from pdl_plugin import PDLConfigError
from pdl_plugin.study.report import write_report
from pdl_plugin.study.results import load_runs
from pdl_plugin.study.sections import paired_report
from pdl_plugin.study.statistics import bucket_differences, flattening, paired_differences, t_interval, t_quantile_975


def test_t_interval_by_hand():
    # mean 2, sample sd 1, t(0.975; 2) = 4.3027 (table) -> half width 4.3027 / sqrt(3) = 2.48416
    got = t_interval([1.0, 2.0, 3.0])
    assert got["n"] == 3 and got["mean"] == 2.0 and got["sd"] == pytest.approx(1.0)
    assert got["low"] == pytest.approx(2 - 2.48416, abs=1e-5) and got["high"] == pytest.approx(2 + 2.48416, abs=1e-5)
    one = t_interval([5.0, float("nan")])
    assert one["n"] == 1 and one["mean"] == 5.0 and math.isnan(one["low"])


def test_t_quantiles_beyond_the_table_match_published_values():
    # t(0.975; df) from standard tables: 30 -> 2.0423, 40 -> 2.0211, 60 -> 2.0003, 120 -> 1.9799
    assert t_quantile_975(30) == pytest.approx(2.0423, abs=1e-4)
    for df, value in ((40, 2.0211), (60, 2.0003), (120, 1.9799)):
        assert t_quantile_975(df) == pytest.approx(value, abs=2e-4)


def test_paired_differences_use_common_seeds_only():
    got = paired_differences({0: 2.0, 1: 2.2, 2: 2.1}, {0: 2.1, 1: 2.5, 2: float("nan"), 3: 9.0})
    # seeds 0 and 1: differences 0.1 and 0.3, mean 0.2, sd 0.1414, half = 12.7062 * 0.1414 / sqrt(2) = 1.27062
    assert got["seeds"] == [0, 1] and got["differences"] == pytest.approx([0.1, 0.3])
    assert got["mean"] == pytest.approx(0.2) and got["high"] - got["mean"] == pytest.approx(1.27062, abs=1e-5)


def _history(points, global_step):
    return {"log_history": [{"step": s, "eval_loss": v + 1, "eval_ce_loss": v} for s, v in points]
            + [{"step": global_step, "loss": 1.0, "ce_loss": 1.0}], "global_step": global_step}


def test_flattening_over_the_last_quarter():
    flat = flattening({"train": _history([(10, 3.0), (20, 2.5), (30, 2.45), (40, 2.42)], 40)})
    # from step 30 (the last evaluation at or before 3/4 of 40) to step 40: (2.45 - 2.42) / 2.45 = 1.22%
    assert flat["available"] and (flat["from_step"], flat["to_step"]) == (30, 40)
    assert flat["improvement"] == pytest.approx(0.03 / 2.45) and flat["flattened"]
    falling = flattening({"train": _history([(10, 3.0), (20, 2.5), (30, 2.45), (40, 2.3)], 40)})
    assert falling["improvement"] == pytest.approx(0.15 / 2.45) and not falling["flattened"]
    uneven = flattening({"train": _history([(15, 3.0), (30, 2.0), (45, 1.99)], 50)})  # 3/4 of 50 = 37.5
    assert (uneven["from_step"], uneven["to_step"]) == (30, 45)
    assert not flattening({"train": _history([], 40)})["available"]
    assert not flattening({"train": _history([(40, 2.0)], 40)})["available"]


BUCKET_TOKENS = {"unseen": 3, "1-2": 5, "3-10": 10, "11-100": 30, ">100": 52}


def _result(alpha, seed, ce, buckets, rouge, warmup=0):
    return {
        "format": "pdl-eval/2", "arm": f"alpha-{alpha:g}" + (f"-warmup-{warmup}" if warmup else ""), "alpha": alpha,
        "warmup_steps": warmup, "seed": seed, "split": "test", "task_type": "text", "task_type_reason": "test",
        "prompts": 4, "settings": {"max_new_tokens": 8, "temperature": 0.7, "top_p": 0.95},
        "validation": {"ce": ce, "pdl": ce + 1, "pdl_alpha": 0.5, "pdl_unseen_weight": "rarest", "rows": 4,
                       "ce_by_bucket": [{"bucket": b, "tokens": n, "ce": v}
                                        for (b, n), v in zip(BUCKET_TOKENS.items(), buckets)]},
        "generation": {"greedy": {"rouge_l": rouge, "distinct_1": 0.5, "repetition_3": 0.1}},
        "references": {"distinct_1": 0.7}, "samples": [], "ranks": {"references": [1, 2, 0], "greedy": [1, 0, 3]},
        "time": {"cpu_s": 60.0, "wall_s": 90.0},
    }


def _store(folder, result, train):
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(result))
    (folder / "train.json").write_text(json.dumps(train))


def _study(root):
    """CE and alpha 0.5 on seeds 0-2. val CE: CE 2.0/2.1/2.2, alpha 0.5 2.1/2.22/2.31 (differences 0.10/0.12/0.11)."""
    train = {**_history([(10, 3.0), (20, 2.5), (30, 2.45), (40, 2.42)], 40), "cpu_s": 30.0, "wall_s": 40.0,
             "examples_seen": 160, "epoch": 2.0}
    ce, pdl = [2.0, 2.1, 2.2], [2.1, 2.22, 2.31]
    for seed in range(3):
        _store(root / "alpha-0" / f"seed-{seed}", _result(0.0, seed, ce[seed], [5, 4, 3, 2, 1], 0.2), train)
        arm = _result(0.5, seed, pdl[seed], [4.5, 4, 3, 2.1, 1.2], 0.2 + 0.01 * seed)
        _store(root / "alpha-0.5" / f"seed-{seed}", arm, train)


def test_paired_report_names_the_interval_and_the_verdict(tmp_path):
    _study(tmp_path)
    text = "\n".join(paired_report(load_runs(tmp_path)))
    # mean 0.11, sd 0.01, half width 4.3027 * 0.01 / sqrt(3) = 0.02484 -> [0.0852, 0.1348]: CE is lower, so worse
    assert ("| val CE | 2.1000 | s0: +0.1000, s1: +0.1200, s2: +0.1100 | +0.1100 | [+0.0852, +0.1348] | "
            "**worse than CE** |") in text
    # unseen bucket: 4.5 - 5 = -0.5 on every seed: sd 0, the interval is the point, better than CE
    assert "| val CE, tokens unseen in training | 5.0000 | s0: -0.5000, s1: -0.5000, s2: -0.5000 | -0.5000 |" in text
    # ROUGE-L differences 0, 0.01, 0.02: mean 0.01, sd 0.01 -> [-0.0148, +0.0348] contains 0
    assert ("| ROUGE-L (greedy) | 0.2000 | s0: +0.0000, s1: +0.0100, s2: +0.0200 | +0.0100 | [-0.0148, +0.0348] | "
            "no difference shown |") in text
    assert "Student's t over seeds" in text


def test_paired_report_takes_the_ce_mean_over_the_seeds_it_pairs(tmp_path):
    _study(tmp_path)
    for seed in (1, 2):  # alpha 0.5 finished on seed 0 only; CE has seeds 0-2 (val CE 2.0, 2.1, 2.2)
        for name in ("results.json", "train.json"):
            (tmp_path / "alpha-0.5" / f"seed-{seed}" / name).unlink()
    text = "\n".join(paired_report(load_runs(tmp_path)))
    # the CE mean beside the seed-0 difference is CE's seed-0 value, not the mean 2.1 over CE's three seeds
    assert "| val CE | 2.0000 | s0: +0.1000 | +0.1000 | - | too few seeds |" in text


def test_bucket_differences_pair_each_bucket_seed_by_seed(tmp_path):
    _study(tmp_path)
    # make the >100 bucket vary by seed: alpha 0.5 gives 1.2, 1.3, 1.1 against CE's 1.0 -> 0.2, 0.3, 0.1
    for seed, value in ((1, 1.3), (2, 1.1)):
        path = tmp_path / "alpha-0.5" / f"seed-{seed}" / "results.json"
        result = json.loads(path.read_text())
        result["validation"]["ce_by_bucket"][-1]["ce"] = value
        path.write_text(json.dumps(result))
    got = bucket_differences(load_runs(tmp_path))
    assert list(got) == ["alpha 0.5"]
    rows = {row["bucket"]: row for row in got["alpha 0.5"]}
    assert list(rows) == ["unseen", "1-2", "3-10", "11-100", ">100"] and rows["unseen"]["tokens"] == 3
    assert rows["unseen"]["differences"] == pytest.approx([-0.5] * 3) and rows["3-10"]["mean"] == pytest.approx(0.0)
    assert rows["11-100"]["mean"] == pytest.approx(0.1)
    # >100: differences 0.2, 0.3, 0.1: mean 0.2, sd 0.1, half width 4.3027 * 0.1 / sqrt(3) = 0.24842
    assert rows[">100"]["differences"] == pytest.approx([0.2, 0.3, 0.1])
    assert rows[">100"]["low"] == pytest.approx(0.2 - 0.24842, abs=1e-5)
    assert rows[">100"]["high"] == pytest.approx(0.2 + 0.24842, abs=1e-5)
    for seed in range(3):
        for name in ("results.json", "train.json"):
            (tmp_path / "alpha-0" / f"seed-{seed}" / name).unlink()
    assert bucket_differences(load_runs(tmp_path)) == {}  # no CE arm: nothing to pair with


def test_report_from_stored_results(tmp_path):
    _study(tmp_path / "results" / "toy")
    report = write_report("toy", tmp_path / "results" / "toy", tmp_path / "docs" / "toy.md", "pdl-compare ...")
    text = report.read_text()
    assert "the first 4 prompts of the `test` split" in text and "validation prompts" not in text
    assert "6 runs, 40 optimizer steps, 160 training examples seen (2.0 epochs) each" in text
    assert "| arm | seeds | unseen (3 tok) | 1-2 (5 tok) | 3-10 (10 tok) | 11-100 (30 tok) | >100 (52 tok) |" in text
    assert "| alpha 0.5 | 3 | 4.500 ± 0.000 | 4.000 ± 0.000 |" in text
    assert "| 0 | 4 | 2.4500 (step 30) | 2.4200 (step 40) | 1.22% | yes |" in text  # flattening of each CE seed
    assert "tokens the table never counted weighted as its rarest counted token" in text
    assert (tmp_path / "docs" / "toy-validation-curves.png").is_file()
    assert "![toy validation CE by frequency against CE](toy-bucket-differences.png)" in text
    assert (tmp_path / "docs" / "toy-bucket-differences.png").is_file()


def test_incomplete_run_folders_are_named(tmp_path):
    _study(tmp_path)
    (tmp_path / "alpha-1" / "seed-0").mkdir(parents=True)  # in progress: ignored
    assert set(load_runs(tmp_path)) == {"alpha-0", "alpha-0.5"}
    (tmp_path / "alpha-1" / "seed-0" / "done").write_text("ok\n")
    with pytest.raises(PDLConfigError, match=r"seed-0 is marked finished \(`done`\) but has no results.json"):
        load_runs(tmp_path)
    (tmp_path / "alpha-1" / "seed-0" / "done").unlink()
    (tmp_path / "alpha-0" / "seed-1" / "train.json").unlink()
    with pytest.raises(PDLConfigError, match="has results.json but no train.json"):
        load_runs(tmp_path)
    with pytest.raises(PDLConfigError, match="No finished run"):
        write_report("toy", tmp_path / "nothing", tmp_path / "r.md", "")


def test_runs_trained_on_different_data_are_not_paired(tmp_path):
    """One more training row reshuffles every batch: a report refuses to pair runs whose training tables differ, and
    pairs them when the tables agree."""
    from pdl_plugin.study.results import check_same_data

    table = {"total_tokens": 334870, "distinct": 14478, "masking": "completion_only", "rare_types": 4101}
    ce, arm = _result(0.0, 0, 2.0, [1] * 5, 0.3), _result(0.5, 0, 2.1, [1] * 5, 0.3)
    ce["table"], arm["table"] = dict(table), dict(table, data_fingerprint="abc")
    check_same_data({"alpha-0": [ce], "alpha-0.5": [arm]})  # the fingerprint is compared only where both have it
    arm["table"]["total_tokens"] = 335211
    with pytest.raises(PDLConfigError, match="alpha-0 seed 0 and alpha-0.5 seed 0 were trained on different data "
                                             r"\(total_tokens 334870 vs 335211\)"):
        check_same_data({"alpha-0": [ce], "alpha-0.5": [arm]})
