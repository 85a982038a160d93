"""The PDL contract (tests/contract/cases.py), Axolotl half: real `axolotl train` runs on CPU for the cases that
tests/integrations/test_axolotl_train.py does not cover, each against an independent computation (a fresh
transformers + peft model from the recorded LoRA weights, float64, the formula written out; or the uninterrupted run).

Runs only where Axolotl is installed (`.venv-axolotl`, `.ci/axolotl`); skipped elsewhere. Thirteen `axolotl train`
launches (SmolLM2-135M, LoRA r=8), most of whose time is start-up: one uninterrupted 4-step run of 2 x 2 micro-batches
with an alpha warm-up (checked by the warm-up and resume cases), the same run crashed after checkpoint-2, two refused
resumes, the resume, one 4 x 1 step and one packed 2 x 2 step; for the variants (pdl_min_weight, pdl_ce_mix, the
prior, the end-of-turn guard), one 4 x 1 step per option (the guard is read from their output), one packed 2 x 2 run
with all three options crashed after checkpoint-1 (the recorder keeps its step 1), and two refused resumes of it (the
changed settings in one, the changed prior table in the other).

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
KEEP_RECORD_ENV = "PDL_CONTRACT_CRASH_KEEPS_RECORD"


def test_every_contract_case_has_an_axolotl_test():
    assert missing_tests("axolotl") == []


# ---- running -----------------------------------------------------------------------------------------------------


def run(tmp_path: Path, cfg: dict, *, crash_after: int | None = None, keep_record: bool = False, check: bool = True,
        timeout: int = 600):
    """`axolotl train` with tests/ on PYTHONPATH (for the crash plugin), optionally crashing after a checkpoint (with
    `keep_record`, the recorder writes what it recorded before the crash)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", str(REPO / "tests"))
        if crash_after is not None:
            patch.setenv(CRASH_ENV, str(crash_after))
        else:
            patch.delenv(CRASH_ENV, raising=False)
        if keep_record:
            patch.setenv(KEEP_RECORD_ENV, "1")
        else:
            patch.delenv(KEEP_RECORD_ENV, raising=False)
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


def float64_step(model, sequences, weights: torch.Tensor, *, ce_mix: float = 0.0, marked: int | None = None) -> dict:
    """PDL of one optimizer step over `sequences`, each scored alone by `model` in float64 (no padding, no packing):
    loss, ce_loss, mean weight, weight sum, and the gradients of the loss (trainable parameters).

    With `ce_mix` lambda the loss is lambda * (sum nll / tokens) + (1 - lambda) * (sum w*nll / sum w), both over the
    whole step (`pdl_loss` is the second part). Also returned: every trained token's nll and target (to evaluate other
    weights on the same forward pass) and the share of the weight at the targets equal to `marked`."""
    model = model.double()
    model.zero_grad()
    num = den = nll_sum = 0.0
    nlls, all_targets = [], []
    for ids, labels in sequences:
        logits = model(input_ids=ids[None]).logits[0, :-1]
        targets = labels[1:]
        trained = targets != IGNORE
        nll = F.cross_entropy(logits[trained], targets[trained], reduction="none")
        w = weights[targets[trained]]
        num, den, nll_sum = num + (w * nll).sum(), den + w.sum(), nll_sum + nll.sum()
        nlls.append(nll.detach())
        all_targets.append(targets[trained])
    tokens = sum(len(t) for t in all_targets)
    pdl = num / den
    loss = ce_mix * nll_sum / tokens + (1 - ce_mix) * pdl if ce_mix else pdl
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    targets = torch.cat(all_targets)
    marked_weight = float(weights[targets][targets == marked].sum()) if marked is not None else 0.0
    return {"loss": loss.item(), "ce_loss": nll_sum.item() / tokens, "pdl_loss": pdl.item(),
            "mean_weight": den.item() / tokens, "weight_sum": den.item(), "grads": grads, "nll": torch.cat(nlls),
            "targets": targets, "marked_share": marked_weight / den.item()}


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
        ("other-data", other_data,
         "the frequency table differs from the interrupted run's (the training data changed)"),
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


