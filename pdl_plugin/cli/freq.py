"""`pdl-freq`: count (or inspect, or merge) the frequency table of a recipe's trained tokens, or make a prior table.

    pdl-freq --config RECIPE.yaml --output table.safetensors [--plot curves.png] [--top 10] [--key value ...]
    pdl-freq --config RECIPE.yaml --table table.safetensors [--plot curves.png]     # inspect an existing table
    pdl-freq --config RECIPE.yaml --shard 0/4 --output part0.safetensors           # count one shard of four
    pdl-freq merge --output table.safetensors part0.safetensors part1.safetensors ...

Prior tables (`pdl_prior_path` + `pdl_prior_mix`), in the same file format; `--shard` and `merge` work alike:

    pdl-freq --config RECIPE.yaml --all-tokens --text_dataset NAME_OR_PATH [--text_column text] [--text_split train]
             [--text_config NAME] [--text_max_rows N] --output prior.safetensors   # every token of a text corpus
    pdl-freq --config RECIPE.yaml --model-prior --output prior.safetensors   # the base model's expected frequencies

A text data set is a .txt file, a .jsonl/.json/.parquet/.csv file, a folder of .txt (or data) files, a hub data set
(streamed), or `embedded:wikipedia` / `embedded:news` (`pip install --no-deps gensim==4.4.0`). The recipe gives the
tokenizer (and, for `--model-prior`, the base model, its dtype, the training data and its masking).

Streaming datasets (`dataset_streaming: true`) are counted batch by batch in bounded memory; `dataset_num_proc`
parallelises TRL's preparation, which costs far more than the counting itself.

The tokens are prepared by TRL's own preparation code with the recipe's settings, so the table equals the one the
trainer would count; no model weights are loaded (except by `--model-prior`).
"""

from __future__ import annotations

from . import require_trl_host

require_trl_host("pdl-freq")  # before the imports below, which load TRL

import argparse
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from ..errors import FrequencyTableError, PDLConfigError
from ..figures import check_figure_path
from ..files import check_can_create_file
from ..frequency import (
    TABLE_FILENAME,
    FrequencyTable,
    few_trained_ids_warning,
    merge_tables,
    tokenizer_fingerprint,
)
from ..recipe import count_recipe, load_recipe_tokenizer, model_vocab_rows, parse_recipe
from ..report import plot_rank_curves, weight_summary_table
from ..run_weights import settings_weights
from . import run_cli

_USAGE = ("usage: pdl-freq --config RECIPE.yaml (--output TABLE | --table TABLE) [--plot PNG] [--shard I/N] "
          "[--all-tokens --text_dataset NAME_OR_PATH | --model-prior], or pdl-freq merge --output TABLE PART [PART ...]")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # a bad value of our own flags: one line, as every error of ours
        raise PDLConfigError(f"{message}. {_USAGE}")


def _own_flags() -> argparse.ArgumentParser:
    # no abbreviations: a recipe override must never be taken for one of these flags
    parser = _Parser(prog="pdl-freq", description=__doc__, add_help=False, allow_abbrev=False)
    parser.add_argument("--output", help="where to write the counted table (.safetensors)")
    parser.add_argument("--table", help="inspect this existing table instead of counting")
    parser.add_argument("--plot", help="write rank-frequency and rank-weight curves (log-log) to this PNG")
    parser.add_argument("--top", type=int, default=8, help="how many most down-/up-weighted tokens to print")
    parser.add_argument("--shard", help="count only shard I of N of the data, as I/N")
    parser.add_argument("--all-tokens", "--all_tokens", dest="all_tokens", action="store_true",
                        help="a prior: count every token of the text data set --text_dataset")
    parser.add_argument("--model-prior", "--model_prior", dest="model_prior", action="store_true",
                        help="a prior: the base model's expected frequencies at the training set's trained positions")
    parser.add_argument("--text_dataset", help="text file, folder, hub data set or embedded:wikipedia")
    parser.add_argument("--text_column", default="text", help="the column of texts (default: text)")
    parser.add_argument("--text_split", default="train", help="the split of a hub data set (default: train)")
    parser.add_argument("--text_config", help="the configuration of a hub data set")
    parser.add_argument("--text_max_rows", type=int, help="count only the first N texts")
    return parser


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise PDLConfigError(f"--shard takes I/N with whole numbers, e.g. 0/4; got {text!r}.") from None
    if count < 1:
        raise PDLConfigError(f"--shard {text}: the number of shards N must be at least 1, e.g. 0/4.")
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


