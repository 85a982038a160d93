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
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "axolotl" / "offline_dialogue_lora.yaml"
PLUGINS = ["pdl_plugin.integrations.axolotl.PDLPlugin",
           "pdl_plugin.integrations.axolotl_embedded.EmbeddedResourcesPlugin"]
VARIANTS = ("ce", "pdl")
MEMORY_STEPS = 2  # the first step allocates the optimizer state; the second is a steady one


def set_environment(threads: int) -> None:
    os.environ.update(AXOLOTL_DO_NOT_TRACK="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                      TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))


def raw_config(variant: str, workdir: Path) -> dict:
    import yaml

    cfg = yaml.safe_load(RECIPE.read_text())
    cfg.update(plugins=PLUGINS, output_dir=str(workdir / f"out-{variant}"),
               dataset_prepared_path=str(workdir / "prepared"), save_strategy="no", logging_steps=1000, max_steps=1000,
               val_set_size=0)
    if variant == "ce":
        cfg.pop("loss_type")
        for key in [k for k in cfg if k.startswith("pdl_")]:
            cfg.pop(key)
    return cfg


def build(variant: str, workdir: Path, threads: int):
    """The trainer Axolotl builds for this config, with its optimizer and scheduler."""
    import torch
    from axolotl.cli.config import load_cfg
    from axolotl.common.datasets import load_datasets
    from axolotl.train import setup_model_and_trainer
    from axolotl.utils.dict import DictDefault

    cfg = load_cfg(DictDefault(raw_config(variant, workdir)))
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


def step(trainer, window: list[dict]) -> float:
    """One optimizer step as transformers' `_run_epoch` runs it (callbacks and logging left out)."""
    start = time.perf_counter()
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
    return time.perf_counter() - start


def status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child_memory(variant: str, workdir: Path, threads: int) -> None:
    import resource

    trainer = build(variant, workdir, threads)
    batches = windows(trainer, MEMORY_STEPS)
    setup_peak = status_mb("VmHWM")
    before = status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset the high-water mark: from here on VmHWM is the training steps' peak
    for window in batches:
        step(trainer, window)
    train_peak = status_mb("VmHWM")
    print(json.dumps({
        "trainer": type(trainer).__name__, "threads": __import__("torch").get_num_threads(),
        "peak_mb": max(setup_peak, train_peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "setup_peak_mb": setup_peak, "before_steps_mb": before, "train_peak_mb": train_peak,
        "train_added_mb": train_peak - before,
    }))


def summary(name: str, ratios: list[float]) -> str:
    return (f"{name}: median {statistics.median(ratios):.3f}  min {min(ratios):.3f}  max {max(ratios):.3f}  "
            f"(n={len(ratios)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=8, help="paired PDL/CE steps timed")
    parser.add_argument("--memory-repeats", type=int, default=1, help="processes per variant for peak memory")
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads, the same for both variants")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "WORKDIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    set_environment(args.threads)
    if args.child:
        child_memory(args.child[0], Path(args.child[1]), args.threads)
        return

    import platform

    import axolotl
    import torch
    import transformers

    cpu = platform.machine()
    with open("/proc/cpuinfo") as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        started = time.perf_counter()
        trainers = {variant: build(variant, workdir, args.threads) for variant in VARIANTS}
        print(f"Machine: {cpu}; {torch.get_num_threads()} torch threads; torch {torch.__version__}, axolotl "
              f"{axolotl.__version__}, transformers {transformers.__version__}")
        print("trainers: " + ", ".join(f"{v} {type(t).__name__}" for v, t in trainers.items())
              + f" (set-up {time.perf_counter() - started:.0f} s)")
        head = getattr(trainers["pdl"], "_pdl_head", None)
        print(f"PDL head: {'trained positions' if head else 'full logits' if head is False else 'unknown'}")
        batches = windows(trainers["ce"], args.pairs + 1)
        tokens = [int((b["labels"][:, 1:] != -100).sum()) for w in batches for b in w]
        shapes = [tuple(b["input_ids"].shape) for w in batches for b in w]
        print(f"{len(batches)} windows x {len(batches[0])} micro-batches; micro-batch shapes {shapes[:6]}...; "
              f"trained tokens per micro-batch: median {statistics.median(tokens):.0f}")
        for variant in VARIANTS:
            step(trainers[variant], batches[0])  # warm-up
        ratios, times = [], {variant: [] for variant in VARIANTS}
        for pair, window in enumerate(batches[1:]):
            order = VARIANTS if pair % 2 == 0 else VARIANTS[::-1]
            took = {variant: step(trainers[variant], window) for variant in order}
            for variant in VARIANTS:
                times[variant].append(took[variant])
            ratios.append(took["pdl"] / took["ce"])
        print(f"step time (s): CE median {statistics.median(times['ce']):.3f}, PDL median "
              f"{statistics.median(times['pdl']):.3f}")
        print(summary("step time, PDL / Axolotl CE", ratios))
        print(f"timing done at {time.perf_counter() - started:.0f} s", flush=True)
        del trainers
        if args.skip_memory:
            return
        results = {variant: [] for variant in VARIANTS}
        for repeat in range(args.memory_repeats):
            for variant in (VARIANTS if repeat % 2 == 0 else VARIANTS[::-1]):
                proc = subprocess.run(
                    [sys.executable, __file__, "--threads", str(args.threads), "--child", variant, str(workdir)],
                    capture_output=True, text=True, env=dict(os.environ),
                )
                if proc.returncode != 0:
                    raise RuntimeError(f"memory child {variant} failed:\n{proc.stderr[-4000:]}")
                results[variant].append(json.loads(proc.stdout.strip().splitlines()[-1]))
        for variant in VARIANTS:
            print(f"{variant}: " + "; ".join(
                f"{r['trainer']} peak {r['peak_mb']:.0f} MB, before steps {r['before_steps_mb']:.0f} MB, "
                f"steps' peak {r['train_peak_mb']:.0f} MB (+{r['train_added_mb']:.0f})" for r in results[variant]))
        pairs = list(zip(results["pdl"], results["ce"]))
        print(summary("peak memory (process), PDL / Axolotl CE", [p["peak_mb"] / c["peak_mb"] for p, c in pairs]))
        print(summary("peak memory (training steps), PDL / Axolotl CE",
                      [p["train_peak_mb"] / c["train_peak_mb"] for p, c in pairs]))
        print(summary("memory added by the steps, PDL / Axolotl CE",
                      [p["train_added_mb"] / c["train_added_mb"] for p, c in pairs]))
        print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
