"""Benchmark 1: one training step of PDL (PDLSFTTrainer, loss_type pdl) against TRL's own SFTTrainer with
loss_type nll: same model (SmolLM2-135M-Instruct, LoRA r=8), same data (4 x 256 real tokens, the first 96 of each
row untrained), same seed, float32 on CPU. Time: both variants alternate step by step in one process, ratio per
pair, median. Peak memory: each variant in its own process (order alternated), ratio of peak resident memory.

With `--variants floor,ce_mix,prior` (or `all`), PDL's options are measured the same way against plain PDL (not CE):
`floor` (pdl_min_weight 1), `ce_mix` (pdl_ce_mix 0.5), `prior` (pdl_prior_mix 0.5 with an all-tokens prior table
counted from the benchmark's text), each timed in adjacent steps with a plain PDL step, each in its own memory
process; a table of ratios against plain PDL closes the output. Each step is timed on the wall clock and on the
process's CPU time (see `_variants.py`), and the engine's share of a step is timed alone per option.

    python benchmarks/train_step.py [--pairs 8] [--threads N] [--memory-repeats 3] [--variants all]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, measure_steps, memory_processes, ratio_line
from _variants import (
    PLAIN,
    engine_line,
    engine_times,
    option_settings,
    options_table,
    paired_times,
    parse_options,
    print_step_ratios,
    prior_path,
    timed,
    write_prior,
)

ROWS, LENGTH, PROMPT = 4, 256, 96
MEMORY_STEPS = 3


def build(variant: str, output_dir: str):
    """`nll` (TRL's SFTTrainer), `pdl` (PDLSFTTrainer) or `pdl` with an option of `_variants.OPTIONS`."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from pdl_plugin import PDLSFTConfig, PDLSFTTrainer
    from pdl_plugin.data import load_code, resolve_embedded_model

    path = resolve_embedded_model("SmolLM2-135M-Instruct")
    tokenizer = AutoTokenizer.from_pretrained(path)
    text = "".join(load_code()["train"]["completion"][:200])
    all_ids = tokenizer(text)["input_ids"]
    ids = all_ids[: ROWS * LENGTH]
    rows = [ids[i * LENGTH:(i + 1) * LENGTH] for i in range(ROWS)]
    dataset = Dataset.from_dict({"input_ids": rows, "labels": [[-100] * PROMPT + r[PROMPT:] for r in rows]})
    common = {"output_dir": output_dir, "bf16": False, "use_cpu": True, "report_to": [],
              "gradient_checkpointing": False, "per_device_train_batch_size": ROWS, "max_length": None, "seed": 0,
              "disable_tqdm": True}
    workdir = Path(output_dir).parent
    options = {} if variant == "nll" else PLAIN if variant == "pdl" else option_settings(variant, workdir)
    config = (SFTConfig(loss_type="nll", **common) if variant == "nll"
              else PDLSFTConfig(loss_type="pdl", **common, **options))
    trainer_cls = SFTTrainer if variant == "nll" else PDLSFTTrainer
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if variant == "prior" and not prior_path(workdir).exists():
        write_prior(workdir, tokenizer, model.get_output_embeddings().weight.shape[0], all_ids)
    peft_config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    trainer = trainer_cls(model, config, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config)
    trainer.create_optimizer()
    batch = next(iter(trainer.get_train_dataloader()))
    return trainer, batch


def step(trainer, batch) -> tuple[float, float]:
    """One optimizer step: (wall-clock seconds, CPU seconds of the process)."""

    def run() -> None:
        num_items = trainer._get_num_items_in_batch([batch], torch.device("cpu"))
        trainer.training_step(trainer.model, dict(batch), num_items)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()

    return timed(run)


def child_memory(variant: str, output_dir: str) -> None:
    trainer, batch = build(variant, output_dir)
    result = measure_steps(lambda: [step(trainer, batch) for _ in range(MEMORY_STEPS)])
    print(json.dumps({"trainer": type(trainer).__name__, **result}))


def time_steps(variants: dict, options: list[str], pairs: int) -> dict:
    """Warm up every variant, then the paired steps: PDL against nll, and each option against plain PDL."""
    for trainer, batch in variants.values():
        step(trainer, batch)  # warm-up
    times = paired_times(lambda name, _round: step(*variants[name]), "pdl", ["nll", *options], pairs)
    cpu_step = print_step_ratios(times, "nll", "TRL nll", options)
    if options:
        from pdl_plugin.hf_trainer import shifted_labels

        engines = {name: variants[name][0].pdl_engine for name in ("pdl", *options)}
        print(engine_line(engine_times(engines, [shifted_labels(variants["pdl"][1])]), cpu_step))
    return {option: times[option] for option in options}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--memory-repeats", type=int, default=3, help="processes per variant for peak memory")
    parser.add_argument("--variants", default="", help="PDL options against plain PDL: floor,ce_mix,prior or all")
    parser.add_argument("--child", nargs=2)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child_memory(*args.child)
        return
    options = parse_options(args.variants)
    names = ("nll", "pdl", *options)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"Machine: {machine()}", flush=True)
        option_times = time_steps({name: build(name, f"{tmp}/{name}") for name in names}, options, args.pairs)
        threads = ["--threads", str(args.threads)] if args.threads else []
        results = memory_processes(lambda name: [sys.executable, __file__, *threads, "--child", name, f"{tmp}/{name}"],
                                   names, args.memory_repeats)
        peaks = {name: [r["peak_mb"] for r in results[name]] for name in names}
        print(ratio_line("peak memory, PDL / TRL nll", [p / n for p, n in zip(peaks["pdl"], peaks["nll"])]))
        print("peak MB: " + ", ".join(f"{name} {[round(p) for p in peaks[name]]}" for name in names))
        if options:
            steps_peak = {name: [r["train_peak_mb"] for r in results[name]] for name in names}
            print("\n".join(options_table(option_times, {"peak memory (process)": peaks,
                                                         "peak memory (training steps)": steps_peak})))


if __name__ == "__main__":
    main()
