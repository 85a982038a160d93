"""`pdl-freq`: count (or inspect, or merge) the frequency table of a recipe's trained tokens.

    pdl-freq --config RECIPE.yaml --output table.safetensors [--plot curves.png] [--top 10] [--key value ...]
    pdl-freq --config RECIPE.yaml --table table.safetensors [--plot curves.png]     # inspect an existing table
    pdl-freq --config RECIPE.yaml --shard 0/4 --output part0.safetensors           # count one shard of four
    pdl-freq merge --output table.safetensors part0.safetensors part1.safetensors ...

Streaming datasets (`dataset_streaming: true`) are counted batch by batch in bounded memory; `dataset_num_proc`
parallelises TRL's preparation, which costs far more than the counting itself.

The tokens are prepared by TRL's own preparation code with the recipe's settings, so the table equals the one the
trainer would count; no model weights are loaded.
"""

from __future__ import annotations

from . import require_trl_host

require_trl_host("pdl-freq")  # before the imports below, which load TRL

import argparse
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from ..errors import PDLConfigError
from ..files import check_can_create_file
from ..frequency import (TABLE_FILENAME, FrequencyTable, few_trained_ids_warning, merge_tables, settings_weights,
                         tokenizer_fingerprint)
from ..report import plot_rank_curves, weight_summary_table
from ..recipe import count_recipe, load_recipe_tokenizer, model_vocab_rows, parse_recipe
from . import run_cli


def _own_flags() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pdl-freq", description=__doc__, add_help=False)
    parser.add_argument("--output", help="where to write the counted table (.safetensors)")
    parser.add_argument("--table", help="inspect this existing table instead of counting")
    parser.add_argument("--plot", help="write rank-frequency and rank-weight curves (log-log) to this PNG")
    parser.add_argument("--top", type=int, default=8, help="how many most down-/up-weighted tokens to print")
    parser.add_argument("--shard", help="count only shard I of N (contiguous) of the training split, as I/N")
    return parser


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise PDLConfigError(f"--shard takes I/N with whole numbers, e.g. 0/4; got {text!r}.") from None
    if not 0 <= index < count:
        raise PDLConfigError(f"--shard {text}: the shard index must be in 0..{count - 1}.")
    return index, count


def merge(argv: list[str]) -> FrequencyTable:
    parser = argparse.ArgumentParser(prog="pdl-freq merge", add_help=False)
    parser.add_argument("--output", required=True)
    parser.add_argument("tables", nargs="+")
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        raise PDLConfigError("usage: pdl-freq merge --output TABLE PART [PART ...]") from None
    _output_path(args.output)
    table = merge_tables([FrequencyTable.load(path) for path in args.tables])
    Console().print(f"Merged {len(args.tables)} tables ({table.total:,} tokens) into {table.save(args.output)}")
    return table


def _output_path(output: str) -> Path:
    """Where `--output` writes (a folder gets the standard name inside), refused before any counting if it cannot."""
    path = Path(output)
    if path.is_dir():
        path = path / TABLE_FILENAME
    return check_can_create_file(path, "--output")


def freq(argv: list[str]) -> FrequencyTable:
    if argv[:1] == ["merge"]:
        return merge(argv[1:])
    flags, rest = _own_flags().parse_known_args(argv)
    if "--config" not in rest:
        raise PDLConfigError(
            "usage: pdl-freq --config RECIPE.yaml (--output TABLE | --table TABLE) [--plot PNG] [--shard I/N], "
            "or pdl-freq merge --output TABLE PART [PART ...]"
        )
    if not flags.output and not flags.table:
        raise PDLConfigError("Say where to write the table with `--output PATH`, or inspect one with `--table PATH`.")
    if flags.output:
        _output_path(flags.output)
    if flags.plot:
        check_can_create_file(flags.plot, "--plot")
    recipe = parse_recipe(rest)
    tokenizer = load_recipe_tokenizer(recipe)
    console = Console()
    err_console = Console(stderr=True, soft_wrap=True)
    if flags.table:
        table = FrequencyTable.load(flags.table)
        table.check_compatible(tokenizer_fingerprint(tokenizer), model_vocab_rows(recipe), source=f"The table {flags.table}")
        warnings = [line for line in [few_trained_ids_warning(table, tokenizer)] if line]
    else:
        result = count_recipe(recipe, tokenizer, _parse_shard(flags.shard) if flags.shard else None)
        table, warnings = result.table, result.warnings
        if result.report is not None:
            for line in result.report.lines():
                err_console.print(f"[yellow]preparation:[/] {escape(line)}", highlight=False)
        if table.total == 0:
            raise PDLConfigError(
                "No token of the training set is trained (every label is -100): check the dataset's completion / "
                "assistant turns, `max_length`, and `completion_only_loss` / `assistant_only_loss`."
            )
        console.print(f"Wrote {table.save(flags.output)}")
    for line in warnings:
        err_console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False)
    weights = settings_weights(table, recipe.training.pdl_settings, tokenizer)
    console.print(weight_summary_table(table, weights, tokenizer, k=flags.top))
    if flags.plot:
        console.print(f"Plot: {plot_rank_curves(table, weights, recipe.training.pdl_alpha, Path(flags.plot))}")
    return table


def main(argv: list[str] | None = None) -> None:
    run_cli(freq, argv)


if __name__ == "__main__":
    main()
