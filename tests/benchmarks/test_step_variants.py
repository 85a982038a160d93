"""The options rows of benchmarks/train_step.py and axolotl_step.py (`--variants`): the paired timing loop, the ratio
table, the prior table the `prior` option reads, and the benchmark's own step on a PDL trainer with each option (a
tiny model: the real benchmark runs SmolLM2-135M and takes minutes)."""

import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import PROMPT_COMPLETION, cpu_args, load_benchmark

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import _variants

sys.path.remove(str(BENCHMARKS))


def test_parse_options():
    assert _variants.parse_options("") == [] and _variants.parse_options(None) == []
    assert _variants.parse_options("all") == ["floor", "ce_mix", "prior"]
    assert _variants.parse_options("prior, floor") == ["prior", "floor"]
    with pytest.raises(SystemExit, match="unknown"):
        _variants.parse_options("floor,cap")


def test_option_settings_are_valid_pdl_settings(tmp_path):
    from pdl_plugin import PDLSettings

    plain = {"pdl_exempt_special_tokens": False, "pdl_min_weight": 0, "pdl_ce_mix": 0.0}  # equation (3)
    assert _variants.option_settings("floor", tmp_path) == {**plain, "pdl_min_weight": 1.0}
    assert _variants.option_settings("ce_mix", tmp_path) == {**plain, "pdl_ce_mix": 0.5}
    assert _variants.option_settings("prior", tmp_path) == {
        **plain, "pdl_prior_mix": 0.5, "pdl_prior_path": str(tmp_path / _variants.PRIOR_FILENAME)}
    for name in _variants.OPTIONS:
        PDLSettings(**_variants.option_settings(name, tmp_path))


def test_paired_times_pairs_adjacent_steps_and_alternates_the_order():
    calls, clock = [], iter(range(1, 1000))

    def step(variant, round_):
        calls.append((variant, round_))
        return float(next(clock))

    pairs = _variants.paired_times(step, "pdl", ["a", "b"], rounds=3)
    assert [v for v, _ in calls] == ["pdl", "a", "b", "pdl", "a", "pdl", "pdl", "b", "pdl", "a", "b", "pdl"]
    assert [r for _, r in calls] == [0] * 4 + [1] * 4 + [2] * 4
    # each pair is (reference's seconds, the option's), taken from two adjacent steps
    assert pairs == {"a": [(1.0, 2.0), (6.0, 5.0), (9.0, 10.0)], "b": [(4.0, 3.0), (7.0, 8.0), (12.0, 11.0)]}


def test_ratios_on_each_clock():
    pairs = [((2.0, 1.0), (3.0, 1.5)), ((4.0, 2.0), (2.0, 2.0))]  # (reference (wall, CPU), other (wall, CPU))
    assert _variants.ratios(pairs, "wall") == [1.5, 0.5]
    assert _variants.ratios(pairs, "CPU") == [1.5, 1.0]
    assert _variants.ratios(pairs, "wall", invert=True) == [2 / 3, 2.0]


def test_options_table_ratios_against_plain_pdl_and_targets():
    # (plain PDL's (wall, CPU), the option's (wall, CPU)) per pair
    times = {"floor": [((1.0, 1.0), (1.01, 1.0)), ((1.0, 1.0), (1.0, 1.0)), ((2.0, 1.0), (2.0, 1.0))],
             "ce_mix": [((1.0, 1.0), (1.1, 1.0)), ((1.0, 1.0), (1.05, 1.01)), ((1.0, 1.0), (1.0, 1.0))]}
    memory = {"peak memory (process)": {"pdl": [100.0, 100.0], "floor": [101.0, 100.0], "ce_mix": [100.0, 100.0]},
              "steps' peak": {"pdl": [50.0, 50.0], "floor": [60.0, 60.0], "ce_mix": [50.0, 50.0]}}
    header, rule, floor, ce_mix = _variants.options_table(times, memory)
    assert header.split("|")[1:-1] == [" option vs plain PDL ", " step time, wall (n) ", " step time, CPU ",
                                       " peak memory (process) ", " steps' peak ", " targets met (wall, CPU, memory) "]
    assert rule.count("---") == 6
    # floor: wall 1.000, CPU 1.000, process memory 1.005: targets met (the steps' peak, 1.2, is reported, not judged)
    assert floor == ("| floor | 1.000 (1.000, 1.010) (n=3) | 1.000 (1.000, 1.000) | 1.005 (1.000, 1.010) "
                     "| 1.200 (1.200, 1.200) | yes, yes, yes |")
    assert ce_mix.startswith("| ce_mix | 1.050 (1.000, 1.100) (n=3) | 1.000 (1.000, 1.010) |")
    assert ce_mix.endswith("| no, yes, yes |")
    unmeasured = _variants.options_table({"floor": times["floor"]}, {"peak memory (process)": {}})[2]
    assert unmeasured.endswith("| not measured | yes, yes, - |")


