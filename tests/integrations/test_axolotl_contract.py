"""The PDL contract (tests/contract/cases.py), Axolotl half: real `axolotl train` runs on CPU for the cases that
tests/integrations/test_axolotl_train.py does not cover, each against an independent computation (a fresh
transformers + peft model from the recorded LoRA weights, float64, the formula written out; or the uninterrupted run).

Runs only where Axolotl is installed (`.venv-axolotl`, `.ci/axolotl`); skipped elsewhere. Seven `axolotl train`
launches (SmolLM2-135M, LoRA r=8), most of whose time is start-up: one uninterrupted 4-step run of 2 x 2 micro-batches
with an alpha warm-up (checked by the warm-up and resume cases), the same run crashed after checkpoint-2, two refused
resumes, the resume, one 4 x 1 step and one packed 2 x 2 step.

Gradients are compared with a float64 recomputation, each sequence scored alone: a float32 one on a padded batch is
itself ~3e-5 off the float64 gradient (largest element), while Axolotl's first-step gradient is within ~4e-6 of it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("axolotl")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from contract.cases import missing_tests  # noqa: E402

from .axolotl_helpers import (  # noqa: E402
    IGNORE,
    REPO,
    count_labels_by_hand,
    load_record,
    lora_model,
    reference_weights,
    reference_window,
    run_axolotl,
    short_config,
    step_logs,
)

ALPHA, EPSILON = 0.5, 1.0e-6
CRASH_PLUGIN = "contract.axolotl_plugins.CrashAfterCheckpointPlugin"
CRASH_ENV = "PDL_CONTRACT_CRASH_AFTER_STEP"


def test_every_contract_case_has_an_axolotl_test():
    assert missing_tests("axolotl") == []


# ---- running -----------------------------------------------------------------------------------------------------


def run(tmp_path: Path, cfg: dict, *, crash_after: int | None = None, check: bool = True, timeout: int = 600):
    """`axolotl train` with tests/ on PYTHONPATH (for the crash plugin), optionally crashing after a checkpoint."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", str(REPO / "tests"))
        if crash_after is not None:
            patch.setenv(CRASH_ENV, str(crash_after))
        else:
            patch.delenv(CRASH_ENV, raising=False)
        return run_axolotl(tmp_path, cfg, check=check, timeout=timeout)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("contract-prepared")


def table_counts(cfg: dict) -> torch.Tensor:
    from pdl_plugin.frequency import FrequencyTable

    return FrequencyTable.load(Path(cfg["output_dir"])).counts