# ---- variants: weight floor, cross-entropy anchor, frequency prior, end-of-turn guard -----------------------------
#
# Three 4 x 1 runs (one per option, one optimizer step each), one packed 2 x 2 run with all three options that crashes
# after its step-1 checkpoint, and two refused resumes of it. Every expected number comes from the hand count of the
# prepared labels (or of the prior's text) and the options written out here in float64, never from the run's files.

FLOOR, CE_MIX, PRIOR_MIX = 1.0, 0.3, 0.5
PRIOR_FILENAME = "pdl_prior_table.safetensors"
END_OF_TURN = "<|im_end|>"
GUARD = 0.25  # the end-of-turn guard's threshold: a quarter of the count-weighted mean weight
# The prior's "other text": general English prose (no chat markup), overlapping the dialogue's common words
PRIOR_TEXT = (
    "The weather was cold this morning, so I made a cup of tea and read the news before work. "
    "Most people like to talk about the things they know well: their family, their job, the books they read. "
    "What do you think about computers? I think they are useful, but they cannot feel anything. "
    "Yes, I am sure that it will rain today, and I do not have an umbrella with me. "
    "How are you? I am fine, thank you. Tell me a joke about a robot and a cat."
)
OTHER_PRIOR_TEXT = PRIOR_TEXT + " A second paragraph changes the counts of this prior table."


@pytest.fixture(scope="module")
def variant_prepared(tmp_path_factory) -> Path:
    """The 4 x 1 variant runs' own dataset_prepared_path: exactly one prepared dataset to count by hand."""
    return tmp_path_factory.mktemp("variant-prepared")


def hand_counts(prepared: Path, rows: int) -> torch.Tensor:
    """The trained targets of the one prepared training set under `prepared`, counted by hand (float64 counts)."""
    from datasets import load_from_disk

    (folder,) = [p for p in prepared.iterdir() if p.is_dir()]
    counts = torch.zeros(rows, dtype=torch.float64)
    for token, count in count_labels_by_hand(load_from_disk(str(folder))["labels"]).items():
        counts[token] = count
    return counts


@pytest.fixture(scope="module")
def vocab(smol_path) -> dict:
    """The output rows, and the end-of-turn token (ChatML's <|im_end|>, a special token of the tokenizer)."""
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smol_path)
    end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    assert end_of_turn in tokenizer.all_special_ids
    return {"rows": AutoConfig.from_pretrained(smol_path).vocab_size, "tokenizer": tokenizer,
            "end_of_turn": end_of_turn, "special": list(tokenizer.all_special_ids)}


def prior_counts(tokenizer, text: str, rows: int) -> torch.Tensor:
    from collections import Counter

    counts = torch.zeros(rows, dtype=torch.int64)
    for token, count in Counter(tokenizer(text, add_special_tokens=False)["input_ids"]).items():
        counts[token] = count
    return counts


@pytest.fixture(scope="module")
def priors(tmp_path_factory, vocab) -> dict:
    """Two `all_tokens` prior tables counted by hand over other text than the dialogue: the one the runs mix in, and
    one with other counts (a changed prior for the resume check)."""
    from pdl_plugin.frequency import FrequencyTable, tokenizer_fingerprint

    folder = tmp_path_factory.mktemp("priors")
    fingerprint = tokenizer_fingerprint(vocab["tokenizer"])
    out = {}
    for name, text in (("prior", PRIOR_TEXT), ("other", OTHER_PRIOR_TEXT)):
        counts = prior_counts(vocab["tokenizer"], text, vocab["rows"])
        table = FrequencyTable(counts, fingerprint, "all_tokens", name, kind="all_tokens")
        path = table.save(folder / f"{name}.safetensors")
        out[name] = {"path": str(path), "counts": counts, "fingerprint": fingerprint}
    assert not torch.equal(out["prior"]["counts"], out["other"]["counts"])
    return out


