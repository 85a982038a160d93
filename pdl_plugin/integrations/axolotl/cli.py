"""`axolotl pdl-freq CONFIG.yaml`: count the PDL frequency table with Axolotl's own dataset preprocessing.

Axolotl 0.19 serves third-party subcommands from the `axolotl.cli_commands` entry-point group (axolotl/cli/plugins.py);
pdl-plugin registers this command there (pyproject.toml), so in an environment with both installed:

    axolotl pdl-freq recipes/axolotl/offline_dialogue_lora.yaml [--output TABLE] [--plot PNG] [--top 8]
    axolotl pdl-freq recipes/axolotl/offline_dialogue_lora.yaml --table TABLE      # inspect an existing table
    axolotl pdl-freq CONFIG.yaml --all-tokens --text-dataset NAME_OR_PATH [--text-column text] --output PRIOR
    axolotl pdl-freq CONFIG.yaml --model-prior --output PRIOR                      # the base model's expectation
    python -m pdl_plugin.integrations.axolotl.cli CONFIG.yaml ...                  # the same, without the entry point

The config is loaded and validated as `axolotl train` does (plugins, `pdl_*` keys), the training set is tokenized and
masked by Axolotl's `load_datasets` (reusing `dataset_prepared_path`), and the positions whose label is not -100 (after
the causal shift) are counted: the same table `axolotl train` counts before training. No model weights are loaded
(except by `--model-prior`). The default output is `output_dir/pdl_frequency_table.safetensors` (a prior's:
`output_dir/pdl_prior_KIND.safetensors`), where training looks for nothing by itself: pass the file as `pdl_freq_path`
(a prior as `pdl_prior_path`) to reuse it.

The two priors are the `pdl-freq` ones (see `pdl_plugin.priors`): `--all-tokens` counts every token of a text data set
with the config's tokenizer (no model, no Axolotl preprocessing); `--model-prior` loads `base_model` with the config's
dtype (no adapter) and sums its softmax at the trained positions of Axolotl's prepared training set.
"""

from __future__ import annotations

from pathlib import Path

import click

from ...errors import PDLError
from ...frequency import TABLE_FILENAME


def count_table(cfg):
    """(table, tokenizer) for a validated Axolotl cfg, counted on Axolotl's prepared training set."""
    from axolotl.common.datasets import load_datasets
    from axolotl.loaders import load_tokenizer

    from ...engine import data_fingerprint
    from ...frequency import FrequencyTable, count_trained_tokens, tokenizer_fingerprint
    from .cfg import expected_output_rows, masking_from_cfg, table_extra_from_cfg

    _check_supervised(cfg)
    tokenizer = load_tokenizer(cfg)
    meta = load_datasets(cfg=cfg)
    counts = count_trained_tokens(meta.train_dataset, expected_output_rows(cfg, tokenizer))
    table = FrequencyTable(counts, tokenizer_fingerprint(tokenizer), masking_from_cfg(cfg),
                           data_fingerprint(meta.train_dataset), extra=table_extra_from_cfg(cfg))
    return table, tokenizer


def _check_supervised(cfg) -> None:
    if cfg.get("rl") or cfg.get("pretraining_dataset"):
        raise PDLError("pdl-freq counts supervised (SFT) datasets; this config uses `rl` or `pretraining_dataset`.")


def corpus_prior(cfg, source):
    """(all_tokens prior, tokenizer): every token of the text data set `source`, with the config's tokenizer."""
    from axolotl.loaders import load_tokenizer

    from ...priors import corpus_table
    from .cfg import expected_output_rows

    tokenizer = load_tokenizer(cfg)
    return corpus_table(source, tokenizer, expected_output_rows(cfg, tokenizer)), tokenizer


def model_prior(cfg):
    """(model_prior table, tokenizer): `base_model` (config dtype, no adapter, on the GPU when there is one) summed
    softmax at the trained positions of Axolotl's prepared training set."""
    import torch
    from axolotl.common.datasets import load_datasets
    from axolotl.loaders import load_tokenizer
    from transformers import AutoModelForCausalLM

    from ...frequency import FrequencyTable, data_fingerprint, tokenizer_fingerprint
    from ...priors import model_prior_counts
    from .cfg import expected_output_rows, masking_from_cfg, table_extra_from_cfg

    _check_supervised(cfg)
    tokenizer = load_tokenizer(cfg)
    meta = load_datasets(cfg=cfg)
    dtype = cfg.get("torch_dtype") or torch.float32
    model = AutoModelForCausalLM.from_pretrained(cfg.base_model, dtype=dtype, revision=cfg.get("revision_of_model"),
                                                 trust_remote_code=bool(cfg.get("trust_remote_code")))
    rows = expected_output_rows(cfg, tokenizer)
    if model.get_output_embeddings().weight.shape[0] != rows:
        model.resize_token_embeddings(rows)  # as Axolotl's model loader does for added tokens
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    counts, positions = model_prior_counts(model, meta.train_dataset, int(cfg.get("micro_batch_size") or 8))
    if positions == 0:
        raise PDLError("No token of the training set is trained (every label is -100): check the datasets' "
                       "`roles_to_train` / `train_on_inputs` and `sequence_len`.")
    extra = table_extra_from_cfg(cfg) | {"model": str(cfg.base_model), "dtype": str(dtype),
                                         "trained_positions": str(positions)}
    table = FrequencyTable(counts, tokenizer_fingerprint(tokenizer), masking_from_cfg(cfg),
                           data_fingerprint(meta.train_dataset), extra=extra, kind="model_prior")
    return table, tokenizer


