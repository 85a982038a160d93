"""Benchmark 1: one training step of PDL (PDLSFTTrainer, loss_type pdl) against TRL's own SFTTrainer with
loss_type nll: same model (SmolLM2-135M-Instruct, LoRA r=8), same data (4 x 256 real tokens, the first 96 of each
row untrained), same seed, float32 on CPU. Time: both variants alternate step by step in one process, ratio per
pair, median. Peak memory: each variant in its own process (order alternated), ratio of peak resident memory.

    python benchmarks/train_step.py [--pairs 8]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, peak_rss_mb, ratio_line  # noqa: E402

ROWS, LENGTH, PROMPT = 4, 256, 96


def build(variant: str, output_dir: str):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from pdl_plugin import PDLSFTConfig, PDLSFTTrainer
    from pdl_plugin.data import load_code, resolve_embedded_model

    path = resolve_embedded_model("SmolLM2-135M-Instruct")
    tokenizer = AutoTokenizer.from_pretrained(path)
    text = "".join(load_code()["train"]["completion"][:200])
    ids = tokenizer(text)["input_ids"][: ROWS * LENGTH]
    rows = [ids[i * LENGTH:(i + 1) * LENGTH] for i in range(ROWS)]
    dataset = Dataset.from_dict({"input_ids": rows, "labels": [[-100] * PROMPT + r[PROMPT:] for r in rows]})
    common = dict(output_dir=output_dir, bf16=False, use_cpu=True, report_to=[], gradient_checkpointing=False,
                  per_device_train_batch_size=ROWS, max_length=None, seed=0, disable_tqdm=True)
    config = (PDLSFTConfig(loss_type="pdl", **common) if variant == "pdl"
              else SFTConfig(loss_type="nll", **common))
    trainer_cls = PDLSFTTrainer if variant == "pdl" else SFTTrainer
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    peft_config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    trainer = trainer_cls(model, config, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config)
    trainer.create_optimizer()
    batch = next(iter(trainer.get_train_dataloader()))
    return trainer, batch


def step(trainer, batch) -> float:
    start = time.perf_counter()
    num_items = trainer._get_num_items_in_batch([batch], torch.device("cpu"))
    trainer.training_step(trainer.model, dict(batch), num_items)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad()
    return time.perf_counter() - start


def child_memory(variant: str, output_dir: str) -> None:
    trainer, batch = build(variant, output_dir)
    for _ in range(3):
        step(trainer, batch)
    print(json.dumps({"peak_mb": peak_rss_mb()}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--child", nargs=2)
    args = parser.parse_args()
    if args.child:
        child_memory(*args.child)
        return
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        print(f"Machine: {machine()}")
        variants = {name: build(name, f"{tmp}/{name}") for name in ("nll", "pdl")}
        for name, (trainer, batch) in variants.items():
            step(trainer, batch)  # warm-up
        ratios = []
        for pair in range(args.pairs):
            order = ("nll", "pdl") if pair % 2 == 0 else ("pdl", "nll")
            times = {name: step(*variants[name]) for name in order}
            ratios.append(times["pdl"] / times["nll"])
        print(ratio_line("step time, PDL / TRL nll", ratios))
        peaks = {"nll": [], "pdl": []}
        for pair in range(3):
            for name in (("nll", "pdl") if pair % 2 == 0 else ("pdl", "nll")):
                result = subprocess.run([sys.executable, __file__, "--child", name, f"{tmp}/{name}"],
                                        capture_output=True, text=True, check=True)
                peaks[name].append(json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"])
        print(ratio_line("peak memory, PDL / TRL nll", [p / n for p, n in zip(peaks["pdl"], peaks["nll"])]))
        print(f"peak MB: nll {peaks['nll']}, pdl {peaks['pdl']}")


if __name__ == "__main__":
    main()