def rows(batches: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (input_ids, labels) of every row of padded micro-batches, without their padding."""
    return [(ids[mask.bool()], labels[mask.bool()])
            for b in batches for ids, labels, mask in zip(b["input_ids"], b["labels"], b["attention_mask"])]


def float64_step(model, sequences, weights: torch.Tensor) -> dict:
    """PDL of one optimizer step over `sequences`, each scored alone by `model` in float64 (no padding, no packing):
    loss, ce_loss, mean weight, weight sum, and the gradients of the loss (trainable parameters)."""
    model = model.double()
    model.zero_grad()
    num = den = nll_sum = 0.0
    tokens = 0
    for ids, labels in sequences:
        logits = model(input_ids=ids[None]).logits[0, :-1]
        targets = labels[1:]
        trained = targets != IGNORE
        nll = F.cross_entropy(logits[trained], targets[trained], reduction="none")
        w = weights[targets[trained]]
        num, den = num + (w * nll).sum(), den + w.sum()
        nll_sum, tokens = nll_sum + float(nll.detach().sum()), tokens + int(trained.sum())
    loss = num / den
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return {"loss": loss.item(), "ce_loss": nll_sum / tokens, "mean_weight": den.item() / tokens,
            "weight_sum": den.item(), "grads": grads}


def relative_error(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> float:
    """|got - expected| / |expected| over all trainable parameters together (as the TRL tests measure it)."""
    assert set(got) == set(expected) and expected
    diff = sum(float((got[k].double() - expected[k]).pow(2).sum()) for k in expected)
    return (diff / sum(float(expected[k].pow(2).sum()) for k in expected)) ** 0.5


def warmup_config(tmp_path: Path, prepared: Path, **overrides) -> dict:
    """alpha 0.5 reached over 2 warm-up steps; 4 steps of 2 x 2 micro-batches, a checkpoint every 2 steps."""
    settings = dict(pdl_alpha=ALPHA, pdl_alpha_warmup_steps=2, max_steps=4, save_strategy="steps", save_steps=2)
    cfg = short_config(tmp_path, prepared, **{**settings, **overrides})
    cfg["plugins"] = [*cfg["plugins"], CRASH_PLUGIN]
    return cfg


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, prepared):
    tmp = tmp_path_factory.mktemp("warmup-uninterrupted")
    cfg = warmup_config(tmp, prepared)
    run(tmp, cfg)
    return cfg, load_record(cfg)


# ---- warm-up ------------------------------------------------------------------------------------------------------


def test_warmup_schedule_each_step_equals_independent_pdl_at_its_alpha(uninterrupted, smol_path):
    """pdl_alpha_warmup_steps 2: pdl_alpha logged 0, a/2, a, a; the first step's loss is its ce_loss; every step's
    loss, ce_loss and mean weight are those of a fresh model at that step's alpha (eq. (3) from the saved counts)."""
    cfg, record = uninterrupted
    counts = table_counts(cfg)
    logs = step_logs(record)
    assert [entry["pdl_alpha"] for entry in logs] == [0.0, ALPHA / 2, ALPHA, ALPHA]
    assert math.isclose(logs[0]["loss"], logs[0]["ce_loss"], rel_tol=1e-6)
    assert math.isclose(logs[0]["pdl_mean_weight"], 1.0, rel_tol=1e-6)
    report = []
    for log, window, params, alpha in zip(logs, record["windows"], record["params"], (0.0, ALPHA / 2, ALPHA, ALPHA)):
        expected = reference_window(lora_model(smol_path, params, cfg), window["batches"],
                                    reference_weights(counts, alpha, EPSILON))
        report.append((alpha, log["loss"], expected["loss"], log["ce_loss"], expected["ce_loss"]))
        assert math.isclose(log["loss"], expected["loss"], rel_tol=1e-5), report
        assert math.isclose(log["ce_loss"], expected["ce_loss"], rel_tol=1e-5), report
        assert math.isclose(log["pdl_mean_weight"], expected["mean_weight"], rel_tol=1e-5), report
        assert math.isclose(window["num_items_in_batch"], expected["weight_sum"], rel_tol=1e-6), report
    print("\nalpha, logged PDL, independent PDL, logged CE, independent CE:", *report, sep="\n")


# ---- resume -------------------------------------------------------------------------------------------------------


def trainer_state_losses(checkpoint: Path) -> dict[int, dict]:
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return {entry["step"]: entry for entry in state["log_history"] if "loss" in entry}


@pytest.fixture(scope="module")
def crashed(tmp_path_factory, prepared):
    """The warm-up run, killed right after writing checkpoint-2 (no clean-up, no final save)."""
    tmp = tmp_path_factory.mktemp("warmup-crashed")
    cfg = warmup_config(tmp, prepared)
    code, log = run(tmp, cfg, crash_after=2, check=False, timeout=400)
    assert code != 0 and "crashing after checkpoint-2" in log, log[-3000:]
    out = Path(cfg["output_dir"])
    assert (out / "checkpoint-2" / "trainer_state.json").is_file() and not (out / "checkpoint-4").exists()
    return tmp, cfg


def snapshot(out: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `out`: its bytes and modification time (a re-save of the same bytes still counts)."""
    return {str(p.relative_to(out)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(out.rglob("*"))
            if p.is_file()}


def assert_unchanged(out: Path, before: dict[str, tuple[bytes, int]], what: str) -> None:
    """Every file of the interrupted run is as it was, byte for byte, except Axolotl's `debug.log`, which its CLI
    opens before any plugin runs: it may only have grown. (The plugin refuses the resume in `post_trainer_create`,
    before Axolotl re-saves `adapter_config.json` and its other configs into output_dir.)"""
    after = snapshot(out)
    assert sorted(after) == sorted(before), f"{what}: files added or removed"
    changed = sorted(name for name in before if after[name] != before[name])  # bytes or modification time
    for name in changed:
        if name == "debug.log":
            assert after[name][0].startswith(before[name][0]), f"{what}: debug.log rewritten"
        else:
            raise AssertionError(f"{what}: the refused resume changed {name} of the interrupted run")


def test_resume_with_other_data_or_alpha_is_refused_and_changes_no_file(crashed, prepared):
    tmp, cfg = crashed
    out = Path(cfg["output_dir"])
    checkpoint = out / "checkpoint-2"
    before = snapshot(out)
    assert "checkpoint-2/pdl_frequency_table.safetensors" in before and "checkpoint-2/pdl_config.json" in before
    other_data = {**cfg, "resume_from_checkpoint": str(checkpoint),
                  "datasets": [{**cfg["datasets"][0], "split": "validation"}]}
    other_alpha = {**cfg, "resume_from_checkpoint": str(checkpoint), "pdl_alpha": 0.3}
    for name, changed, message in [
        ("other-data", other_data, "the frequency table (the training data changed) differ"),
        ("other-alpha", other_alpha, "the settings pdl_alpha (0.5 -> 0.3) differ"),
    ]:
        code, log = run(tmp / name, changed, check=False)
        assert code != 0, f"{name}: resumed although {message}"
        assert f"Cannot resume from {checkpoint}: {message}" in log, log[-3000:]
        assert_unchanged(out, before, name)


def test_resume_after_a_crash_equals_the_uninterrupted_run(crashed, uninterrupted):
    """Steps 1-2 as the crashed run logged them (its checkpoint's trainer_state.json), steps 3-4 from the resumed
    run (Axolotl `resume_from_checkpoint`): loss, ce_loss, pdl_mean_weight and pdl_alpha of the uninterrupted run."""
    tmp, cfg = crashed
    checkpoint = Path(cfg["output_dir"]) / "checkpoint-2"
    resumed_cfg = {**cfg, "resume_from_checkpoint": str(checkpoint)}
    run(tmp / "resumed", resumed_cfg)
    resumed = {entry["step"]: entry for entry in step_logs(load_record(resumed_cfg))}
    got = {**trainer_state_losses(checkpoint), **resumed}
    expected = {entry["step"]: entry for entry in step_logs(uninterrupted[1])}
    assert sorted(resumed) == [3, 4] and sorted(got) == sorted(expected) == [1, 2, 3, 4]
    report = [(step, got[step]["loss"], expected[step]["loss"]) for step in sorted(expected)]
    print("\nstep, crashed + resumed loss, uninterrupted loss:", *report, sep="\n")
    for step in expected:
        for key in ("loss", "ce_loss", "pdl_mean_weight"):
            assert math.isclose(got[step][key], expected[step][key], rel_tol=1e-5), (step, key, report)
        assert got[step]["pdl_alpha"] == expected[step]["pdl_alpha"], step
    assert Path(cfg["output_dir"], "checkpoint-4", "pdl_frequency_table.safetensors").is_file()


# ---- gradient accumulation ----------------------------------------------------------------------------------------


def test_gradient_accumulation_4x1_equals_one_batch_of_4(tmp_path, prepared, smol_path):
    """4 micro-batches of 1, one optimizer step at alpha 0.5: the accumulated gradient is the gradient of the formula
    over those 4 rows as one batch, on a fresh float64 model (relative error <= 1e-5); the logged loss and the
    Trainer's denominator are theirs. (The first step's LoRA B is 0, so the gradient is B's: an exact check. Later
    steps are limited by float32 itself: at step 3 of the warm-up run an independent float32 recomputation is 3.7e-5
    off the float64 gradient, and Axolotl's 2.9e-5.)"""
    cfg = short_config(tmp_path, prepared, micro_batch_size=1, gradient_accumulation_steps=4, max_steps=1)
    run(tmp_path, cfg)
    record = load_record(cfg)
    (window,), (log,) = record["windows"], step_logs(record)
    assert [len(b["input_ids"]) for b in window["batches"]] == [1, 1, 1, 1]
    weights = reference_weights(table_counts(cfg), ALPHA, EPSILON)
    expected = float64_step(lora_model(smol_path, record["params"][0], cfg), rows(window["batches"]), weights)
    error = relative_error(record["grads"][0], expected["grads"])
    print(f"\n4x1: logged PDL {log['loss']!r}, independent {expected['loss']!r}; relative gradient error against one "
          f"batch of 4: {error:.2e}")
    assert math.isclose(log["loss"], expected["loss"], rel_tol=1e-5)
    assert math.isclose(window["num_items_in_batch"], expected["weight_sum"], rel_tol=1e-6)
    assert error <= 1e-5


# ---- sample packing -----------------------------------------------------------------------------------------------


def unpack(batches: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The sequences of packed rows, each alone: a new sequence starts where position_ids restart at 0. Padding
    (a tail with no trained label) is dropped."""
    sequences = []
    for batch in batches:
        for ids, labels, positions in zip(batch["input_ids"], batch["labels"], batch["position_ids"]):
            starts = (positions == 0).nonzero().flatten().tolist() + [len(positions)]
            for start, end in zip(starts, starts[1:]):
                if (labels[start + 1:end] != IGNORE).any():
                    sequences.append((ids[start:end], labels[start:end]))
    return sequences


def test_sample_packing_equals_the_same_tokens_unpacked(tmp_path, smol_path):
    """`sample_packing: true` with `attn_implementation: sdpa` (Axolotl then drops the attention mask and transformers
    isolates the packed sequences by their position_ids; flash-attn is not needed on CPU): the logged loss, ce_loss,
    mean weight and accumulated gradient of a 2 x 2 step of packed rows are those of its sequences scored one by one
    on a fresh model."""
    from datasets import load_from_disk

    prepared = tmp_path / "prepared"  # its own, so that the hand count below reads this run's prepared rows
    cfg = short_config(tmp_path, prepared, sample_packing=True, attn_implementation="sdpa", max_steps=1,
                       sequence_len=128)
    run(tmp_path, cfg)
    record = load_record(cfg)
    (window,) = record["windows"]
    assert all("attention_mask" not in b and "position_ids" in b for b in window["batches"])
    sequences = unpack(window["batches"])
    assert len(sequences) > 2 * 2, "not packed: no more sequences than rows"

    (folder,) = [p for p in prepared.iterdir() if p.is_dir()]
    counts = table_counts(cfg)
    by_hand = count_labels_by_hand(load_from_disk(str(folder))["labels"])
    assert {i: int(c) for i, c in enumerate(counts.tolist()) if c} == by_hand  # the unpacked rows' trained tokens

    weights = reference_weights(counts, ALPHA, EPSILON)
    model = lora_model(smol_path, record["params"][0], cfg)
    # The check has teeth: the same packed rows with attention across their sequences give another loss
    leaky = reference_window(model, [{**b, "attention_mask": torch.ones_like(b["input_ids"])}
                                     for b in window["batches"]], weights)
    expected = float64_step(model, sequences, weights)
    error = relative_error(record["grads"][0], expected["grads"])
    (log,) = step_logs(record)
    print(f"\npacked 2x2 ({len(sequences)} sequences): logged PDL {log['loss']!r}, unpacked independent "
          f"{expected['loss']!r}, attending across sequences {leaky['loss']!r}; relative gradient error {error:.2e}")
    assert math.isclose(log["loss"], expected["loss"], rel_tol=1e-5)
    assert math.isclose(log["ce_loss"], expected["ce_loss"], rel_tol=1e-5)
    assert math.isclose(log["pdl_mean_weight"], expected["mean_weight"], rel_tol=1e-5)
    assert math.isclose(window["num_items_in_batch"], expected["weight_sum"], rel_tol=1e-6)
    assert error <= 1e-5
    assert not math.isclose(leaky["loss"], expected["loss"], rel_tol=1e-3)
