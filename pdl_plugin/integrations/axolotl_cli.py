"""`axolotl pdl-freq CONFIG.yaml`: count the PDL frequency table with Axolotl's own dataset preprocessing.

Axolotl 0.19 serves third-party subcommands from the `axolotl.cli_commands` entry-point group (axolotl/cli/plugins.py);
pdl-plugin registers this command there (pyproject.toml), so in an environment with both installed:

    axolotl pdl-freq recipes/axolotl/offline_dialogue_lora.yaml [--output TABLE] [--plot PNG] [--top 8]
    axolotl pdl-freq recipes/axolotl/offline_dialogue_lora.yaml --table TABLE      # inspect an existing table
    python -m pdl_plugin.integrations.axolotl_cli CONFIG.yaml ...                  # the same, without the entry point

The config is loaded and validated as `axolotl train` does (plugins, `pdl_*` keys), the training set is tokenized and
masked by Axolotl's `load_datasets` (reusing `dataset_prepared_path`), and the positions whose label is not -100 (after
the causal shift) are counted: the same table `axolotl train` counts before training. No model weights are loaded.
The default output is `output_dir/pdl_frequency_table.safetensors`, where training looks for nothing by itself: pass
the file as `pdl_freq_path` to reuse it.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import PDLError
from ..frequency import TABLE_FILENAME


def count_table(cfg):
    """(table, tokenizer) for a validated Axolotl cfg, counted on Axolotl's prepared training set."""
    from axolotl.common.datasets import load_datasets
    from axolotl.loaders import load_tokenizer

    from ..engine import data_fingerprint
    from ..frequency import FrequencyTable, count_trained_tokens, tokenizer_fingerprint
    from .axolotl import expected_output_rows, masking_from_cfg, table_extra_from_cfg

    if cfg.get("rl") or cfg.get("pretraining_dataset"):
        raise PDLError("pdl-freq counts supervised (SFT) datasets; this config uses `rl` or `pretraining_dataset`.")
    tokenizer = load_tokenizer(cfg)
    meta = load_datasets(cfg=cfg)
    counts = count_trained_tokens(meta.train_dataset, expected_output_rows(cfg, tokenizer))
    table = FrequencyTable(counts, tokenizer_fingerprint(tokenizer), masking_from_cfg(cfg),
                           data_fingerprint(meta.train_dataset), extra=table_extra_from_cfg(cfg))
    return table, tokenizer


@click.command(name="pdl-freq")
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=str))
@click.option("--output", type=click.Path(dir_okay=False), help="where to write the table (default: output_dir)")
@click.option("--table", "existing", type=click.Path(exists=True), help="inspect this table instead of counting")
@click.option("--plot", type=click.Path(dir_okay=False), help="write rank-frequency / rank-weight curves to this PNG")
@click.option("--top", type=int, default=8, show_default=True, help="most down-/up-weighted tokens to print")
def pdl_freq(config: str, output: str | None, existing: str | None, plot: str | None, top: int) -> None:
    """Count (or inspect) the PDL frequency table of an Axolotl config's trained tokens."""
    from axolotl.cli.config import load_cfg
    from rich.console import Console

    from ..engine import with_command
    from ..frequency import FrequencyTable, settings_weights, tokenizer_fingerprint
    from ..report import plot_rank_curves, weight_summary_table
    from ..settings import PDLSettings
    from .axolotl import RECOUNT_COMMAND, expected_output_rows

    console = Console()
    try:
        cfg = load_cfg(config)
        if cfg.get("loss_type") != "pdl":
            raise PDLError(
                f"{config} does not set `loss_type: pdl` with `plugins: [pdl_plugin.integrations.axolotl.PDLPlugin]`; "
                "pdl-freq reads the PDL settings from there."
            )
        settings = PDLSettings.from_mapping(cfg)
        if existing:
            from axolotl.loaders import load_tokenizer

            tokenizer = load_tokenizer(cfg)
            table = FrequencyTable.load(existing)
            rows = expected_output_rows(cfg, tokenizer)
            table.check_compatible(tokenizer_fingerprint(tokenizer), rows, source=f"The table {existing}")
        else:
            table, tokenizer = count_table(cfg)
            if table.total == 0:
                raise PDLError("No token of the training set is trained (every label is -100): check the datasets' "
                               "`roles_to_train` / `train_on_inputs` and `sequence_len`.")
            path = table.save(Path(output) if output else Path(cfg.output_dir) / TABLE_FILENAME)
            console.print(f"Wrote {path} ({table.total:,} trained tokens). Reuse it with `pdl_freq_path: {path}`.")
        weights = settings_weights(table, settings, tokenizer)
        console.print(weight_summary_table(table, weights, tokenizer, k=top))
        if plot:
            console.print(f"Plot: {plot_rank_curves(table, weights, settings.pdl_alpha, Path(plot))}")
    except PDLError as err:
        raise click.ClickException(with_command(str(err), RECOUNT_COMMAND)) from None


if __name__ == "__main__":
    pdl_freq()
