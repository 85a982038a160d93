"""Benchmark 2: memory and time of the loss step (hidden states -> loss, forward + backward) against the naive loss
of the paper's code (full logits, upcast to float32, per-token cross-entropy times weights): our fused kernel
(`pdl_plugin.ops.linear_cross_entropy` on the trained positions, what PDLSFTTrainer uses) and, for reference, TRL's
chunked log-prob function as TRL runs it on CPU (every position) and on GPU (trained positions only), and torch's own
`torch.nn.functional.linear_cross_entropy` (torch >= 2.13; chunked, PDL's weights as class weights).

The head (output embedding) is either trainable (full finetuning: the step makes its weight gradient) or frozen
(`--head frozen`: `weight.requires_grad` False, the LoRA case, where no weight gradient is needed and only the hidden
states get one).

Each (method, size) runs in its own process so that peak memory is its own; "added memory" is the peak resident
memory during the step minus the resident memory with the inputs (hidden states, head weight and their gradient
buffers) already allocated. The peak is reset after the inputs are made (`reset_peak_rss`): before that fix (the
figures of docs/benchmarks.md section 2), the transient of making the inputs, about one float32 copy of the head,
counted as added memory and set a floor under the fused rows. Times are paired: both methods alternate in one process, median over repetitions.

    python benchmarks/loss_step.py                 # all sizes, trainable head
    python benchmarks/loss_step.py --vocab 49152 --tokens 2048
    python benchmarks/loss_step.py --head frozen --vocab 128256 --methods pdl_fused   # LoRA: no weight gradient
    python benchmarks/loss_step.py --vocab 128256 --methods pdl_fused torch_linear_ce  # ours against torch 2.13's
    python benchmarks/loss_step.py --dtype float32 --no-time ...   # CPUs without native bf16 (see docs/benchmarks.md)

`--dtype float32`: on CPUs without AVX512-BF16 / AMX, torch 2.13's bf16 matmul `grad_logits @ weight` (the backward
of both the naive loss and ours) runs some 30x slower than in float32, so a bf16 step at 128k x 8k takes hours there.
`--no-time` measures memory only (one step per method).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import machine, peak_rss_mb, rss_mb  # noqa: E402

HIDDEN = 2048
TRAINED_SHARE = 0.5  # half the positions are trained (the rest is prompt), as in typical SFT data


HEADS = ("trainable", "frozen")


def inputs(vocab: int, tokens: int, head: str = "trainable", dtype: str = "bfloat16", seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    dtype = getattr(torch, dtype)
    hidden = (torch.randn(tokens, HIDDEN, generator=generator) * 0.5).to(dtype).requires_grad_(True)
    weight = (torch.randn(vocab, HIDDEN, generator=generator) * 0.02).to(dtype)
    weight.requires_grad_(head == "trainable")  # frozen: the LoRA case, no weight gradient
    labels = torch.randint(0, vocab, (tokens,), generator=generator)
    labels[torch.rand(tokens, generator=generator) > TRAINED_SHARE] = -100
    token_weights = torch.rand(vocab, generator=generator) + 0.1
    # gradient buffers count as inputs: allocate them before measuring
    hidden.grad = torch.zeros_like(hidden)
    if weight.requires_grad:
        weight.grad = torch.zeros_like(weight)
    return hidden, weight, labels, token_weights


def naive(hidden, weight, labels, token_weights):
    logits = (hidden @ weight.T).float()
    nll = torch.nn.functional.cross_entropy(logits, labels, reduction="none", ignore_index=-100)
    w = torch.where(labels == -100, 0.0, token_weights[labels.clamp(min=0)])
    return (w * nll).sum() / w.sum()


def trl_chunked(hidden, weight, labels, token_weights, compact: bool):
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE, _ChunkedLogProbFunction

    mask = labels != -100
    h, t = (hidden[mask], labels[mask]) if compact else (hidden, labels.clamp(min=0))
    log_probs = _ChunkedLogProbFunction.apply(h, weight, None, t, 1.0, _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0,
                                              ("log_probs",))[0]
    if not compact:
        log_probs = log_probs.masked_fill(~mask, 0)
    w = token_weights[t] if compact else torch.where(mask, token_weights[labels.clamp(min=0)], 0.0)
    return (w * -log_probs).sum() / w.sum()


def pdl_fused(hidden, weight, labels, token_weights):
    from pdl_plugin.ops import linear_cross_entropy

    mask = labels != -100
    targets = labels[mask]
    nll, _, _ = linear_cross_entropy(hidden[mask], weight, targets)
    w = token_weights[targets]
    return (w * nll).sum() / w.sum()


def torch_linear_ce(hidden, weight, labels, token_weights):
    """torch >= 2.13's own fused loss, chunked (`LinearCrossEntropyOptions()`: the full logits never exist), on the
    trained positions, PDL's weights as class weights, per token (`reduction="none"`, as the engine needs them)."""
    from torch.nn import LinearCrossEntropyOptions

    mask = labels != -100
    targets = labels[mask]
    weighted_nll = torch.nn.functional.linear_cross_entropy(
        hidden[mask], weight, targets, weight=token_weights.to(hidden.dtype), reduction="none",
        options=LinearCrossEntropyOptions())
    return weighted_nll.sum() / token_weights[targets].sum()


