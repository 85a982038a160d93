"""Benchmark 3: frequency counting. (a) The counting step alone, in tokens per second, on a synthetic Arrow label
column; (b) `pdl-freq`'s work end to end (TRL's preparation + counting) against TRL's preparation alone, on the
offline datasets. Paired repetitions, medians.

    python benchmarks/frequency_count.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, ratio_line  # noqa: E402

from pdl_plugin.frequency import count_label_array, count_trained_tokens  # noqa: E402

ROOT = Path(__file__).parents[1]


def synthetic_labels(rows: int, length: int, vocab: int, seed: int = 0) -> pa.ListArray:
    rng = np.random.default_rng(seed)
    values = rng.zipf(1.3, size=rows * length) % vocab
    values[rng.random(rows * length) < 0.3] = -100  # a prompt share that is not trained
    offsets = np.arange(0, rows * length + 1, length, dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.astype(np.int64)))


def counting_throughput(repeats: int = 5) -> None:
    labels = synthetic_labels(rows=100_000, length=512, vocab=151_936)
    tokens = len(labels.flatten())
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        count_label_array(labels, 151_936)
        rates.append(tokens / (time.perf_counter() - start))
    print(f"Counting alone: {tokens / 1e6:.1f}M labels, 152k vocabulary: median "
          f"{statistics.median(rates) / 1e6:.1f}M tokens/s (min {min(rates) / 1e6:.1f}M, max {max(rates) / 1e6:.1f}M)")


def end_to_end(recipe: str, repeats: int = 3) -> None:
    import datasets
    from transformers import AutoTokenizer

    from pdl_plugin.recipe import load_recipe_datasets, parse_recipe
    from pdl_plugin.preparation import prepare_like_sft_trainer

    datasets.disable_caching()  # otherwise the second preparation is a cache hit
    parsed = parse_recipe(["--config", str(ROOT / recipe)])
    train, _ = load_recipe_datasets(parsed)
    ratios, prepared = [], None
    for _ in range(repeats):
        tokenizer = AutoTokenizer.from_pretrained(parsed.model.model_name_or_path)
        start = time.perf_counter()
        prepared, _ = prepare_like_sft_trainer(train, tokenizer, parsed.training)
        preparation = time.perf_counter() - start
        start = time.perf_counter()
        counts = count_trained_tokens(prepared, len(tokenizer))
        counting = time.perf_counter() - start
        ratios.append((preparation + counting) / preparation)
    print(f"{Path(recipe).stem}: {len(train):,} records, {int(counts.sum()):,} trained tokens; preparation "
          f"{preparation:.1f} s, counting {counting:.2f} s; " + ratio_line("(preparation + counting) / preparation",
                                                                             ratios))


def main() -> None:
    print(f"Machine: {machine()}")
    counting_throughput()
    for recipe in ("recipes/offline/dialogue_lora.yaml", "recipes/offline/code_lora.yaml",
                   "recipes/offline/summarization_lora.yaml"):
        end_to_end(recipe)


if __name__ == "__main__":
    main()
