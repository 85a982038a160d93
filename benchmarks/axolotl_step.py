"""Benchmark 5: one Axolotl training step with PDL (`loss_type: pdl`) against Axolotl's own cross-entropy (no
`loss_type`), SmolLM2-135M-Instruct LoRA on CPU, the same batches.

Run it with the Axolotl venv's Python (Axolotl 0.19, pdl-plugin installed there):

    ~/.cache/pdl_plugin/venv-axolotl-0.19.0/bin/python benchmarks/axolotl_step.py [--pairs 8] [--threads 1]

Both variants are the offline recipe `recipes/axolotl/offline_dialogue_lora.yaml` (LoRA r8 on q, k, v, o; micro-batch
4 x gradient accumulation 2; chatterbot dialogue, assistant tokens trained), identical except that the CE variant
drops `loss_type` and the `pdl_*` keys. Each trainer is built by Axolotl's own code, as `axolotl train` builds it:
`axolotl.cli.config.load_cfg` (plugins, validation, normalisation), `axolotl.common.datasets.load_datasets`,
`axolotl.train.setup_model_and_trainer` (model loader, LoRA, `setup_trainer`, plugin hooks). So the PDL variant is
`PDLAxolotlTrainer` (PDLPlugin's trainer: the trained-positions head, never the full logits) and the CE variant is
Axolotl's plain `AxolotlTrainer` (the model's own loss on the full logits).

Why in-process trainers and a hand-driven step, rather than whole `axolotl train` runs: the machine is shared and
noisy, and only a paired measurement (PDL and CE alternating within seconds of each other, ratio per pair, median)
separates a 2% difference from that noise; two `axolotl train` runs minutes apart cannot. The step is the body of
transformers' `Trainer._run_epoch` for one optimizer step, calling the trainer's own methods: `get_batch_samples`
(where PDL's step denominator is computed), `training_step` per micro-batch (Axolotl's `compute_loss`, forward,
backward), gradient clipping, `optimizer.step`, `lr_scheduler.step`, `zero_grad`. Left out are the callbacks, logging
and saving, which are the same for both variants (PDL only adds two metrics at logging time). The optimizer windows
(2 micro-batches each) are drawn once from Axolotl's own training dataloader and fed to both trainers in the same order.

Peak memory: each variant in its own process (order alternated over the repetitions), after the same steps. Reported:
the process's peak resident memory (set-up included: model load, dataset, optimizer) and the peak reached during the
training steps alone (the kernel's high-water mark is reset after set-up via /proc/self/clear_refs) minus the
resident memory before them, i.e. what the training steps add.

PDL's options against plain PDL (`--variants floor,ce_mix,prior`, or `all`): the PDL recipe plus `pdl_min_weight: 1`
(`floor`), `pdl_ce_mix: 0.5` (`ce_mix`) or `pdl_prior_mix: 0.5` with an all-tokens prior table counted from the
prepared training set's input ids (`prior`). Each option's trainer is built the same way and timed in adjacent steps
with the plain PDL trainer on the same windows (order alternated, ratio per pair, median); each gets its own memory
processes. A table of ratios against plain PDL closes the output. Each step is timed on the wall clock and on the
process's CPU time (see `_variants.py`), and the engine's share of a step is timed alone per option.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import measure_steps, memory_processes, ratio_line
from _variants import (
    OPTIONS,
    PLAIN,
    engine_line,
    engine_times,
    option_settings,
    options_table,
    paired_times,
    parse_options,
    print_step_ratios,
    timed,
    write_prior,
)

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "axolotl" / "offline_dialogue_lora.yaml"
PLUGINS = ["pdl_plugin.integrations.axolotl.PDLPlugin",
           "pdl_plugin.integrations.axolotl.EmbeddedResourcesPlugin"]
VARIANTS = ("ce", "pdl")  # then the options of --variants, each against plain PDL
MEMORY_STEPS = 2  # the first step allocates the optimizer state; the second is a steady one


def set_environment(threads: int) -> None:
    os.environ.update(AXOLOTL_DO_NOT_TRACK="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                      TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))


def raw_config(variant: str, workdir: Path, run: str = "") -> dict:
    """The recipe as `variant` (ce, pdl or an option); `run` tells the output folders of separate processes apart
    (a PDL run holds its output_dir for as long as its trainer lives)."""
    import yaml

    cfg = yaml.safe_load(RECIPE.read_text())
    cfg.update(plugins=PLUGINS, output_dir=str(workdir / f"out-{variant}{run}"),
               dataset_prepared_path=str(workdir / "prepared"), save_strategy="no", logging_steps=1000, max_steps=1000,
               val_set_size=0)
    if variant == "pdl":
        cfg.update(PLAIN)
    if variant in OPTIONS:
        cfg.update(option_settings(variant, workdir))
    if variant == "ce":
        cfg.pop("loss_type")
        for key in [k for k in cfg if k.startswith("pdl_")]:
            cfg.pop(key)
    return cfg


def build(variant: str, workdir: Path, threads: int, run: str = ""):
    """The trainer Axolotl builds for this config, with its optimizer and scheduler."""
    import torch
    from axolotl.cli.config import load_cfg
    from axolotl.common.datasets import load_datasets
    from axolotl.train import setup_model_and_trainer
    from axolotl.utils.dict import DictDefault

    cfg = load_cfg(DictDefault(raw_config(variant, workdir, run)))
    dataset_meta = load_datasets(cfg=cfg)
    trainer = setup_model_and_trainer(cfg, dataset_meta)[0]
    trainer.create_optimizer_and_scheduler(num_training_steps=cfg.max_steps)
    torch.set_num_threads(threads)
    trainer.model.train()
    return trainer


def windows(trainer, count: int) -> list[list[dict]]:
    """The first `count` optimizer windows (gradient_accumulation_steps micro-batches each) of Axolotl's dataloader."""
    loader = iter(trainer.get_train_dataloader())
    ga = trainer.args.gradient_accumulation_steps
    return [[next(loader) for _ in range(ga)] for _ in range(count)]


