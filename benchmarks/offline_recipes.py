"""Figures of the offline recipe twins on this machine: data sizes, trained tokens counted, vocabulary share seen,
alpha, and the wall time of their training steps. Prints a markdown table.

    python benchmarks/offline_recipes.py [recipes/offline/dialogue_lora.yaml ...]
"""

from __future__ import annotations

import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from pdl_plugin.recipe import load_recipe_datasets, parse_recipe
from pdl_plugin.cli.sft import train

RECIPES = sorted((Path(__file__).parents[1] / "recipes" / "offline").glob("*.yaml"))


def measure(path: Path) -> dict:
    train_split, eval_split = load_recipe_datasets(parse_recipe(["--config", str(path), "--eval_strategy", "steps"]))
    with tempfile.TemporaryDirectory() as output_dir:
        start = time.perf_counter()
        trainer = train(["--config", str(path), "--output_dir", output_dir])
        wall = time.perf_counter() - start
    table, args = trainer.pdl_table, trainer.args
    return {
        "recipe": path.stem,
        "train / validation records": f"{len(train_split):,} / {len(eval_split):,}",
        "trained tokens counted": f"{table.total:,}",
        "vocabulary seen": f"{int((table.counts > 0).sum()):,} of {table.vocab_size:,} "
        f"({float((table.counts > 0).float().mean()):.1%})",
        "alpha": args.pdl_alpha,
        "steps": trainer.state.global_step,
        "train time (s)": f"{trainer.state.log_history[-1]['train_runtime']:.0f}",
        "wall time incl. load and count (s)": f"{wall:.0f}",
    }


def main(paths: list[str]) -> None:
    rows = [measure(Path(p)) for p in (paths or RECIPES)]
    print(f"\nMachine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}")
    print("| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]))
    for row in rows:
        print("| " + " | ".join(str(v) for v in row.values()) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