def variant_weights(counts: torch.Tensor, *, floor: float | None = None, prior: torch.Tensor | None = None,
                    beta: float = 0.0, exempt: list[int] = (), exempt_first: bool = False) -> torch.Tensor:
    """Float64 weights written out: freq = counts / total, or (1 - beta) * that + beta * prior / prior total; equation
    (3), w = 1 / (freq + eps) ** alpha; with a floor, w = max(w, floor * sum(count * w) / sum(count)) (the mean over
    the task's trained tokens); then the `exempt` rows get sum(count * w) / sum(count) of the floored weights.
    `exempt_first` swaps the last two (not what PDL does: the check's teeth). Rows neither table counted are never a
    target of these runs."""
    counts = counts.double()
    freq = counts / counts.sum()
    if prior is not None:
        freq = (1 - beta) * freq + beta * prior.double() / prior.double().sum()
    weights = 1.0 / (freq + EPSILON) ** ALPHA

    def mean(w):
        return (w * counts).sum() / counts.sum()

    def exempted(w):
        w = w.clone()
        w[list(exempt)] = mean(w)
        return w

    if exempt_first:
        weights = exempted(weights)
    if floor is not None:
        weights = torch.maximum(weights, floor * mean(weights))
    return weights if exempt_first or not exempt else exempted(weights)


def loss_with(expected: dict, weights: torch.Tensor) -> float:
    """The PDL of the same forward pass (`float64_step`'s per-token nll) under other weights."""
    w = weights[expected["targets"]]
    return float((w * expected["nll"]).sum() / w.sum())


def variant_4x1(tmp_path_factory, prepared: Path, name: str, **options) -> tuple[dict, dict, str]:
    """One optimizer step of 4 micro-batches of 1 with the option(s); (config, record, output of `axolotl train`)."""
    tmp = tmp_path_factory.mktemp(name)
    cfg = short_config(tmp, prepared, micro_batch_size=1, gradient_accumulation_steps=4, max_steps=1, **options)
    _, log = run(tmp, cfg)
    return cfg, load_record(cfg), log


@pytest.fixture(scope="module")
def floor_run(tmp_path_factory, variant_prepared):
    """The floor with the special-token exemption (floor first, then the exemption: both written out below)."""
    return variant_4x1(tmp_path_factory, variant_prepared, "floor-4x1", pdl_min_weight=FLOOR,
                       pdl_exempt_special_tokens=True)


@pytest.fixture(scope="module")
def anchor_run(tmp_path_factory, variant_prepared):
    return variant_4x1(tmp_path_factory, variant_prepared, "anchor-4x1", pdl_ce_mix=CE_MIX)


@pytest.fixture(scope="module")
def prior_run(tmp_path_factory, variant_prepared, priors):
    return variant_4x1(tmp_path_factory, variant_prepared, "prior-4x1", pdl_prior_path=priors["prior"]["path"],
                       pdl_prior_mix=PRIOR_MIX)


def check_one_step(label: str, cfg: dict, record: dict, smol_path: str, weights: torch.Tensor, sequences, *,
                   ce_mix: float = 0.0, end_of_turn: int) -> dict:
    """The run's only step against `float64_step` over `sequences` with `weights`: loss, ce_loss, pdl_loss (with the
    anchor), mean weight, the Trainer's denominator (the weight sum) and the accumulated gradient (relative 1e-5)."""
    (window,), (log,) = record["windows"], step_logs(record)
    expected = float64_step(lora_model(smol_path, record["params"][0], cfg), sequences, weights, ce_mix=ce_mix,
                            marked=end_of_turn)
    error = relative_error(record["grads"][0], expected["grads"])
    print(f"\n{label}: logged loss {log['loss']!r}, independent {expected['loss']!r} "
          f"(relative {abs(log['loss'] / expected['loss'] - 1):.2e}); relative gradient error {error:.2e}")
    assert math.isclose(log["loss"], expected["loss"], rel_tol=1e-5)
    assert math.isclose(log["ce_loss"], expected["ce_loss"], rel_tol=1e-5)
    assert math.isclose(log["pdl_mean_weight"], expected["mean_weight"], rel_tol=1e-5)
    assert math.isclose(window["num_items_in_batch"], expected["weight_sum"], rel_tol=1e-6)
    if ce_mix:
        assert math.isclose(log["pdl_loss"], expected["pdl_loss"], rel_tol=1e-5)
    else:
        assert "pdl_loss" not in log
    assert error <= 1e-5
    return expected


def four_rows(record: dict) -> list:
    (window,) = record["windows"]
    assert [len(b["input_ids"]) for b in window["batches"]] == [1, 1, 1, 1]
    return rows(window["batches"])