def step(trainer, window: list[dict]) -> tuple[float, float]:
    """One optimizer step as transformers' `_run_epoch` runs it (callbacks and logging left out): (wall-clock
    seconds, CPU seconds of the process)."""

    def run() -> None:
        batches, num_items = trainer.get_batch_samples(iter(window), len(window), trainer.args.device)
        trainer.current_gradient_accumulation_steps = len(batches)
        model = trainer.model
        for batch in batches:
            trainer.training_step(model, batch, num_items)
        if trainer.args.max_grad_norm > 0:
            trainer._clip_grad_norm(model)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        model.zero_grad()
        trainer.state.global_step += 1

    return timed(run)


def child_memory(variant: str, workdir: Path, threads: int) -> None:
    import torch

    trainer = build(variant, workdir, threads, run=f"-memory-{os.getpid()}")
    batches = windows(trainer, MEMORY_STEPS)
    result = measure_steps(lambda: [step(trainer, window) for window in batches])
    print(json.dumps({"trainer": type(trainer).__name__, "threads": torch.get_num_threads(), **result}))


def build_all(names: tuple[str, ...], workdir: Path, threads: int) -> dict:
    """Every variant's trainer, plain PDL first: the `prior` option's table is counted from its prepared data."""
    trainers = {"pdl": build("pdl", workdir, threads)}
    if "prior" in names:
        pdl = trainers["pdl"]
        rows = pdl.accelerator.unwrap_model(pdl.model).get_output_embeddings().weight.shape[0]
        ids = [i for row in pdl.train_dataset["input_ids"] for i in row]
        write_prior(workdir, pdl.processing_class, rows, ids)
    for name in names:
        if name not in trainers:
            trainers[name] = build(name, workdir, threads)
    return {name: trainers[name] for name in names}


