"""The PDL contract (tests/contract/cases.py), TRL half: the cases no older test covers on `PDLSFTTrainer`, and the
check that every case has a TRL test.

Every number here is checked against a computation written out in this file: the trained tokens from the raw
prompt/completion strings, eq. (3) weights from those counts, and the loss and gradients of a fresh float64 copy of
the model, each sequence scored alone (no padding, no packing).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback

from conftest import PROMPT_COMPLETION, cpu_args, make_tiny_model
from contract.cases import CASES, REPO, matrix, missing_tests
from pdl_plugin import PDLSFTTrainer

IGNORE = -100
EPSILON = 1e-6


# ---- the matrix -----------------------------------------------------------------------------------------------------


def test_every_contract_case_has_a_trl_test():
    assert missing_tests("trl") == []


def test_readme_lists_every_contract_case():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## The contract"):]
    assert [c.name for c in CASES] == re.findall(r"^\| `([a-z0-9_]+)` \|", section, flags=re.M), matrix()


# ---- the independent side -------------------------------------------------------------------------------------------


def _rows(tokenizer) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) of every example, from the raw strings: the completion and EOS are trained."""
    rows = []
    for prompt, completion in zip(PROMPT_COMPLETION["prompt"], PROMPT_COMPLETION["completion"]):
        prompt_ids = tokenizer(prompt)["input_ids"]
        ids = tokenizer(prompt + completion + tokenizer.eos_token)["input_ids"]
        assert ids[: len(prompt_ids)] == prompt_ids
        rows.append((ids, [IGNORE] * len(prompt_ids) + ids[len(prompt_ids):]))
    return rows


def _counts(rows) -> Counter:
    return Counter(label for _, labels in rows for label in labels[1:] if label != IGNORE)


def _weights(counts: Counter, vocab: int, alpha: float) -> torch.Tensor:
    """Eq. (3) in float64 on the normalised counts (only counted tokens are ever targets here)."""
    total = sum(counts.values())
    weights = torch.ones(vocab, dtype=torch.float64)
    for token, count in counts.items():
        weights[token] = (count / total + EPSILON) ** -alpha
    return weights


def _direct(model, rows, weights: torch.Tensor, grads: bool = False) -> dict:
    """PDL of `rows` as one step, each sequence scored alone by `model` (float64 copy): loss, ce, mean weight,
    and optionally the gradient of the loss."""
    model.zero_grad()
    num = den = nll_sum = 0
    tokens = 0
    with torch.set_grad_enabled(grads):
        for ids, labels in rows:
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].double()
            targets = torch.tensor(labels[1:])
            trained = targets != IGNORE
            nll = -torch.log_softmax(logits[trained], -1).gather(-1, targets[trained, None]).squeeze(-1)
            w = weights[targets[trained]]
            num, den = num + (w * nll).sum(), den + w.sum()
            nll_sum, tokens = nll_sum + nll.sum(), tokens + int(trained.sum())
    loss = num / den
    out = {"loss": loss.item(), "ce_loss": nll_sum.item() / tokens, "mean_weight": den.item() / tokens}
    if grads:
        loss.backward()
        out["grads"] = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return out


class _Record(TrainerCallback):
    """Parameters at the start of every optimizer step and gradients just before it is applied."""

    def __init__(self):
        self.params, self.grads = [], []

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.params.append({n: p.detach().clone() for n, p in model.named_parameters()})

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters()})


def _load(model, params: dict) -> None:
    named = dict(model.named_parameters())
    assert set(named) == set(params)
    with torch.no_grad():
        for name, value in params.items():
            named[name].copy_(value)


def _relative_error(got: dict, expected: dict) -> float:
    diff = sum(float((got[n].double() - expected[n]).pow(2).sum()) for n in expected)
    norm = sum(float(expected[n].pow(2).sum()) for n in expected)
    return (diff / norm) ** 0.5


def _logged_steps(trainer) -> list[dict]:
    return [entry for entry in trainer.state.log_history if "loss" in entry]