def test_weight_floor_loss_and_gradient_equal_independent_pdl(floor_run, variant_prepared, smol_path, vocab):
    """pdl_min_weight 1 (with pdl_exempt_special_tokens): w = max(eq. (3), 1 x the count-weighted mean of eq. (3)),
    then the special tokens get the mean of the floored weights. 4 x 1 accumulation against the formula over the same
    4 rows as one batch on a fresh float64 model."""
    cfg, record, _ = floor_run
    counts = hand_counts(variant_prepared, vocab["rows"])
    special = [i for i in vocab["special"] if i < vocab["rows"]]
    weights = variant_weights(counts, floor=FLOOR, exempt=special)
    expected = check_one_step("floor 4x1", cfg, record, smol_path, weights, four_rows(record),
                              end_of_turn=vocab["end_of_turn"])
    # The floor binds (the frequent tokens of these rows weigh less than the mean under eq. (3)), and comes before
    # the exemption: the other orders, or no floor, give other losses
    for other in (variant_weights(counts, exempt=special), variant_weights(counts, floor=FLOOR, exempt=special,
                                                                           exempt_first=True)):
        assert not math.isclose(loss_with(expected, other), expected["loss"], rel_tol=1e-4)
    saved = json.loads((Path(cfg["output_dir"]) / "pdl_config.json").read_text())
    assert saved["pdl_min_weight"] == FLOOR and saved["pdl_exempt_special_tokens"] is True


def test_ce_anchor_loss_and_gradient_equal_independent_pdl(anchor_run, variant_prepared, smol_path, vocab):
    """pdl_ce_mix 0.3: the step's loss is 0.3 x (mean nll of its trained tokens) + 0.7 x (its PDL), each over all 4
    micro-batches; logged ce_loss and pdl_loss are the two parts. Against the formula over the 4 rows as one batch."""
    cfg, record, _ = anchor_run
    weights = variant_weights(hand_counts(variant_prepared, vocab["rows"]))
    expected = check_one_step("anchor 4x1", cfg, record, smol_path, weights, four_rows(record), ce_mix=CE_MIX,
                              end_of_turn=vocab["end_of_turn"])
    (log,) = step_logs(record)
    assert math.isclose(log["loss"], CE_MIX * log["ce_loss"] + (1 - CE_MIX) * log["pdl_loss"], rel_tol=1e-5)
    assert not math.isclose(expected["loss"], expected["pdl_loss"], rel_tol=1e-3)
    assert not math.isclose(expected["loss"], expected["ce_loss"], rel_tol=1e-3)


def test_prior_loss_and_gradient_equal_independent_pdl(prior_run, variant_prepared, priors, smol_path, vocab):
    """pdl_prior_path + pdl_prior_mix 0.5: eq. (3) on 0.5 x task + 0.5 x prior frequencies (both counted by hand); the
    prior is copied into output_dir and recorded in pdl_config.json."""
    from pdl_plugin.frequency import FrequencyTable

    cfg, record, _ = prior_run
    prior = priors["prior"]
    counts = hand_counts(variant_prepared, vocab["rows"])
    weights = variant_weights(counts, prior=prior["counts"], beta=PRIOR_MIX)
    expected = check_one_step("prior 4x1", cfg, record, smol_path, weights, four_rows(record),
                              end_of_turn=vocab["end_of_turn"])
    assert not math.isclose(loss_with(expected, variant_weights(counts)), expected["loss"], rel_tol=1e-4)
    out = Path(cfg["output_dir"])
    copy = FrequencyTable.load(out / PRIOR_FILENAME)
    assert torch.equal(copy.counts, prior["counts"]) and copy.kind == "all_tokens"
    assert copy.tokenizer_fingerprint == prior["fingerprint"] and copy.data_fingerprint == "prior"
    saved = json.loads((out / "pdl_config.json").read_text())
    assert saved["pdl_prior_path"] == prior["path"] and saved["pdl_prior_mix"] == PRIOR_MIX
    assert saved["prior"] == {"table": PRIOR_FILENAME, "kind": "all_tokens", "masking": "all_tokens",
                              "data_fingerprint": "prior", "total_tokens": int(prior["counts"].sum())}


