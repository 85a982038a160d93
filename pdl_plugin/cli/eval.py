"""`pdl-eval --adapter DIR --config RECIPE.yaml`: generate on the recipe's validation prompts and score them.

Reports, against the references: ROUGE-L, distinct-1/2, repetition, mean self-information of the generated tokens
under the TRAINING frequency table, rare-token recall, validation cross-entropy (also by training-frequency bucket) and
PDL, and for code the parse rate (pass@1 when the data ships a `test` column). Writes JSON and prints a table.
"""

from __future__ import annotations

from . import require_trl_host

require_trl_host("pdl-eval")  # before the imports below, which load TRL

import argparse
from pathlib import Path

from rich.console import Console

from ..errors import PDLConfigError
from ..eval.settings import TASK_TYPES, EvalSettings
from ..files import check_can_create_file, write_json
from ..frequency import TABLE_FILENAME, FrequencyTable
from ..recipe import parse_recipe
from ..run_folder import missing_table_reason
from . import run_cli

USAGE = "pdl-eval --adapter DIR --config RECIPE.yaml [--output FILE.json] [options] [--recipe_key value ...]"


class _Parser(argparse.ArgumentParser):
    def __init__(self, **kwargs):
        super().__init__(allow_abbrev=False, **kwargs)  # an abbreviation must not swallow a recipe override

    def error(self, message):
        raise PDLConfigError(f"{message}. Usage: {USAGE}")


def eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The generation/evaluation options shared by pdl-eval and pdl-compare (defaults: `EvalSettings`')."""
    defaults = EvalSettings()
    parser.add_argument("--max_prompts", type=int, default=defaults.max_prompts,
                        help="validation prompts to generate on (first N)")
    parser.add_argument("--max_new_tokens", type=int, default=defaults.max_new_tokens)
    parser.add_argument("--eval_batch_size", type=int, default=defaults.batch_size)
    parser.add_argument("--eval_seed", type=int, default=None, help="sampling seed (default: the recipe's seed)")
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument("--top_p", type=float, default=defaults.top_p)
    parser.add_argument("--no_sampled", action="store_true", help="greedy only")
    parser.add_argument("--reference_alpha", type=float, default=None,
                        help="alpha of the reported validation PDL (default: the recipe's pdl_alpha)")
    parser.add_argument("--task_type", default=defaults.task_type, choices=TASK_TYPES,
                        help="code: stop sequences at the next top-level statement, parse rate (default auto: code "
                        "when the validation rows have a `test`/`entry_point` column or the data is embedded:code)")
    return parser


def settings_from(options, recipe) -> EvalSettings:
    """The evaluation settings of the parsed options (checked where they are declared)."""
    return EvalSettings(
        max_prompts=options.max_prompts, max_new_tokens=options.max_new_tokens, batch_size=options.eval_batch_size,
        seed=options.eval_seed if options.eval_seed is not None else recipe.training.seed,
        temperature=options.temperature, top_p=options.top_p, sampled=not options.no_sampled,
        reference_alpha=options.reference_alpha, task_type=options.task_type,
    )


def evaluate_cli(argv: list[str]) -> dict:
    from ..eval.evaluate import (EVAL_TABLE_HINT, check_adapter_folder, evaluate_model, format_table, load_for_eval,
                                 load_validation_split)

    parser = eval_arguments(_Parser(prog="pdl-eval", usage=USAGE))
    parser.add_argument("--adapter", required=True, help="output_dir of a pdl-sft run (LoRA adapter or full model)")
    parser.add_argument("--config", required=True, help="the recipe the adapter was trained with")
    parser.add_argument("--table", default=None, help=f"training frequency table (default: ADAPTER/{TABLE_FILENAME})")
    parser.add_argument("--output", default=None, help="JSON file to write (default: ADAPTER/eval.json)")
    options, overrides = parser.parse_known_args(argv)
    recipe = parse_recipe(["--config", options.config, *overrides])
    check_adapter_folder(options.adapter)  # before the table: a wrong --adapter is the problem to name
    table_path = Path(options.table) if options.table else Path(options.adapter) / TABLE_FILENAME
    if not table_path.is_file():
        # A run folder's table comes with its adapter, at its final save (run_folder.py): none means no finished run
        why = "" if options.table else f" ({missing_table_reason(options.adapter)})"
        raise PDLConfigError(
            f"No training frequency table at {table_path}{why}: self-information, rare-token recall and validation "
            "PDL need the table of the TRAINING data. Evaluate a finished `loss_type: pdl` run (alpha 0 is plain "
            "cross-entropy and saves one), or count one with `pdl-freq --config RECIPE.yaml --output TABLE` and pass "
            "`--table TABLE`."
        )
    table = FrequencyTable.load(table_path, hint=EVAL_TABLE_HINT)
    settings = settings_from(options, recipe)
    output = Path(options.output) if options.output else Path(options.adapter) / "eval.json"
    check_can_create_file(output, "--output")  # before the model loads and the whole evaluation runs
    _, validation = load_validation_split(recipe)  # a missing split too
    model, tokenizer = load_for_eval(options.adapter, recipe)
    result = evaluate_model(model, tokenizer, recipe, table, settings, validation_dataset=validation)
    result["adapter"] = str(options.adapter)
    write_json(output, result)
    console = Console()
    console.print(format_table(result))
    if result.get("prompts_cut_by_training"):
        console.print(
            f"{result['prompts_cut_by_training']} of {result['prompts']} prompts end in text that training's "
            "tokenization merged into the completion (TRL's 'prompt is not a prefix' warning): generation starts from "
            "the context training used, without that end."
        )
    console.print(f"Results: {output}")
    return result


def main(argv: list[str] | None = None) -> None:
    run_cli(evaluate_cli, argv)


if __name__ == "__main__":
    main()
