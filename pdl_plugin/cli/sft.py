"""`pdl-sft --config RECIPE.yaml [--key value ...]`: TRL's `trl sft` with `loss_type: pdl` available."""

from __future__ import annotations

from . import require_trl_host

require_trl_host("pdl-sft")  # before the imports below, which load TRL

from pathlib import Path

from rich.console import Console
from rich.markup import escape

from ..errors import PDLConfigError
from ..counting import few_trained_ids_warning
from ..frequency import TABLE_FILENAME
from ..report import weight_summary_table
from ..engine import SETTINGS_FILENAME
from ..trainer import PDLSFTTrainer
from ..recipe import run_recipe
from . import run_cli

USAGE = "usage: pdl-sft --config RECIPE.yaml [--key value ...]"


def train(argv: list[str]) -> PDLSFTTrainer:
    if not argv:
        raise PDLConfigError(f"{USAGE}. Any field of TRL's SFTConfig, ModelConfig, ScriptArguments and pdl_* works.")
    trainer = run_recipe(argv)
    if trainer.accelerator.is_main_process:
        _print_summary(trainer)
    trainer.end()
    return trainer


def _print_summary(trainer: PDLSFTTrainer) -> None:
    console = Console()
    output_dir = Path(trainer.args.output_dir).resolve()
    console.print(f"\n[bold green]Done.[/] Adapter/model saved in {output_dir}")
    if trainer.pdl_table is None:
        return
    args = trainer.args
    console.print(f"Frequency table: {output_dir / TABLE_FILENAME}\nPDL settings:    {output_dir / SETTINGS_FILENAME}")
    console.print(
        f"PDL alpha={args.pdl_alpha} epsilon={args.pdl_epsilon} normalize={args.pdl_normalize} "
        f"max_weight={args.pdl_max_weight} min_weight={args.pdl_min_weight} ce_mix={args.pdl_ce_mix}"
        + (f" prior={args.pdl_prior_path} (mix {args.pdl_prior_mix})" if args.pdl_prior_path else "")
        + f"; {trainer.pdl_table.total:,} trained tokens counted ({trainer.pdl_table.masking}), "
        f"{int((trainer.pdl_table.counts > 0).sum()):,} distinct."
    )
    console.print(weight_summary_table(trainer.pdl_table, trainer.pdl_weights, trainer.processing_class))
    report = getattr(trainer, "pdl_preparation_report", None)  # a preparation.PreparationReport, when the trainer has one
    for line in report.lines() if report is not None else []:
        console.print(f"[yellow]preparation:[/] {escape(line)}", highlight=False)
    few = few_trained_ids_warning(trainer.pdl_table, trainer.processing_class, source=args.pdl_freq_path)
    if few:
        console.print(f"[yellow]warning:[/] {escape(few)}", highlight=False, soft_wrap=True)  # its path unbroken


def main(argv: list[str] | None = None) -> None:
    run_cli(train, argv)


if __name__ == "__main__":
    main()