def end_of_turn_share(sequences, weights: torch.Tensor, token: int) -> float:
    """sum of w over the trained positions whose target is `token` / sum of w over all trained positions."""
    targets = torch.cat([labels[1:] for _, labels in sequences])
    w = weights[targets[targets != IGNORE]]
    return float(w[targets[targets != IGNORE] == token].sum() / w.sum())


def guard_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "end-of-turn token" in line]


def test_end_of_turn_guard_warns_and_logs_its_weight_share(anchor_run, floor_run, prior_run, variant_prepared, priors,
                                                           vocab):
    """The end-of-turn token (<|im_end|>, the most trained special token by the hand count) weighs under a quarter of
    the count-weighted mean weight under eq. (3) at alpha 0.5: the anchor run (no exemption) prints one warning line;
    the floor run (exempt) none; the prior run as its hand-computed weight says. Every run logs the token's share of
    the step's weight, written out from the hand-counted weights at the recorded targets."""
    counts = hand_counts(variant_prepared, vocab["rows"])
    token = vocab["end_of_turn"]
    special = [i for i in vocab["special"] if i < vocab["rows"]]
    assert counts[token] > 0 and counts[token] == max(counts[i] for i in special)

    def relative(w):
        return float(w[token] / ((w * counts).sum() / counts.sum()))

    plain = variant_weights(counts)
    cases = [("anchor", anchor_run, plain, True),
             ("floor", floor_run, variant_weights(counts, floor=FLOOR, exempt=special), False),
             ("prior", prior_run, variant_weights(counts, prior=priors["prior"]["counts"], beta=PRIOR_MIX), True)]
    report = []
    for name, (_, record, log), weights, guarded in cases:
        lines = guard_lines(log)
        expected_share = end_of_turn_share(four_rows(record), weights, token)
        (logged,) = step_logs(record)
        report.append((name, relative(weights), len(lines), logged["pdl_end_of_turn_weight_share"], expected_share))
        warns = guarded and relative(weights) < GUARD
        assert len(lines) == (1 if warns else 0), (name, lines)
        if warns:
            (line,) = lines
            assert "[WARNING] [axolotl.integrations.pdl]" in line and f"(id {token})" in line
            assert f"weighs {relative(weights):.3g} of the mean trained token" in line
        assert expected_share > 0  # every row ends with a trained end-of-turn token
        assert math.isclose(logged["pdl_end_of_turn_weight_share"], expected_share, rel_tol=1e-5), report
    print("\nrun, end-of-turn weight / mean, warning lines, logged share, independent share:", *report, sep="\n")
    assert report[0][1] < GUARD  # plain eq. (3) at alpha 0.5 under-weights the end of turn: the guard has a case


# ---- variants together: sample packing, and the resume check -----------------------------------------------------


@pytest.fixture(scope="module")
def variants_packed(tmp_path_factory, priors):
    """Floor 1, anchor 0.3 and prior 0.5 together, `sample_packing` (2 x 2 micro-batches of packed rows, its own
    prepared data), killed right after writing checkpoint-1; the recorder writes step 1 before the crash."""
    tmp = tmp_path_factory.mktemp("variants-packed")
    cfg = short_config(tmp, tmp / "prepared", sample_packing=True, attn_implementation="sdpa", sequence_len=128,
                       max_steps=2, save_strategy="steps", save_steps=1, pdl_min_weight=FLOOR, pdl_ce_mix=CE_MIX,
                       pdl_prior_path=priors["prior"]["path"], pdl_prior_mix=PRIOR_MIX)
    cfg["plugins"] = [*cfg["plugins"], CRASH_PLUGIN]
    code, log = run(tmp, cfg, crash_after=1, keep_record=True, check=False, timeout=400)
    assert code != 0 and "crashing after checkpoint-1" in log, log[-3000:]
    out = Path(cfg["output_dir"])
    assert (out / "checkpoint-1" / "trainer_state.json").is_file() and not (out / "checkpoint-2").exists()
    return tmp, cfg, load_record(cfg)