def test_engine_times_cover_every_engine_and_the_line_compares_to_plain_pdl():
    from pdl_plugin import FrequencyTable, PDLEngine, PDLSettings

    table = FrequencyTable(torch.tensor([5, 3, 2, 0]), "fp", "completion_only", "data")
    engines = {"pdl": PDLEngine(PDLSettings(**_variants.PLAIN), table, host="test"),
               "ce_mix": PDLEngine(PDLSettings(**_variants.option_settings("ce_mix", "unused")), table, host="test")}
    labels = [torch.tensor([[-100, 0, 1, 2, -100]]), torch.tensor([[1, 1, -100, 0, 2]])]
    seconds = _variants.engine_times(engines, labels, repeats=3)
    assert set(seconds) == {"pdl", "ce_mix"} and all(value >= 0 for value in seconds.values())
    line = _variants.engine_line({"pdl": 100e-6, "ce_mix": 150e-6}, 1.0)
    assert line.endswith("median CPU us: pdl 100, ce_mix 150 (+0.0050% of a PDL step)")


def test_prior_table_loads_for_the_tokenizer_and_mixes(tmp_path, tokenizer):
    from pdl_plugin import FrequencyTable, PDLSettings
    from pdl_plugin.frequency import tokenizer_fingerprint
    from pdl_plugin.run_weights import load_prior

    ids = tokenizer("def f(x):\n    return x + 1\n")["input_ids"]
    path = _variants.write_prior(tmp_path, tokenizer, len(tokenizer), ids + [-100])
    assert path == tmp_path / _variants.PRIOR_FILENAME
    settings = PDLSettings(**_variants.option_settings("prior", tmp_path))
    prior = load_prior(settings, tokenizer_fingerprint(tokenizer), len(tokenizer))
    assert prior.kind == "all_tokens" and prior.total == len(ids)
    assert prior.counts.tolist() == torch.bincount(torch.tensor(ids), minlength=len(tokenizer)).tolist()
    assert isinstance(FrequencyTable.load(path), FrequencyTable)


@pytest.mark.parametrize("option", [None, *_variants.OPTIONS])
def test_benchmark_step_runs_every_option(tmp_path, tokenizer, tiny_model, option):
    """train_step.py's own `step` (denominator, training_step, optimizer) on PDLSFTTrainer with each option."""
    pytest.importorskip("trl")
    from datasets import Dataset

    from pdl_plugin import PDLSFTTrainer

    bench = load_benchmark("train_step")
    options = {} if option is None else _variants.option_settings(option, tmp_path)
    if option == "prior":
        text = " ".join(PROMPT_COMPLETION["prompt"] + PROMPT_COMPLETION["completion"])
        _variants.write_prior(tmp_path, tokenizer, len(tokenizer), tokenizer(text)["input_ids"])
    trainer = PDLSFTTrainer(tiny_model, cpu_args(tmp_path, loss_type="pdl", **options),
                            Dataset.from_dict(PROMPT_COMPLETION), processing_class=tokenizer)
    trainer.create_optimizer()
    batch = next(iter(trainer.get_train_dataloader()))
    wall, cpu = bench.step(trainer, batch)
    assert wall > 0 and cpu > 0
    assert all(p.grad is None for p in trainer.model.parameters())  # the optimizer stepped and zero_grad ran
    nll, weight, tokens = trainer.pdl_engine._totals["train"][:3].tolist()
    assert tokens > 0 and math.isfinite(nll) and weight > 0