def _text_source(all_tokens: bool, prior: bool, text: dict):
    """The text data set `--all-tokens` counts (None without it), after refusing contradictory options."""
    from ...priors import TextSource

    if all_tokens and prior:
        raise PDLError("--all-tokens (a text corpus's tokens) and --model-prior (the base model's expected "
                       "frequencies) make two different priors: pass one of them.")
    if text["dataset"] and not all_tokens:
        raise PDLError("--text-dataset and the other --text-* options go with --all-tokens.")
    if not all_tokens:
        return None
    if not text["dataset"]:
        raise PDLError("--all-tokens needs the text to count: `--text-dataset FILE_FOLDER_OR_HUB_NAME`.")
    if text["max_rows"] is not None and text["max_rows"] < 1:
        raise PDLError(f"--text-max-rows must be a whole number >= 1, got {text['max_rows']}.")
    return TextSource(text["dataset"], text["column"], text["split"], text["config"], text["max_rows"])


def _table_for(cfg, existing: str | None, source, prior: bool):
    """(table, tokenizer, whether it was counted) for the options: inspect, count a prior, or the task table."""
    from ...frequency import FrequencyTable, tokenizer_fingerprint
    from .cfg import expected_output_rows

    if existing:
        from axolotl.loaders import load_tokenizer

        tokenizer = load_tokenizer(cfg)
        table = FrequencyTable.load(existing)
        table.check_compatible(tokenizer_fingerprint(tokenizer), expected_output_rows(cfg, tokenizer),
                               source=f"The table {existing}")
        if table.kind != "trained_tokens" and not table.total > 0:
            raise PDLError(f"The prior {existing} counts no token: an empty prior is no prior.")
        return table, tokenizer, False
    if source is not None:
        return (*corpus_prior(cfg, source), True)
    if prior:
        return (*model_prior(cfg), True)
    table, tokenizer = count_table(cfg)
    if table.total == 0:
        raise PDLError("No token of the training set is trained (every label is -100): check the datasets' "
                       "`roles_to_train` / `train_on_inputs` and `sequence_len`.")
    return table, tokenizer, True


def _wrote(table, path: Path) -> str:
    if table.kind == "trained_tokens":
        return f"Wrote {path} ({table.total:,} trained tokens). Reuse it with `pdl_freq_path: {path}`."
    source = table.extra.get("source") if table.kind == "all_tokens" else table.extra.get("model")
    return (f"Wrote {path} (prior table of kind {table.kind}: {source}, {table.total:,.0f} tokens). Train with "
            f"`pdl_prior_path: {path}` and `pdl_prior_mix: BETA`.")


@click.command(name="pdl-freq")
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=str))
@click.option("--output", type=click.Path(dir_okay=False), help="where to write the table (default: output_dir)")
@click.option("--table", "existing", type=click.Path(exists=True), help="inspect this table instead of counting")
@click.option("--plot", type=click.Path(dir_okay=False), help="write rank-frequency / rank-weight curves to this PNG")
@click.option("--top", type=int, default=8, show_default=True, help="most down-/up-weighted tokens to print")
@click.option("--all-tokens", "all_tokens", is_flag=True, help="a prior: every token of the text data set")
@click.option("--model-prior", "prior", is_flag=True, help="a prior: the base model's expected frequencies")
@click.option("--text-dataset", "--text_dataset", "text_dataset", help="text file, folder, hub name, embedded:wikipedia")
@click.option("--text-column", "--text_column", "text_column", default="text", show_default=True)
@click.option("--text-split", "--text_split", "text_split", default="train", show_default=True)
@click.option("--text-config", "--text_config", "text_config", help="the configuration of a hub data set")
@click.option("--text-max-rows", "--text_max_rows", "text_max_rows", type=int, help="count only the first N texts")
def pdl_freq(config: str, output: str | None, existing: str | None, plot: str | None, top: int, all_tokens: bool,
             prior: bool, **text) -> None:
    """Count (or inspect) the PDL frequency table of an Axolotl config's trained tokens, or make a prior table."""
    from axolotl.cli.config import load_cfg
    from rich.console import Console

    from ...engine import with_command
    from ...run_weights import settings_weights
    from ...report import plot_rank_curves, weight_summary_table
    from ...settings import PDLSettings
    from .cfg import RECOUNT_COMMAND

    console = Console()
    try:
        source = _text_source(all_tokens, prior, {key.removeprefix("text_"): value for key, value in text.items()})
        if existing and (source is not None or prior):
            raise PDLError("--table inspects an existing table; --all-tokens and --model-prior count one.")
        if plot:  # before any counting: a missing `eval` extra or a bad suffix must not cost the count
            from ...figures import check_figure_path

            check_figure_path(plot, "--plot")
        cfg = load_cfg(config)
        if cfg.get("loss_type") != "pdl":
            raise PDLError(
                f"{config} does not set `loss_type: pdl` with `plugins: [pdl_plugin.integrations.axolotl.PDLPlugin]`; "
                "pdl-freq reads the PDL settings from there."
            )
        settings = PDLSettings.from_mapping(cfg)
        table, tokenizer, counted = _table_for(cfg, existing, source, prior)
        if counted:
            default = TABLE_FILENAME if table.kind == "trained_tokens" else f"pdl_prior_{table.kind}.safetensors"
            console.print(_wrote(table, table.save(Path(output) if output else Path(cfg.output_dir) / default)))
        weights = settings_weights(table, settings, tokenizer)
        console.print(weight_summary_table(table, weights, tokenizer, k=top))
        if plot:
            console.print(f"Plot: {plot_rank_curves(table, weights, settings.pdl_alpha, Path(plot))}")
    except PDLError as err:
        raise click.ClickException(with_command(str(err), RECOUNT_COMMAND)) from None


if __name__ == "__main__":
    pdl_freq()
