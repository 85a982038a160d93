"""The chunked linear cross-entropy against full logits: values, entropy, top-1 and gradients."""

import pytest
import torch

from pdl_plugin.ops import cross_entropy, linear_cross_entropy


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_full_logits_in_values_and_gradients(monkeypatch, dtype):
    monkeypatch.setattr(cross_entropy, "TILE_BYTES", 4 * 7 * 50)  # 7-token tiles at vocabulary 50
    monkeypatch.setattr(cross_entropy, "_chunk_tokens", lambda vocab: cross_entropy.TILE_BYTES // (4 * vocab))
    torch.manual_seed(0)
    hidden = torch.randn(23, 8, dtype=dtype, requires_grad=True)  # 23 rows: the last of the 7-row tiles is partial
    weight = torch.randn(50, 8, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, 50, (23,))
    upstream = torch.rand(23, dtype=torch.float32) + 0.5  # e.g. PDL weights / denominator

    nll, entropy, is_top1 = linear_cross_entropy(hidden, weight, targets)
    (nll * upstream).sum().backward()

    h, w = hidden.detach().clone().requires_grad_(True), weight.detach().clone().requires_grad_(True)
    logits = (h @ w.T).double()
    expected = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    (expected * upstream.double()).sum().backward()
    probs = logits.softmax(-1)
    tolerance = {"rtol": 1e-6, "atol": 1e-7} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 5e-5}
    torch.testing.assert_close(nll.double(), expected.detach(), **tolerance)
    torch.testing.assert_close(entropy.double(), -(probs * probs.log()).sum(-1).detach(), **tolerance)
    assert torch.equal(is_top1, logits.argmax(-1) == targets)
    torch.testing.assert_close(hidden.grad, h.grad, **tolerance)
    torch.testing.assert_close(weight.grad, w.grad, **tolerance)


def test_frozen_weight_gets_no_gradient_work():
    hidden = torch.randn(4, 3, requires_grad=True)
    weight = torch.randn(6, 3)
    nll, _, _ = linear_cross_entropy(hidden, weight, torch.tensor([0, 1, 2, 5]))
    nll.sum().backward()
    assert hidden.grad is not None and weight.grad is None


def test_under_autocast_the_products_run_in_bf16_and_gradients_keep_the_input_dtype():
    torch.manual_seed(2)
    hidden = torch.randn(12, 16, requires_grad=True)
    weight = torch.randn(40, 16, requires_grad=True)
    targets = torch.randint(0, 40, (12,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        nll, _, _ = linear_cross_entropy(hidden, weight, targets)
    nll.sum().backward()
    assert hidden.grad.dtype == weight.grad.dtype == torch.float32
    h, w = hidden.detach().bfloat16().double().requires_grad_(True), weight.detach().bfloat16().double()
    w.requires_grad_(True)
    expected = torch.nn.functional.cross_entropy(h @ w.T, targets, reduction="none")
    expected.sum().backward()
    torch.testing.assert_close(nll.double(), expected.detach(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(hidden.grad.double(), h.grad, rtol=5e-2, atol=2e-2)


@pytest.mark.skipif(not hasattr(torch.nn, "LinearCrossEntropyOptions"), reason="torch < 2.13 has no linear_cross_entropy")
def test_torch_linear_cross_entropy_with_class_weights_is_pdl_and_matches_ours():
    """The basis of benchmarks/loss_step.py's torch_linear_ce: torch 2.13's chunked linear_cross_entropy with PDL's
    weights as class weights gives, per trained token, w(y) * nll, so its sum over sum w(y) is PDL's weighted mean;
    checked against the formula on full float64 logits, and its per-token NLL against ours, values and gradients."""
    from torch.nn import LinearCrossEntropyOptions

    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(96, 16, generator=generator, dtype=torch.float64)
    weight = torch.randn(500, 16, generator=generator, dtype=torch.float64) * 0.3
    targets = torch.randint(0, 500, (96,), generator=generator)
    class_weights = torch.rand(500, generator=generator, dtype=torch.float64) + 0.05

    def pdl_of(per_token_weighted_nll):
        return per_token_weighted_nll.sum() / class_weights[targets].sum()

    grads = {}
    for name in ("formula", "torch", "ours"):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        if name == "formula":
            nll = -torch.log_softmax(h @ w.T, dim=-1)[torch.arange(96), targets]
            loss = (class_weights[targets] * nll).sum() / class_weights[targets].sum()
        elif name == "torch":
            weighted = torch.nn.functional.linear_cross_entropy(h, w, targets, weight=class_weights, reduction="none",
                                                               options=LinearCrossEntropyOptions())
            loss = pdl_of(weighted)
        else:
            nll, _, _ = linear_cross_entropy(h, w, targets)
            loss = pdl_of(class_weights[targets] * nll)
        loss.backward()
        grads[name] = (loss.detach(), h.grad, w.grad)
    for name in ("torch", "ours"):
        for got, want in zip(grads[name], grads["formula"], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
