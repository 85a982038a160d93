"""Per-token cross-entropy of `hidden @ weight.T` in chunks of tokens, never holding the full logits.

The caller passes only the trained positions, so prompt tokens cost nothing. Forward keeps one `(chunk, vocab)`
float32 tile at a time and saves the log-sum-exp per token; backward recomputes each tile and turns it into the
logits gradient in place: four matrix products per tile against the naive three, on fewer rows. The weight gradient
is accumulated in the weight's dtype, as Liger-Kernel's fused linear cross-entropy does.
"""

from __future__ import annotations

import torch

TILE_BYTES = 64 * 2**20  # float32 logits per tile: small enough to stay out of the memory peak


def _chunk_tokens(vocab: int) -> int:
    return max(16, TILE_BYTES // (4 * vocab))


class LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor):
        # Under autocast, run the products in the autocast dtype in forward and backward alike (backward runs outside
        # autocast), so the recomputed tiles match the saved log-sum-exp
        device_type = hidden.device.type
        compute = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
        ctx.input_dtypes = (hidden.dtype, weight.dtype)
        with torch.autocast(device_type, enabled=False):
            return LinearCrossEntropy._forward(ctx, hidden.to(compute), weight.to(compute), targets)

    @staticmethod
    def _forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor):
        tokens, vocab = hidden.shape[0], weight.shape[0]
        chunk = _chunk_tokens(vocab)
        accumulate = torch.promote_types(hidden.dtype, torch.float32)  # bf16/fp16 logits are upcast, as usual
        nll = torch.empty(tokens, dtype=accumulate, device=hidden.device)
        lse = torch.empty_like(nll)
        entropy = torch.empty_like(nll)
        is_top1 = torch.empty(tokens, dtype=torch.bool, device=hidden.device)
        for start in range(0, tokens, chunk):
            rows = slice(start, start + chunk)
            logits = (hidden[rows] @ weight.T).to(accumulate)
            tile_lse = torch.logsumexp(logits, dim=-1)
            target_logits = logits.gather(1, targets[rows, None]).squeeze(1)
            is_top1[rows] = logits.argmax(dim=-1) == targets[rows]
            nll[rows] = tile_lse - target_logits
            lse[rows] = tile_lse
            probs_dot_logits = (logits - tile_lse[:, None]).exp_().mul_(logits).sum(dim=-1)
            entropy[rows] = tile_lse - probs_dot_logits
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.mark_non_differentiable(entropy, is_top1)
        return nll, entropy, is_top1

    @staticmethod
    def backward(ctx, grad_nll, _grad_entropy, _grad_top1):
        with torch.autocast(grad_nll.device.type, enabled=False):
            grad_hidden, grad_weight = LinearCrossEntropy._backward(ctx, grad_nll)
        hidden_dtype, weight_dtype = ctx.input_dtypes
        return (
            None if grad_hidden is None else grad_hidden.to(hidden_dtype),
            None if grad_weight is None else grad_weight.to(weight_dtype),
            None,
        )

    @staticmethod
    def _backward(ctx, grad_nll):
        hidden, weight, targets, lse = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros_like(weight) if need_weight else None
        chunk = _chunk_tokens(weight.shape[0])
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            grad_logits = (hidden[rows] @ weight.T).to(lse.dtype).sub_(lse[rows, None]).exp_()  # softmax
            grad_logits[torch.arange(grad_logits.shape[0], device=hidden.device), targets[rows]] -= 1.0
            grad_logits = grad_logits.mul_(grad_nll[rows, None]).to(hidden.dtype)
            if need_hidden:
                grad_hidden[rows] = grad_logits @ weight
            if need_weight:
                grad_weight.addmm_(grad_logits.T, hidden[rows])
        return grad_hidden, grad_weight


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(nll, entropy, is_top1)` per row of `hidden` (N, H) against `targets` (N,); nll (at least float32) has a gradient.

    Equivalent to `cross_entropy((hidden @ weight.T).float(), targets, reduction="none")` plus the entropy of each
    row's distribution and whether the target is its argmax (both without gradient, for metrics).
    """
    return LinearCrossEntropy.apply(hidden, weight, targets)
