"""The PDL contract (tests/contract/cases.py), TRL half of the variants: weight floor (`pdl_min_weight`),
cross-entropy anchor (`pdl_ce_mix`), frequency prior (`pdl_prior_path` + `pdl_prior_mix`), their resume checks, and
the end-of-turn guard.

Every number is checked against a computation written out here, never against the engine: the trained tokens from
the raw prompt/completion strings (`_rows`, `_counts` of test_trl_contract.py), the weights from those counts in float64
with the floor / the prior mix written out (`_hand_weights`), and the loss and gradient of a fresh float64 copy of the
model, each sequence scored alone (`_direct`). The anchor's expected loss and gradient are lambda * (the direct formula
with every weight 1, i.e. the plain mean nll) + (1 - lambda) * (the direct PDL), both over the same rows.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from conftest import PROMPT_COMPLETION, cpu_args, make_tiny_model
from contract.test_trl_contract import (EPSILON, IGNORE, LAYOUTS, _counts, _direct, _logged_steps, _Record,
                                        _relative_error, _rows)
from pdl_plugin import FrequencyTable, PDLConfigError, PDLSFTTrainer
from pdl_plugin.frequency import tokenizer_fingerprint
from test_resume import _file_hashes, _StopAt, _trainer

ALPHA = 1.0
FLOOR = 0.6  # alpha 1, PROMPT_COMPLETION: floors the end-of-turn token (0.36 of the mean) and '.' (0.48), no other
CE_MIX = 0.3
PRIOR_MIX = 0.5
PRIOR_FILENAME = "pdl_prior_table.safetensors"
SHARPEN = 30.0
# The prior's "other text": overlaps the task's completions in some tokens, and counts tokens the task never trains
PRIOR_TEXT = [
    "The cat sat on the mat, and the dog sat on the rug.",
    "Two plus two is four; four minus two is two.",
    "Bonjour means hello in French. Blue is a colour.",
    "Machines that think are the field of AI research.",
]


# ---- the independent side -------------------------------------------------------------------------------------------


def _hand_weights(counts: Counter, vocab: int, alpha: float = ALPHA, *, floor: float | None = None,
                  prior: torch.Tensor | None = None, beta: float = 0.0) -> torch.Tensor:
    """Float64 weights written out: freq = task counts / their total, or (1 - beta) * that + beta * prior / its total;
    w = (freq + eps) ** -alpha; with a floor, w = max(w, floor * sum_t count(t) * w(t) / sum_t count(t)) (the mean over
    the task's counted tokens). NaN for a row neither table counted: such a row is never a target here."""
    task = torch.zeros(vocab, dtype=torch.float64)
    for token, count in counts.items():
        task[token] = count
    freq = task / task.sum()
    if prior is not None:
        freq = (1 - beta) * freq + beta * prior.double() / prior.double().sum()
    weights = (freq + EPSILON) ** -alpha
    if floor is not None:
        mean = (task * weights).sum() / task.sum()
        weights = torch.maximum(weights, floor * mean)
    return torch.where(freq > 0, weights, torch.nan)


def _expected(reference, rows, weights: torch.Tensor, mix: float = 0.0) -> dict:
    """The step over `rows` with these weights: loss, ce_loss, mean weight, the PDL part and the gradient. With the
    anchor, both parts on the same rows: the plain mean nll is the direct formula with every weight 1."""
    pdl = _direct(reference, rows, weights, grads=True)
    if not mix:
        return {**pdl, "pdl_loss": pdl["loss"]}
    ce = _direct(reference, rows, torch.ones_like(weights), grads=True)
    assert ce["loss"] == pytest.approx(pdl["ce_loss"], rel=1e-12)  # the two ways to a mean nll agree
    return {
        "loss": mix * ce["loss"] + (1 - mix) * pdl["loss"], "ce_loss": pdl["ce_loss"],
        "mean_weight": pdl["mean_weight"], "pdl_loss": pdl["loss"],
        "grads": {n: mix * ce["grads"][n] + (1 - mix) * pdl["grads"][n] for n in pdl["grads"]},
    }


def _share(rows, weights: torch.Tensor, token: int) -> float:
    """sum of w over the targets equal to `token` / sum of w over every trained target of `rows`."""
    marked = total = 0.0
    for _, labels in rows:
        for label in labels[1:]:
            if label != IGNORE:
                total += float(weights[label])
                marked += float(weights[label]) if label == token else 0.0
    return marked / total


def _prior(tokenizer, tmp_path: Path, kind: str = "all_tokens") -> tuple[Path, torch.Tensor]:
    """A prior table counted by hand over PRIOR_TEXT (every token), saved; returns its path and its counts.
    `model_prior`: fractional expected counts over the whole vocabulary (0.6 x the hand counts + 0.001 everywhere)."""
    counter = Counter(token for text in PRIOR_TEXT for token in tokenizer(text)["input_ids"])
    counts = torch.zeros(len(tokenizer), dtype=torch.float64 if kind == "model_prior" else torch.int64)
    for token, count in counter.items():
        counts[token] = count
    if kind == "model_prior":
        counts = 0.6 * counts + 1e-3
    table = FrequencyTable(counts, tokenizer_fingerprint(tokenizer), "all_tokens", "prior-data", kind=kind)
    path = table.save(tmp_path / f"prior-{kind}.safetensors")
    return path, counts


def _model(vocab: int):
    """The seed-3 tiny model with its (tied) embedding scaled up: logits spread over a few nats instead of ~0.1, so
    the nll of different tokens differs and reweighting them changes the loss measurably."""
    model = make_tiny_model(vocab, seed=3)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(SHARPEN)
    return model


def _sgd_step(folder: Path, tokenizer, dataset=None, **overrides):
    """One plain-SGD optimizer step (lr 1, no clipping) of a fresh `_model`; the gradient is recorded."""
    record = _Record()
    settings = dict(loss_type="pdl", pdl_alpha=ALPHA, pdl_epsilon=EPSILON, max_steps=1, optim="sgd", learning_rate=1.0,
                    max_grad_norm=0.0)
    args = cpu_args(folder, **{**settings, **overrides})
    trainer = PDLSFTTrainer(_model(len(tokenizer)), args,
                            dataset or Dataset.from_dict(PROMPT_COMPLETION), processing_class=tokenizer,
                            callbacks=[record])
    trainer.train()
    return trainer, record


def _check_step(trainer, record, expected: dict, rows, weights, what: str) -> float:
    """The logged step and the recorded gradient against `expected`; returns the relative gradient error."""
    (logged,) = _logged_steps(trainer)
    error = _relative_error(record.grads[0], expected["grads"])
    report = (what, logged, {k: v for k, v in expected.items() if k != "grads"}, error)
    assert logged["loss"] == pytest.approx(expected["loss"], rel=1e-5), report
    assert logged["ce_loss"] == pytest.approx(expected["ce_loss"], rel=1e-5), report
    assert logged["pdl_mean_weight"] == pytest.approx(expected["mean_weight"], rel=1e-5), report
    if trainer.args.pdl_ce_mix:  # the PDL part, logged beside the mixed loss
        assert logged["pdl_loss"] == pytest.approx(expected["pdl_loss"], rel=1e-5), report
    else:
        assert "pdl_loss" not in logged, report
    eos = trainer.processing_class.eos_token_id
    assert logged["pdl_end_of_turn_weight_share"] == pytest.approx(_share(rows, weights, eos), rel=1e-5), report
    assert error <= 1e-5, report
    return error


def _accumulation_4x1_and_batch_4(tmp_path, tokenizer, expected: dict, rows, weights, **settings) -> dict:
    """The same step as 4 micro-batches of 1 and as one batch of 4, each against `expected` and against each other.
    Returns the trainers and the relative gradient errors."""
    trainers, grads, errors = {}, {}, {}
    for name, (batch, accumulation) in {"4x1": (1, 4), "batch 4": (4, 1)}.items():
        trainer, record = _sgd_step(tmp_path / name.replace(" ", ""), tokenizer, per_device_train_batch_size=batch,
                                    gradient_accumulation_steps=accumulation, **settings)
        errors[f"{name} vs direct"] = _check_step(trainer, record, expected, rows, weights, name)
        trainers[name], grads[name] = trainer, record.grads[0]
    errors["4x1 vs batch 4"] = _relative_error(grads["4x1"], {n: g.double() for n, g in grads["batch 4"].items()})
    assert errors["4x1 vs batch 4"] <= 1e-5, errors
    return {"trainers": trainers, "errors": errors}


def _effect(expected: dict, plain: dict) -> tuple[float, float]:
    """How far the option moves the step's loss and gradient from plain PDL (relative): far above the 1e-5 tolerance
    (50x for the loss, 1000x for the gradient), or the checks could not tell the option applied from it ignored."""
    loss = abs(expected["loss"] / plain["loss"] - 1)
    grad = _relative_error(plain["grads"], expected["grads"])
    assert loss > 5e-4 and grad > 1e-2, (loss, grad)
    return loss, grad


def _counted(counts: Counter) -> torch.Tensor:
    return torch.tensor(sorted(counts))


# ---- weight floor ---------------------------------------------------------------------------------------------------


def test_weight_floor_loss_and_gradient_equal_direct_formula(tmp_path, tokenizer):
    rows = _rows(tokenizer)
    counts, vocab = _counts(rows), len(tokenizer)
    weights = _hand_weights(counts, vocab, floor=FLOOR)
    plain = _hand_weights(counts, vocab)
    ids = _counted(counts)
    floored = ids[weights[ids] > plain[ids]]
    # the floor binds on some trained tokens (the end-of-turn token among them) and leaves the others at eq. (3)
    assert tokenizer.eos_token_id in floored.tolist() and 0 < len(floored) < len(ids)
    reference = _model(vocab).double()
    expected = _expected(reference, rows, weights)
    effect = _effect(expected, _direct(reference, rows, plain, grads=True))

    result = _accumulation_4x1_and_batch_4(tmp_path, tokenizer, expected, rows, weights, pdl_min_weight=FLOOR)
    for trainer in result["trainers"].values():
        torch.testing.assert_close(trainer.pdl_weights[ids].double(), weights[ids], rtol=1e-6, atol=0)
    print(f"\nweight floor {FLOOR}: logged {_logged_steps(trainer)[0]['loss']!r}, direct {expected['loss']!r}, "
          f"relative gradient errors {result['errors']}; vs plain PDL: loss {effect[0]:.1e}, gradient {effect[1]:.1e}")


# ---- cross-entropy anchor -------------------------------------------------------------------------------------------


def test_ce_anchor_loss_and_gradient_equal_direct_formula(tmp_path, tokenizer):
    rows = _rows(tokenizer)
    weights = _hand_weights(_counts(rows), len(tokenizer))
    reference = _model(len(tokenizer)).double()
    expected = _expected(reference, rows, weights, mix=CE_MIX)
    effect = _effect(expected, _direct(reference, rows, weights, grads=True))

    result = _accumulation_4x1_and_batch_4(tmp_path, tokenizer, expected, rows, weights, pdl_ce_mix=CE_MIX)
    for trainer in result["trainers"].values():  # the logged parts recombine into the loss
        (logged,) = _logged_steps(trainer)
        mixed = CE_MIX * logged["ce_loss"] + (1 - CE_MIX) * logged["pdl_loss"]
        assert logged["loss"] == pytest.approx(mixed, rel=1e-5), logged
    print(f"\nce anchor {CE_MIX}: logged {logged['loss']!r}, direct {expected['loss']!r} (ce {expected['ce_loss']!r}, "
          f"pdl {expected['pdl_loss']!r}), relative gradient errors {result['errors']}; vs plain PDL: loss "
          f"{effect[0]:.1e}, gradient {effect[1]:.1e}")


# ---- frequency prior ------------------------------------------------------------------------------------------------


def test_prior_loss_and_gradient_equal_direct_formula(tmp_path, tokenizer):
    rows = _rows(tokenizer)
    counts, vocab = _counts(rows), len(tokenizer)
    prior_path, prior_counts = _prior(tokenizer, tmp_path)
    weights = _hand_weights(counts, vocab, prior=prior_counts.double(), beta=PRIOR_MIX)
    reference = _model(vocab).double()
    expected = _expected(reference, rows, weights)
    effect = _effect(expected, _direct(reference, rows, _hand_weights(counts, vocab), grads=True))

    result = _accumulation_4x1_and_batch_4(tmp_path, tokenizer, expected, rows, weights,
                                           pdl_prior_path=str(prior_path), pdl_prior_mix=PRIOR_MIX)
    trainer = result["trainers"]["batch 4"]
    # the weights of every token either table counts, and of one neither counts (the rarest mixed frequency's)
    seen = torch.tensor(sorted(set(counts) | set(prior_counts.nonzero().flatten().tolist())))
    torch.testing.assert_close(trainer.pdl_weights[seen].double(), weights[seen], rtol=1e-6, atol=0)
    unseen = next(t for t in range(vocab - 1, 0, -1) if t not in set(seen.tolist()))
    assert float(trainer.pdl_weights[unseen]) == pytest.approx(float(weights[seen].max()), rel=1e-6)

    # the prior is copied into the run folder (with the run's final save) and recorded in pdl_config.json
    trainer.save_model()
    out = Path(trainer.args.output_dir)
    copy = FrequencyTable.load(out / PRIOR_FILENAME)
    assert torch.equal(copy.counts, prior_counts) and copy.kind == "all_tokens"
    assert copy.tokenizer_fingerprint == tokenizer_fingerprint(tokenizer) and copy.data_fingerprint == "prior-data"
    saved = json.loads((out / "pdl_config.json").read_text(encoding="utf-8"))
    assert saved["prior"]["kind"] == "all_tokens" and saved["prior"]["table"] == PRIOR_FILENAME
    assert saved["prior"]["total_tokens"] == int(prior_counts.sum())
    assert saved["pdl_prior_mix"] == PRIOR_MIX and saved["pdl_prior_path"] == str(prior_path)
    print(f"\nprior mix {PRIOR_MIX}: logged {_logged_steps(trainer)[0]['loss']!r}, direct {expected['loss']!r}, "
          f"relative gradient errors {result['errors']}; vs plain PDL: loss {effect[0]:.1e}, gradient {effect[1]:.1e}")


# ---- the variants with packing --------------------------------------------------------------------------------------

# name: (the trainer's settings, the hand computation's); "prior" is a model prior (fractional expected counts)
VARIANTS = {
    "floor": (dict(pdl_min_weight=FLOOR), dict(floor=FLOOR)),
    "anchor": (dict(pdl_ce_mix=CE_MIX), dict(mix=CE_MIX)),
    "prior": (dict(pdl_prior_mix=PRIOR_MIX), dict(beta=PRIOR_MIX)),
    "all three": (dict(pdl_min_weight=FLOOR, pdl_ce_mix=CE_MIX, pdl_prior_mix=PRIOR_MIX),
                  dict(floor=FLOOR, mix=CE_MIX, beta=PRIOR_MIX)),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variants_with_packing_equal_the_same_tokens_unpacked(tmp_path, tokenizer, variant):
    """Each layout of test_trl_contract.py (bfd packing, padding-free, right-padded) trains the 4 sequences in one step
    of 2 accumulated micro-batches; every one equals the direct formula on the sequences scored alone."""
    settings, hand = dict(VARIANTS[variant][0]), dict(VARIANTS[variant][1])
    rows = _rows(tokenizer)
    counts, vocab = _counts(rows), len(tokenizer)
    if "pdl_prior_mix" in settings:
        prior_path, prior_counts = _prior(tokenizer, tmp_path, kind="model_prior")
        settings = {**settings, "pdl_prior_path": str(prior_path)}
        hand = {**hand, "prior": prior_counts}
    mix = hand.pop("mix", 0.0)
    weights = _hand_weights(counts, vocab, **hand)
    expected = _expected(_model(vocab).double(), rows, weights, mix=mix)
    report = {}
    for layout, options in LAYOUTS.items():
        trainer, record = _sgd_step(tmp_path / layout, tokenizer, gradient_accumulation_steps=2,
                                    **options, **settings)
        if layout == "packing":  # really packed: 4 sequences in fewer rows
            assert len(trainer.train_dataset) < len(rows) and "seq_lengths" in trainer.train_dataset.column_names
        assert {i: c for i, c in enumerate(trainer.pdl_table.counts.tolist()) if c} == dict(counts), layout
        report[layout] = (_logged_steps(trainer)[0]["loss"], expected["loss"],
                          _check_step(trainer, record, expected, rows, weights, f"{variant}, {layout}"))
    print(f"\n{variant}: layout: logged loss, direct loss, relative gradient error", *report.items(), sep="\n")


# ---- resume ---------------------------------------------------------------------------------------------------------


def test_resume_with_a_changed_variant_is_refused(tmp_path, tokenizer):
    """A run with the floor, the anchor and a prior, interrupted after its step-2 checkpoint: resuming with any of them
    changed is refused naming it, and changes no file of the run; resuming with the same ones (the prior from the
    checkpoint's copy, as the refusal suggests) goes on."""
    prior_path, prior_counts = _prior(tokenizer, tmp_path)
    variants = dict(pdl_epsilon=EPSILON, pdl_min_weight=FLOOR, pdl_ce_mix=CE_MIX, pdl_prior_path=str(prior_path),
                    pdl_prior_mix=PRIOR_MIX)
    _trainer(tmp_path, tokenizer, "run", callbacks=[_StopAt(2)], **variants).train()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    assert torch.equal(FrequencyTable.load(checkpoint / PRIOR_FILENAME).counts, prior_counts)
    before = _file_hashes(tmp_path / "run")

    other = prior_counts.clone()
    other[other.nonzero()[0]] += 1  # one count more: another prior
    other_path = FrequencyTable(other, tokenizer_fingerprint(tokenizer), "all_tokens", "prior-data",
                                kind="all_tokens").save(tmp_path / "other-prior.safetensors")
    changes = [
        (dict(pdl_min_weight=1.0), r"settings pdl_min_weight \(0\.6 -> 1\.0\) differ"),
        (dict(pdl_min_weight=0), r"settings pdl_min_weight \(0\.6 -> 0\.0\) differ"),  # 0: no floor
        (dict(pdl_ce_mix=0.5), r"settings pdl_ce_mix \(0\.3 -> 0\.5\) differ"),
        (dict(pdl_ce_mix=0.0), r"settings pdl_ce_mix \(0\.3 -> 0\.0\) differ"),
        (dict(pdl_prior_mix=0.25), r"settings pdl_prior_mix \(0\.5 -> 0\.25\) differ"),
        (dict(pdl_prior_path=None, pdl_prior_mix=None), r"settings pdl_prior_mix \(0\.5 -> None\) differ"),
        (dict(pdl_prior_path=str(other_path)), r"the prior table .*other-prior\.safetensors differs from the "
                                               r"interrupted run's \(pdl_prior_table\.safetensors"),
    ]
    for change, message in changes:
        with pytest.raises(PDLConfigError, match=message):
            _trainer(tmp_path, tokenizer, "run", **{**variants, **change}).train(resume_from_checkpoint=True)
        assert _file_hashes(tmp_path / "run") == before, change  # a refused resume changes no file of the run

    # the same settings with the checkpoint's copy of the prior (another path, the same table) resume
    resumed = _trainer(tmp_path, tokenizer, "run", **{**variants, "pdl_prior_path": str(checkpoint / PRIOR_FILENAME)})
    resumed.train(resume_from_checkpoint=True)
    assert [entry["step"] for entry in _logged_steps(resumed)] == [1, 2, 3, 4]  # steps 1, 2 from the checkpoint


# ---- end-of-turn guard ----------------------------------------------------------------------------------------------

# Short replies: the end-of-turn token ends each of 12 replies of 45 trained tokens (27 distinct), so at alpha 1 it
# weighs 45 / (12 * 27) = 0.139 of the count-weighted mean weight. Rows 0-5 (step 1) are one word, rows 6-11 longer.
SHORT_REPLIES = {
    "prompt": ["Yes or no?", "Yes or no?", "Yes or no?", "Pick a colour.", "Pick a colour.", "Capital of France?",
               "Two plus two?", "Greet me.", "Capital of Spain?", "Pick a colour.", "Say a number.", "Is it raining?"],
    "completion": [" Yes", " No", " Yes", " Blue", " Red", " Paris", " Four, of course.", " Hello there, friend!",
                   " Madrid, in Spain.", " Green and blue.", " Seven", " Not today, it is sunny."],
}


def _short_rows(tokenizer):
    rows = []
    for prompt, completion in zip(SHORT_REPLIES["prompt"], SHORT_REPLIES["completion"]):
        prompt_ids = tokenizer(prompt)["input_ids"]
        ids = tokenizer(prompt + completion + tokenizer.eos_token)["input_ids"]
        assert ids[: len(prompt_ids)] == prompt_ids
        rows.append((ids, [IGNORE] * len(prompt_ids) + ids[len(prompt_ids):]))
    return rows


def _guard_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING and "end-of-turn token" in r.getMessage()]


def test_end_of_turn_guard_warns_and_logs_its_weight_share(tmp_path, tokenizer, caplog):
    rows, eos = _short_rows(tokenizer), tokenizer.eos_token_id
    counts, vocab = _counts(rows), len(tokenizer)
    weights = _hand_weights(counts, vocab)
    # the end-of-turn token is the most trained special token, and weighs under a quarter of the mean by hand
    assert max(tokenizer.all_special_ids, key=lambda i: counts[i]) == eos and counts[eos] == len(rows)
    ids = _counted(counts)
    relative = float(weights[eos] / ((weights[ids] * torch.tensor([counts[i] for i in ids.tolist()])).sum()
                                     / counts.total()))
    assert relative < 0.25

    dataset = Dataset.from_dict(SHORT_REPLIES)
    with caplog.at_level(logging.WARNING):
        trainer, _ = _sgd_step(tmp_path / "guard", tokenizer, dataset, max_steps=2, per_device_train_batch_size=6,
                               train_sampling_strategy="sequential", learning_rate=1e-2)
    (line,) = _guard_lines(caplog)  # exactly one line, over the construction and the whole run
    assert f"(id {eos})" in line.getMessage() and f"weighs {relative:.3g} of the mean" in line.getMessage(), line
    shares = [entry["pdl_end_of_turn_weight_share"] for entry in _logged_steps(trainer)]
    expected = [_share(rows[:6], weights, eos), _share(rows[6:], weights, eos)]
    assert shares == pytest.approx(expected, rel=1e-5)
    assert expected[0] > 2 * expected[1]  # the steps really differ: each step's own share is logged
    print(f"\nend-of-turn guard: {line.name}: {line.getMessage()}\nshares logged {shares}, by hand {expected}")

    # no line where the token is exempt, floored to the mean, or not that frequent (PROMPT_COMPLETION: 0.36 of the mean)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        for data, settings in ((dataset, dict(pdl_exempt_special_tokens=True)), (dataset, dict(pdl_min_weight=1.0)),
                               (Dataset.from_dict(PROMPT_COMPLETION), {})):
            args = cpu_args(tmp_path / "quiet", loss_type="pdl", pdl_alpha=ALPHA, pdl_epsilon=EPSILON, **settings)
            PDLSFTTrainer(make_tiny_model(vocab), args, data, processing_class=tokenizer)
    assert _guard_lines(caplog) == []