# ---- warm-up --------------------------------------------------------------------------------------------------------


def test_warmup_each_step_equals_direct_formula_at_its_alpha(tmp_path, tokenizer):
    """alpha 1 over 2 warm-up steps: steps 1, 2, 3 are PDL at alpha 0, 0.5, 1 of the model at the start of each step.
    Every step sees the whole data set (batch 4 of 4 rows)."""
    alpha, record = 1.0, _Record()
    args = cpu_args(tmp_path, loss_type="pdl", pdl_alpha=alpha, pdl_alpha_warmup_steps=2, max_steps=3,
                    per_device_train_batch_size=4, learning_rate=0.05, pdl_epsilon=EPSILON)
    model = make_tiny_model(len(tokenizer), seed=5)
    trainer = PDLSFTTrainer(model, args, Dataset.from_dict(PROMPT_COMPLETION), processing_class=tokenizer,
                            callbacks=[record])
    trainer.train()
    rows = _rows(tokenizer)
    logged = _logged_steps(trainer)
    assert [entry["pdl_alpha"] for entry in logged] == [0.0, 0.5, 1.0]
    assert logged[0]["loss"] == pytest.approx(logged[0]["ce_loss"], rel=1e-6)
    reference = make_tiny_model(len(tokenizer)).double()
    for entry, params, step_alpha in zip(logged, record.params, (0.0, 0.5, 1.0)):
        _load(reference, params)
        expected = _direct(reference, rows, _weights(_counts(rows), len(tokenizer), step_alpha))
        assert entry["loss"] == pytest.approx(expected["loss"], rel=1e-5), (step_alpha, entry, expected)
        assert entry["ce_loss"] == pytest.approx(expected["ce_loss"], rel=1e-5), (step_alpha, entry, expected)
        assert entry["pdl_mean_weight"] == pytest.approx(expected["mean_weight"], rel=1e-5), (step_alpha, entry)
    assert logged[2]["pdl_mean_weight"] > 2.0  # the weights really changed over the warm-up


# ---- packing --------------------------------------------------------------------------------------------------------

# Each layout trains the same 4 sequences in one optimizer step of 2 micro-batches (accumulated):
#   packing: TRL's bfd packing into rows of at most 40 tokens (2 rows, 4 sequences), padding-free collation;
#   padding_free: 2 sequences flattened into one row per micro-batch, position_ids restarting at 0;
#   unpacked: 2 right-padded sequences per micro-batch.
LAYOUTS = {
    "packing": dict(packing=True, max_length=40, per_device_train_batch_size=1),
    "padding_free": dict(padding_free=True, max_length=None, per_device_train_batch_size=2),
    "unpacked": dict(per_device_train_batch_size=2),
}


def _one_step(tmp_path, tokenizer, layout: str, alpha: float):
    record = _Record()
    args = cpu_args(
        tmp_path / layout, loss_type="pdl", pdl_alpha=alpha, pdl_epsilon=EPSILON, max_steps=1,
        gradient_accumulation_steps=2, optim="sgd", learning_rate=1.0, max_grad_norm=0.0, **LAYOUTS[layout],
    )
    trainer = PDLSFTTrainer(make_tiny_model(len(tokenizer), seed=3), args, Dataset.from_dict(PROMPT_COMPLETION),
                            processing_class=tokenizer, callbacks=[record])
    trainer.train()
    return trainer, record