def test_variants_with_sample_packing_equal_independent_pdl(variants_packed, priors, smol_path, vocab):
    """The floor, the anchor and the prior together on packed rows: the logged loss, ce_loss, pdl_loss, mean weight,
    end-of-turn share and accumulated gradient of the 2 x 2 step are those of its sequences scored one by one on a
    fresh float64 model, with the weights written out from the hand count of the prepared rows and of the prior."""
    tmp, cfg, record = variants_packed
    (window,) = record["windows"]
    assert all("attention_mask" not in b and "position_ids" in b for b in window["batches"])
    sequences = unpack(window["batches"])
    assert len(sequences) > 2 * 2, "not packed: no more sequences than rows"
    counts = hand_counts(tmp / "prepared", vocab["rows"])
    # The run died before its final save: its table is the checkpoint's
    assert torch.equal(table_counts({"output_dir": str(Path(cfg["output_dir"]) / "checkpoint-1")}).double(), counts)
    weights = variant_weights(counts, floor=FLOOR, prior=priors["prior"]["counts"], beta=PRIOR_MIX)
    expected = check_one_step(f"floor + anchor + prior, packed 2x2 ({len(sequences)} sequences)", cfg, record,
                              smol_path, weights, sequences, ce_mix=CE_MIX, end_of_turn=vocab["end_of_turn"])
    (log,) = step_logs(record)
    assert math.isclose(log["pdl_end_of_turn_weight_share"], expected["marked_share"], rel_tol=1e-5)
    for other in (variant_weights(counts, prior=priors["prior"]["counts"], beta=PRIOR_MIX),  # no floor
                  variant_weights(counts, floor=FLOOR)):  # no prior
        assert not math.isclose(loss_with(expected, other), expected["pdl_loss"], rel_tol=1e-4)


def test_resume_with_a_changed_variant_is_refused_and_changes_no_file(variants_packed, priors):
    """Resuming the crashed run with pdl_min_weight, pdl_ce_mix and pdl_prior_mix changed is refused naming each with
    its two values (one launch: the engine lists every changed setting); with another prior table (same mix) it is
    refused naming the prior. No file of the interrupted run changes (its checkpoint holds the prior's copy)."""
    from pdl_plugin.frequency import FrequencyTable

    tmp, cfg, _ = variants_packed
    out = Path(cfg["output_dir"])
    checkpoint = out / "checkpoint-1"
    before = snapshot(out)
    assert f"checkpoint-1/{PRIOR_FILENAME}" in before and "checkpoint-1/pdl_config.json" in before
    assert torch.equal(FrequencyTable.load(checkpoint / PRIOR_FILENAME).counts, priors["prior"]["counts"])
    saved = json.loads((checkpoint / "pdl_config.json").read_text())
    assert (saved["pdl_min_weight"], saved["pdl_ce_mix"], saved["pdl_prior_mix"]) == (FLOOR, CE_MIX, PRIOR_MIX)
    resume = {**cfg, "resume_from_checkpoint": str(checkpoint)}
    changed_settings = {**resume, "pdl_min_weight": 2.0, "pdl_ce_mix": 0.5, "pdl_prior_mix": 0.25}
    other_prior = {**resume, "pdl_prior_path": priors["other"]["path"]}
    settings_message = (f"Cannot resume from {checkpoint}: the settings pdl_min_weight (1.0 -> 2.0), pdl_ce_mix "
                        "(0.3 -> 0.5), pdl_prior_mix (0.5 -> 0.25) differ from the interrupted run's")
    prior_message = (f"Cannot resume from {checkpoint}: the prior table {priors['other']['path']} differs from the "
                     f"interrupted run's ({PRIOR_FILENAME} in the checkpoint)")
    for name, changed, names, message in [
        ("changed-settings", changed_settings, ("pdl_min_weight (1.0 -> 2.0)", "pdl_ce_mix (0.3 -> 0.5)",
                                                "pdl_prior_mix (0.5 -> 0.25)"), settings_message),
        ("changed-prior", other_prior, (f"the prior table {priors['other']['path']} differs",), prior_message),
    ]:
        code, log = run(tmp / name, changed, check=False)
        assert code != 0, f"{name}: resumed although {message}"
        for named in names:
            assert named in log, (name, named, log[-3000:])
        assert message in log, log[-3000:]
        assert_unchanged(out, before, name)