def _check_flags(flags, rest: list[str]) -> None:
    """Refuse a contradictory or incomplete command line before anything loads."""
    if "--config" not in rest:
        raise PDLConfigError(_USAGE)
    if not flags.output and not flags.table:
        raise PDLConfigError("Say where to write the table with `--output PATH`, or inspect one with `--table PATH`.")
    if flags.all_tokens and flags.model_prior:
        raise PDLConfigError("--all-tokens (a text corpus's tokens) and --model-prior (the base model's expected "
                             "frequencies) make two different priors: pass one of them.")
    text_flags = flags.text_dataset or flags.text_config or flags.text_max_rows is not None
    if text_flags and not flags.all_tokens:
        raise PDLConfigError("--text_dataset and the other --text_* options go with --all-tokens.")
    if flags.all_tokens and not flags.text_dataset:
        raise PDLConfigError("--all-tokens needs the text to count: `--text_dataset FILE_FOLDER_OR_HUB_NAME`.")
    if flags.table and flags.output:
        raise PDLConfigError("--table inspects an existing table and writes nothing; --output writes a counted one. "
                             "Pass one of them (to copy a table, copy its file).")
    if flags.table and (flags.all_tokens or flags.model_prior or flags.shard):
        raise PDLConfigError("--table inspects an existing table; --all-tokens, --model-prior and --shard count one "
                             "(with --output).")
    if flags.text_max_rows is not None and flags.text_max_rows < 1:
        raise PDLConfigError(f"--text_max_rows must be a whole number >= 1, got {flags.text_max_rows}.")


def _count(flags, recipe, tokenizer, err_console: Console):
    """Count the table the flags ask for: (table, warnings)."""
    shard = _parse_shard(flags.shard) if flags.shard else None
    if flags.all_tokens:
        from ..priors import TextSource, corpus_table

        source = TextSource(flags.text_dataset, flags.text_column, flags.text_split, flags.text_config,
                            flags.text_max_rows)
        return corpus_table(source, tokenizer, model_vocab_rows(recipe), shard), []
    if flags.model_prior:
        from ..priors import model_prior_table

        result = model_prior_table(recipe, tokenizer, shard)
    else:
        result = count_recipe(recipe, tokenizer, shard)
    if result.report is not None:
        for line in result.report.lines():
            err_console.print(f"[yellow]preparation:[/] {escape(line)}", highlight=False)
    if result.table.total == 0:
        raise PDLConfigError(
            "No token of the training set is trained (every label is -100): check the dataset's completion / "
            "assistant turns, `max_length`, and `completion_only_loss` / `assistant_only_loss`."
        )
    return result.table, result.warnings


def _inspect(path: str, recipe, tokenizer) -> tuple[FrequencyTable, list[str]]:
    table = FrequencyTable.load(path)
    table.check_compatible(tokenizer_fingerprint(tokenizer), model_vocab_rows(recipe), source=f"The table {path}")
    if table.kind != "trained_tokens" and not table.total > 0:
        raise FrequencyTableError(f"The prior {path} counts no token: an empty prior is no prior. Recount it with "
                                  "`pdl-freq --all-tokens` or `pdl-freq --model-prior`.")
    return table, [line for line in [few_trained_ids_warning(table, tokenizer)] if line and table.kind == "trained_tokens"]


def _describe(table: FrequencyTable) -> str:
    """One line on what a prior table holds, and how training uses it."""
    what = {"all_tokens": f"every token of {table.extra.get('source', 'a text corpus')}",
            "model_prior": f"the expected tokens of {table.extra.get('model', 'the base model')} at the trained "
                           "positions"}[table.kind]
    return (f"Prior table ({table.kind}): {what}, {table.total:,.0f} tokens. Train with `pdl_prior_path: PATH` and "
            "`pdl_prior_mix: BETA`; the weights below are this table's alone (as with pdl_prior_mix 1).")


def freq(argv: list[str]) -> FrequencyTable | None:
    if argv[:1] == ["merge"]:
        return merge(argv[1:])
    if {"-h", "--help"} & set(argv):
        Console().print(_own_flags().format_help(), highlight=False, markup=False)
        Console().print("Any other `--key value` overrides the recipe (pdl-sft's options).", highlight=False)
        return None
    flags, rest = _own_flags().parse_known_args(argv)
    _check_flags(flags, rest)
    if flags.output:
        _output_path(flags.output)
    if flags.plot:
        check_figure_path(flags.plot, "--plot")
    recipe = parse_recipe(rest)
    tokenizer = load_recipe_tokenizer(recipe)
    console = Console()
    err_console = Console(stderr=True, soft_wrap=True)
    if flags.table:
        table, warnings = _inspect(flags.table, recipe, tokenizer)
    else:
        table, warnings = _count(flags, recipe, tokenizer, err_console)
        if flags.shard:  # its place in the whole: `pdl-freq merge` refuses shards given twice
            table.extra["shard"] = "{}/{}".format(*_parse_shard(flags.shard))
        console.print(f"Wrote {table.save(flags.output)}")
    for line in warnings:
        err_console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False)
    if table.kind != "trained_tokens":
        console.print(_describe(table))
    weights = settings_weights(table, recipe.training.pdl_settings, tokenizer)
    console.print(weight_summary_table(table, weights, tokenizer, k=flags.top))
    if flags.plot:
        console.print(f"Plot: {plot_rank_curves(table, weights, recipe.training.pdl_alpha, Path(flags.plot))}")
    return table


def main(argv: list[str] | None = None) -> None:
    run_cli(freq, argv)


if __name__ == "__main__":
    main()