METHODS = {
    "naive": naive,
    "trl_all_positions": lambda *a: trl_chunked(*a, compact=False),  # what TRL does on CPU
    "trl_trained_only": lambda *a: trl_chunked(*a, compact=True),  # what TRL does on GPU (Triton devices)
    "pdl_fused": pdl_fused,  # pdl_plugin.ops.linear_cross_entropy on trained positions: what PDLSFTTrainer uses
}
if hasattr(torch.nn.functional, "linear_cross_entropy") and hasattr(torch.nn, "LinearCrossEntropyOptions"):
    METHODS["torch_linear_ce"] = torch_linear_ce  # torch's own, chunked, trained positions (torch >= 2.13)


def step(method: str, tensors) -> float:
    start = time.perf_counter()
    METHODS[method](*tensors).backward()
    return time.perf_counter() - start


def reset_peak_rss() -> None:
    """Reset the kernel's high-water mark of this process (Linux >= 4.0), which `peak_rss_mb` reads: making the
    inputs (a float32 randn, scaled, then cast) peaks one or two head-sized temporaries above what stays allocated, a
    transient that would otherwise count as the step's own."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def child_memory(method: str, vocab: int, tokens: int, head: str, dtype: str) -> None:
    tensors = inputs(vocab, tokens, head, dtype)
    reset_peak_rss()
    base = rss_mb()
    step(method, tensors)
    print(json.dumps({"added_mb": peak_rss_mb() - base}))


def child_time(vocab: int, tokens: int, repeats: int, methods: list[str], head: str, dtype: str) -> None:
    tensors = inputs(vocab, tokens, head, dtype)
    for method in methods:  # warm-up
        step(method, tensors)
    times = {method: [] for method in methods}
    for _ in range(repeats):
        for method in methods:
            times[method].append(step(method, tensors))
    print(json.dumps(times))


def run_child(*args) -> dict:
    result = subprocess.run([sys.executable, __file__, "--child", *map(str, args)], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vocab", type=int, nargs="*", default=[49152, 128256, 151936])
    parser.add_argument("--tokens", type=int, nargs="*", default=[2048, 8192])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS),
                        help="which methods to run besides naive")
    parser.add_argument("--head", choices=HEADS, default="trainable",
                        help="frozen: the output embedding has requires_grad False (LoRA), no weight gradient")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                        help="dtype of hidden states and head (float32 on CPUs without native bf16 matmuls)")
    parser.add_argument("--no-time", action="store_true", help="measure memory only")
    parser.add_argument("--child", nargs="*")
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "memory":
            child_memory(rest[0], int(rest[1]), int(rest[2]), rest[3], rest[4])
        else:
            child_time(int(rest[0]), int(rest[1]), int(rest[2]), rest[3].split(","), rest[4], rest[5])
        return
    print(f"Machine: {machine()}; hidden size {HIDDEN}, {args.dtype} inputs, {TRAINED_SHARE:.0%} of positions trained, "
          f"{args.head} head\n")
    print("| head | vocab | tokens | method | added memory (MB) | memory / naive | time (s, median) "
          "| time / naive (median, min, max) |")
    print("|---|---|---|---|---|---|---|---|")
    for vocab in args.vocab:
        for tokens in args.tokens:
            methods = ["naive", *(m for m in args.methods if m != "naive")]
            memory = {method: run_child("memory", method, vocab, tokens, args.head, args.dtype)["added_mb"]
                      for method in methods}
            if args.no_time:
                for method in methods:
                    print(f"| {args.head} | {vocab} | {tokens} | {method} | {memory[method]:.0f} "
                          f"| {memory[method] / memory['naive']:.3f} | - | - |", flush=True)
                continue
            times = run_child("time", vocab, tokens, args.repeats, ",".join(methods), args.head, args.dtype)
            for method in methods:
                ratios = [t / n for t, n in zip(times[method], times["naive"])]
                ratios.sort()
                median = ratios[len(ratios) // 2]
                print(f"| {args.head} | {vocab} | {tokens} | {method} | {memory[method]:.0f} "
                      f"| {memory[method] / memory['naive']:.3f} | {sorted(times[method])[len(ratios) // 2]:.2f} "
                      f"| {median:.2f} ({ratios[0]:.2f}, {ratios[-1]:.2f}) |", flush=True)


if __name__ == "__main__":
    main()
