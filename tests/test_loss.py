"""The PDL sums on small tensors against the formula written out directly."""

import torch

from pdl_plugin.loss import pdl_sums, target_weights


def test_sums_match_a_direct_formula():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5)
    labels = torch.tensor([[1, -100, 4, 0], [-100, -100, 2, 2]])
    weights = torch.tensor([0.5, 2.0, 3.0, 1.0, 4.0])
    log_probs = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    log_probs = log_probs.masked_fill(labels == -100, 0)

    sums = pdl_sums(log_probs, labels, weights)

    terms = [(b, t) for b in range(2) for t in range(4) if labels[b, t] != -100]
    nll = {bt: -torch.log_softmax(logits[bt], -1)[labels[bt]] for bt in terms}
    expected_weighted = sum(weights[labels[bt]] * nll[bt] for bt in terms)
    torch.testing.assert_close(sums.weighted_nll, expected_weighted)
    torch.testing.assert_close(sums.nll, sum(nll.values()))
    torch.testing.assert_close(sums.weight, torch.tensor(2.0 + 4.0 + 0.5 + 3.0 + 3.0))
    assert int(sums.tokens) == 5


def test_ignored_positions_get_zero_weight_even_with_garbage_log_probs():
    labels = torch.tensor([[-100, 1]])
    log_probs = torch.tensor([[-123.0, -2.0]])
    sums = pdl_sums(log_probs, labels, torch.tensor([10.0, 3.0]))
    torch.testing.assert_close(sums.weighted_nll, torch.tensor(6.0))
    assert target_weights(labels, torch.tensor([10.0, 3.0])).tolist() == [[0.0, 3.0]]


def test_gradient_is_the_weighted_cross_entropy_gradient():
    torch.manual_seed(1)
    logits = torch.randn(6, 7, requires_grad=True)
    labels = torch.tensor([0, 3, -100, 6, 3, 1])
    weights = torch.rand(7) + 0.1
    log_probs = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[:, None]).squeeze(-1)
    sums = pdl_sums(log_probs, labels, weights)
    (sums.weighted_nll / sums.weight).backward()

    reference_logits = logits.detach().clone().requires_grad_(True)
    per_token = torch.nn.functional.cross_entropy(reference_logits, labels, reduction="none", ignore_index=-100)
    w = torch.where(labels == -100, 0.0, weights[labels.clamp(min=0)])
    ((w * per_token).sum() / w.sum()).backward()
    torch.testing.assert_close(logits.grad, reference_logits.grad)