def describe(trainers: dict, batches: list[list[dict]], started: float) -> None:
    """The machine, the trainers Axolotl built and the batches they get."""
    import platform

    import axolotl
    import torch
    import transformers

    cpu = platform.machine()
    with open("/proc/cpuinfo") as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    print(f"Machine: {cpu}; {torch.get_num_threads()} torch threads; torch {torch.__version__}, axolotl "
          f"{axolotl.__version__}, transformers {transformers.__version__}")
    print("trainers: " + ", ".join(f"{v} {type(t).__name__}" for v, t in trainers.items())
          + f" (set-up {time.perf_counter() - started:.0f} s)")
    head = getattr(trainers["pdl"], "_pdl_head", None)
    print(f"PDL head: {'trained positions' if head else 'full logits' if head is False else 'unknown'}")
    tokens = [int((b["labels"][:, 1:] != -100).sum()) for w in batches for b in w]
    shapes = [tuple(b["input_ids"].shape) for w in batches for b in w]
    print(f"{len(batches)} windows x {len(batches[0])} micro-batches; micro-batch shapes {shapes[:6]}...; "
          f"trained tokens per micro-batch: median {statistics.median(tokens):.0f}", flush=True)


def time_steps(trainers: dict, batches: list[list[dict]], options: list[str]) -> dict:
    """Warm-up on the first window, then per later window a pair PDL/CE and a pair option/PDL per option."""
    for trainer in trainers.values():
        step(trainer, batches[0])  # warm-up
    pairs = paired_times(lambda name, round_: step(trainers[name], batches[1 + round_]), "pdl", ["ce", *options],
                         len(batches) - 1)
    cpu_step = print_step_ratios(pairs, "ce", "Axolotl CE", options)
    if options:
        from pdl_plugin.hf_trainer import shifted_labels

        engines = {name: trainers[name].pdl_engine for name in ("pdl", *options)}
        labels = [shifted_labels(batch) for batch in batches[0]]
        print(engine_line(engine_times(engines, labels), cpu_step))
    return {option: pairs[option] for option in options}


def report_memory(results: dict[str, list[dict]]) -> dict[str, dict[str, list[float]]]:
    """Print each process's figures and the PDL / CE ratios; return the figures by measure, for the options table."""
    for variant, runs in results.items():
        print(f"{variant}: " + "; ".join(
            f"{r['trainer']} peak {r['peak_mb']:.0f} MB, before steps {r['before_steps_mb']:.0f} MB, "
            f"steps' peak {r['train_peak_mb']:.0f} MB (+{r['train_added_mb']:.0f})" for r in runs))
    measures = {"peak memory (process)": "peak_mb", "peak memory (training steps)": "train_peak_mb",
                "memory added by the steps": "train_added_mb"}
    figures = {measure: {v: [r[key] for r in runs] for v, runs in results.items()} for measure, key in measures.items()}
    for measure in measures:
        ratios = [p / c for p, c in zip(figures[measure]["pdl"], figures[measure]["ce"])]
        print(ratio_line(f"{measure}, PDL / Axolotl CE", ratios))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=8, help="paired steps timed (per comparison)")
    parser.add_argument("--memory-repeats", type=int, default=1, help="processes per variant for peak memory")
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads, the same for every variant")
    parser.add_argument("--variants", default="", help="PDL options against plain PDL: floor,ce_mix,prior or all")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "WORKDIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    set_environment(args.threads)
    if args.child:
        child_memory(args.child[0], Path(args.child[1]), args.threads)
        return
    options = parse_options(args.variants)
    names = (*VARIANTS, *options)
    with tempfile.TemporaryDirectory() as tmp:
        workdir, started = Path(tmp), time.perf_counter()
        trainers = build_all(names, workdir, args.threads)
        batches = windows(trainers["ce"], args.pairs + 1)
        describe(trainers, batches, started)
        option_times = time_steps(trainers, batches, options)
        print(f"timing done at {time.perf_counter() - started:.0f} s", flush=True)
        del trainers
        if args.skip_memory:
            return
        results = memory_processes(
            lambda name: [sys.executable, __file__, "--threads", str(args.threads), "--child", name, str(workdir)],
            names, args.memory_repeats)
        figures = report_memory(results)
        if options:
            print("\n".join(options_table(option_times, figures)))
        print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
