"""The most down- and up-weighted trained tokens of a task table under equation (3), the floor and a prior, and the
end-of-turn token's place in each: what each protection does to the weights before any training.

    python benchmarks/variant_weights.py --table TASK.safetensors [--prior PRIOR.safetensors] [--alpha 0.5]
        [--beta 0.5] [--model embedded:SmolLM2-135M-Instruct] [--top 10]

Prints one markdown table per setting: rank (1 = the smallest weight among the trained tokens), token, task count,
weight / count-weighted mean weight; then the end-of-turn token (the most trained special token) with its rank.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from pdl_plugin.frequency import FrequencyTable, special_token_ids
from pdl_plugin.run_weights import end_of_turn_id, weights_for_settings
from pdl_plugin.settings import EQUATION_3, PDLSettings


def ranked(table: FrequencyTable, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Trained ids from the smallest weight to the largest (ties: the more frequent first), and weight / mean."""
    counts = table.counts.double()
    relative = weights.double() / ((weights.double() * counts).sum() / counts.sum())
    trained = torch.nonzero(counts > 0).flatten()
    by_count = trained[torch.argsort(counts[trained], descending=True, stable=True)]
    return by_count[torch.argsort(relative[by_count], stable=True)], relative


def report(name: str, table: FrequencyTable, weights: torch.Tensor, tokenizer, eot: int | None, top: int) -> str:
    order, relative = ranked(table, weights)
    lines = [f"### {name}", "", "| | rank | token | count | weight / mean |", "|---|---|---|---|---|"]
    picks = [("down", range(top)), ("up", range(len(order) - 1, len(order) - 1 - top, -1))]
    for label, positions in picks:
        for position in positions:
            token = int(order[position])
            lines.append(f"| {label} | {position + 1:,} | {tokenizer.decode([token])!r} | "
                         f"{int(table.counts[token]):,} | {float(relative[token]):.3f} |")
    if eot is not None:
        rank = int((order == eot).nonzero()[0]) + 1
        lines.append(f"\nEnd-of-turn token {tokenizer.decode([eot])!r} (id {eot}): rank {rank:,} of {len(order):,} "
                     f"trained tokens, weight / mean {float(relative[eot]):.3f}.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", required=True)
    parser.add_argument("--prior")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--model", default="embedded:SmolLM2-135M-Instruct")
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from pdl_plugin.data import resolve_embedded_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_embedded_model(args.model))
    table = FrequencyTable.load(args.table)
    eot = end_of_turn_id(table, special_token_ids(tokenizer, len(table.counts)))
    base = PDLSettings(pdl_alpha=args.alpha, **EQUATION_3)
    variants = [(f"equation (3), alpha {args.alpha}", base, None),
                (f"floor pdl_min_weight 1, alpha {args.alpha}", replace(base, pdl_min_weight=1.0), None)]
    if args.prior:
        prior = FrequencyTable.load(args.prior)
        settings = replace(base, pdl_prior_path=args.prior, pdl_prior_mix=args.beta)
        variants.append((f"{prior.kind} prior, beta {args.beta}, alpha {args.alpha}", settings, prior))
    for name, settings, prior in variants:
        print(report(name, table, weights_for_settings(settings, table, prior=prior), tokenizer, eot, args.top))


if __name__ == "__main__":
    main()