def test_packing_and_padding_free_equal_the_same_tokens_unpacked(tmp_path, tokenizer):
    alpha = 1.0
    rows = _rows(tokenizer)
    counts = _counts(rows)
    reference = make_tiny_model(len(tokenizer), seed=3).double()
    expected = _direct(reference, rows, _weights(counts, len(tokenizer), alpha), grads=True)
    report = {}
    for layout in LAYOUTS:
        trainer, record = _one_step(tmp_path, tokenizer, layout, alpha)
        if layout == "packing":  # really packed: 4 sequences in fewer rows, position_ids restarting inside a row
            assert len(trainer.train_dataset) < len(rows) and "seq_lengths" in trainer.train_dataset.column_names
        table = {i: c for i, c in enumerate(trainer.pdl_table.counts.tolist()) if c}
        assert table == dict(counts), layout
        (logged,) = _logged_steps(trainer)
        error = _relative_error(record.grads[0], expected["grads"])
        report[layout] = (logged["loss"], expected["loss"], error)
        assert logged["loss"] == pytest.approx(expected["loss"], rel=1e-5), report
        assert logged["ce_loss"] == pytest.approx(expected["ce_loss"], rel=1e-5), report
        assert logged["pdl_mean_weight"] == pytest.approx(expected["mean_weight"], rel=1e-5), report
        assert error <= 1e-5, report
    print("\nlayout: logged PDL, independent unpacked PDL, relative gradient error", *report.items(), sep="\n")


def test_packing_counts_the_same_table_as_unpacked_for_text_data(tmp_path, tokenizer):
    """Language-modelling data (`text`): every token is trained except the first of each sequence."""
    texts = [p + c for p, c in zip(PROMPT_COMPLETION["prompt"], PROMPT_COMPLETION["completion"])]
    dataset = Dataset.from_dict({"text": texts})
    by_hand = Counter()
    for text in texts:
        by_hand.update(tokenizer(text + tokenizer.eos_token)["input_ids"][1:])
    tables = {}
    for layout in ("unpacked", "packing"):
        args = cpu_args(tmp_path / layout, loss_type="pdl", **{k: v for k, v in LAYOUTS[layout].items()
                                                               if k != "per_device_train_batch_size"})
        trainer = PDLSFTTrainer(make_tiny_model(len(tokenizer)), args, dataset, processing_class=tokenizer)
        tables[layout] = {i: c for i, c in enumerate(trainer.pdl_table.counts.tolist()) if c}
        # what the collator actually trains, over the whole data set
        trained = Counter()
        for batch in trainer.get_train_dataloader():
            targets = batch["labels"][:, 1:]
            trained.update(targets[targets != IGNORE].tolist())
        assert trained == by_hand, layout
    assert tables["unpacked"] == dict(by_hand)
    assert tables["packing"] == dict(by_hand), f"{sum(tables['packing'].values())} counted, {by_hand.total()} trained"


# ---- QLoRA ----------------------------------------------------------------------------------------------------------


def test_qlora_loss_and_lora_gradients_equal_direct_formula(tmp_path, tokenizer):
    """The trainer's own compute_loss on nf4 base weights against the direct formula on their float dequantisation."""
    pytest.importorskip("bitsandbytes")
    from test_qlora import _models, _tiny_float_model  # the 4-bit / dequantised model pair of tests/test_qlora.py

    alpha = 0.75
    _tiny_float_model(tokenizer, tmp_path / "tiny")
    quantized, reference = _models(tokenizer, tmp_path / "tiny")
    args = cpu_args(tmp_path, loss_type="pdl", pdl_alpha=alpha, pdl_epsilon=EPSILON)
    trainer = PDLSFTTrainer(quantized, args, Dataset.from_dict(PROMPT_COMPLETION), processing_class=tokenizer)
    # TRL casts QLoRA adapters to bf16; back in float32 (the same values) their gradients are not rounded to bf16
    for model in (trainer.model, reference):
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.data = param.data.to(torch.bfloat16).float()
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    got = {n: p.grad for n, p in trainer.model.named_parameters() if "lora_" in n}

    rows = _rows(tokenizer)
    reference.train()
    expected = _direct(reference, rows, _weights(_counts(rows), len(tokenizer), alpha), grads=True)
    expected_grads = {n: g for n, g in expected["grads"].items() if "lora_" in n}
    assert set(got) == set(expected_grads) and got
    error = _relative_error(got, expected_grads)
    print(f"\nQLoRA: loss {loss.item()!r}, direct {expected['loss']!r}, relative LoRA gradient error {error:.2e}")
    assert loss.item() == pytest.approx(expected["loss"], rel=1e-5)
    assert error <= 1e-5
