"""Benchmark: the cost of `pdl-freq --model-prior` against one evaluation pass over the same rows.

Both run on the same prepared training rows, with the same model, batch size and batching, in the same process:

- evaluation pass: `pdl_plugin.eval.evaluate.token_nll`, the forward `pdl-eval` uses for the validation
  cross-entropy (logits at the trained positions only, log-softmax, the target's NLL);
- model prior: `pdl_plugin.priors.model_prior_counts` (hidden states of the trained positions, then the LM head,
  softmax and sum over positions in bounded chunks, summed in float64).

Paired repetitions in alternating order (eval, prior, prior, eval, ...); the figure is median(prior) / median(eval).
The goal is at most 1.5.

    python benchmarks/model_prior_cost.py                                  # 64 rows of the offline summarization
    python benchmarks/model_prior_cost.py --save_rows rows.json            # prepare rows (needs TRL), save, stop
    python benchmarks/model_prior_cost.py --load_rows rows.json --model_config CONFIG.json --device cuda \\
        --dtype bfloat16                     # no TRL, no weights: a randomly initialised model of that shape (GPU)
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine

ROOT = Path(__file__).parents[1]
RECIPE = ROOT / "recipes" / "offline" / "summarization_lora.yaml"


def prepared_rows(recipe_path: str, count: int) -> list[dict]:
    """The first `count` training rows of the recipe, prepared as `pdl-freq` prepares them."""
    from pdl_plugin.preparation import prepare_with_report
    from pdl_plugin.recipe import first_rows, load_recipe_datasets, load_recipe_tokenizer, parse_recipe

    recipe = parse_recipe(["--config", recipe_path])
    train, _ = load_recipe_datasets(recipe)
    prepared, _, _ = prepare_with_report(first_rows(train, count), load_recipe_tokenizer(recipe), recipe.training)
    return [{"input_ids": list(row["input_ids"]), "labels": list(row["labels"])} for row in prepared]


def load_model(options):
    """The recipe's model (pdl-eval's loading), or a randomly initialised one of a config's shape."""
    dtype = getattr(torch, options.dtype)
    if options.model_config:
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.for_model(**json.loads(Path(options.model_config).read_text()))
        torch.manual_seed(0)
        with torch.device(options.device):  # built where it runs: a 7B model's random init on CPU takes minutes
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    else:
        from pdl_plugin.priors import load_base_model
        from pdl_plugin.recipe import parse_recipe

        model = load_base_model(parse_recipe(["--config", options.recipe, "--dtype", options.dtype]), "cpu")
    return model.to(options.device).eval()


def timed(function) -> tuple[float, object]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = function()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def compare(model, rows: list[dict], batch_size: int, repeats: int) -> dict:
    from pdl_plugin.eval.evaluate import token_nll
    from pdl_plugin.priors import model_prior_counts

    runs = {"eval": lambda batch: token_nll(model, batch, batch_size=batch_size),
            "prior": lambda batch: model_prior_counts(model, batch, batch_size=batch_size)}
    for run in runs.values():  # warm-up on one batch: allocator, kernels, caches
        run(rows[:batch_size])
    times, outputs = {name: [] for name in runs}, {}
    for repeat in range(repeats):
        for name in (("eval", "prior") if repeat % 2 == 0 else ("prior", "eval")):
            seconds, outputs[name] = timed(functools.partial(runs[name], rows))
            times[name].append(seconds)
    (targets, nll), (counts, positions) = outputs["eval"], outputs["prior"]
    assert positions == len(targets) and abs(float(counts.sum()) - positions) < 1e-3 * positions
    median = {name: statistics.median(values) for name, values in times.items()}
    return {"rows": len(rows), "tokens": sum(len(r["input_ids"]) for r in rows), "trained_positions": positions,
            "batch_size": batch_size, "repeats": repeats, "seconds": times, "median_s": median,
            "ratio_prior_over_eval": median["prior"] / median["eval"],
            "pair_ratios": [p / e for p, e in zip(times["prior"], times["eval"])], "val_ce": float(nll.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(RECIPE))
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=8, help="per_device_eval_batch_size's default")
    parser.add_argument("--save_rows", help="write the prepared rows to this JSON file and stop")
    parser.add_argument("--load_rows", help="read prepared rows from this JSON file (no TRL needed)")
    parser.add_argument("--model_config", help="a config.json: time a randomly initialised model of its shape")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    options = parser.parse_args()
    rows = (json.loads(Path(options.load_rows).read_text()) if options.load_rows
            else prepared_rows(options.recipe, options.rows))[: options.rows]
    if options.save_rows:
        Path(options.save_rows).write_text(json.dumps(rows))
        print(f"Wrote {len(rows)} prepared rows to {options.save_rows}")
        return
    model = load_model(options)
    result = compare(model, rows, options.batch_size, options.repeats)
    result |= {"model": options.model_config or options.recipe, "device": options.device, "dtype": options.dtype,
               "machine": machine() if options.device == "cpu" else torch.cuda.get_device_name()}
    print(f"{result['rows']} rows, {result['tokens']} tokens, {result['trained_positions']} trained positions, "
          f"{options.device} {options.dtype}: evaluation pass {result['median_s']['eval']:.3f} s, model prior "
          f"{result['median_s']['prior']:.3f} s (medians of {options.repeats}): ratio "
          f"{result['ratio_prior_over_eval']:.3f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
