"""What PDL does to the token that ends a reply: its validation CE and probability, against the other tokens.

The study (docs/results.md) found PDL's replies running on to the length limit at larger alpha. The token that ends
every trained reply (`<|im_end|>` with a chat template) is trained once per row, so the training table counts it
among the most frequent tokens and PDL gives it one of the smallest weights. This script measures that directly on
finished runs: for each adapter, the validation cross-entropy of the last trained token of every row (the
end-of-reply token) and its mean probability, the CE of all the other trained tokens, and how much of the whole
validation CE the end-of-reply positions carry. Rows are prepared as `pdl-eval` prepares them (TRL's own code, the
recipe's settings) and scored with the same per-token log-likelihoods.

    python benchmarks/end_of_reply.py --config recipes/offline/code_lora.yaml \\
        outputs/study/code/alpha-0/seed-2 outputs/study/code/alpha-1/seed-2 [--max_rows 64] [--output FILE.md]

Each adapter folder must hold its training table (`pdl_frequency_table.safetensors`, saved by every `pdl-sft` run
with `loss_type: pdl`, alpha 0 included).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def summarize(targets: np.ndarray, nll: np.ndarray, mask: np.ndarray, counts: np.ndarray) -> dict:
    """CE and probability at the end-of-reply positions, CE elsewhere, and the end token's place in the table."""
    from pdl_plugin.eval.end_of_reply import end_of_reply_summary

    ends = end_of_reply_summary(targets, nll, mask)
    end_ids = np.array(ends["end_tokens"])
    trained = counts.sum()
    return {
        "rows": ends["rows"],
        "tokens": int(targets.size),
        "end_tokens": ends["end_tokens"],
        "end_ce": ends["ce"],
        "end_probability": ends["probability"],
        "other_ce": ends["other_ce"],
        "ce": float(nll.mean()),
        "end_share_of_ce": ends["share_of_ce"],
        "end_count_in_table": int(counts[end_ids].sum()),
        "end_share_of_table": float(counts[end_ids].sum() / trained) if trained else float("nan"),
        "end_rank_in_table": int((counts > counts[end_ids].max()).sum()) + 1,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the recipe the adapters were trained with")
    parser.add_argument("adapters", nargs="+", help="output folders of pdl-sft runs (adapter + training table)")
    parser.add_argument("--max_rows", type=int, default=64, help="first N validation rows (default 64, the study's)")
    parser.add_argument("--output", default=None, help="also write the table to this markdown file")
    options = parser.parse_args(argv)

    from pdl_plugin.eval.end_of_reply import end_of_reply_mask
    from pdl_plugin.eval.evaluate import load_for_eval, load_validation_split, token_nll
    from pdl_plugin.eval.generation import preparation_args
    from pdl_plugin.frequency import TABLE_FILENAME, FrequencyTable
    from pdl_plugin.preparation import prepare_like_sft_trainer
    from pdl_plugin.recipe import first_rows, parse_recipe

    recipe = parse_recipe(["--config", options.config])
    _, validation = load_validation_split(recipe)
    validation = first_rows(validation, options.max_rows)
    rows = [
        "| adapter | end-of-reply CE | mean p(end) | CE of the other tokens | CE, all | end positions' share "
        "of the CE | end token's share of the training table (rank) |",
        "|---|---|---|---|---|---|---|",
    ]
    for adapter in options.adapters:
        model, tokenizer = load_for_eval(adapter, recipe)
        table = FrequencyTable.load(Path(adapter) / TABLE_FILENAME)
        prepared, _ = prepare_like_sft_trainer(validation, tokenizer, preparation_args(recipe.training),
                                               name="validation")
        targets, nll = token_nll(model, prepared)
        result = summarize(targets, nll, end_of_reply_mask(r["labels"] for r in prepared), table.counts.numpy())
        names = ", ".join(tokenizer.convert_ids_to_tokens(result["end_tokens"])).replace("|", "\\|")  # markdown cells
        rows.append(
            f"| {adapter} | {result['end_ce']:.3f} | {result['end_probability']:.3g} | {result['other_ce']:.3f} | "
            f"{result['ce']:.3f} | {result['end_share_of_ce']:.1%} | {names}: {result['end_share_of_table']:.2%} "
            f"({result['end_rank_in_table']}) |"
        )
        print(rows[-1], flush=True)
        del model
    title = (f"End-of-reply token on the first {options.max_rows} validation rows of `{options.config}` "
             f"({result['rows']} with a trained token; `python benchmarks/end_of_reply.py`)")
    text = "\n".join([title, "", *rows]) + "\n"
    print(text)
    if options.output:
        Path(options.output).write_text(text)


if __name__ == "__main__":
    main()
