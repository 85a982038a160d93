"""GPU check: peak memory and speed of PDL against TRL's own loss, at the shapes of the GPU recipes, with no model hub.

For every distinct training shape of `recipes/gpu/*.yaml` (model shape, adapter, per-device batch, max length), the
model is built with random weights from its public config (`benchmarks/model_shapes/`), saved to a local folder with
a generated word-level tokenizer of the model's vocabulary, and trained from that folder as `pdl-sft` would: the
recipe's dtype, attention, LoRA / QLoRA settings (TRL's `get_peft_config` / `get_quantization_config`), gradient
checkpointing, batch and max length, on random token rows whose first half is prompt (label -100). Each row runs
PDL (`PDLSFTTrainer`, loss_type pdl, the recipe's alpha) and TRL's own cross-entropy (`SFTTrainer`, loss_type nll),
a few warm-up steps then a few timed ones (gradient accumulation 1; the recipes' accumulation changes neither the
peak nor the per-token speed much). Peak memory is `torch.cuda.max_memory_allocated` from the model load to the last
step (weights, adapters, optimizer states, activations; not the CUDA context). Then the loss step alone (hidden states
-> weighted loss, forward + backward, bf16): `pdl_plugin.ops.linear_cross_entropy` on the trained positions (what
PDLSFTTrainer uses) and TRL's chunked log-prob function on the trained positions against the naive full-logits loss
of the paper's code (`benchmarks/loss_step.py`), memory added by the step and paired time ratio (median).

    bash benchmarks/gpu_check.sh                 # on the GPU: the real shapes (about 5 minutes on one H200)
    bash benchmarks/gpu_check.sh --toy           # CPU, tiny shapes, under 2 minutes: checks the plumbing only

Writes OUT/gpu_check.json and OUT/gpu_check.md (OUT: `--out`, default outputs/gpu_check) and prints the table.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
SHAPES = ROOT / "benchmarks" / "model_shapes"
RECIPES = ROOT / "recipes" / "gpu"
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

START = time.perf_counter()
TRAINED_SHARE = 0.5  # the second half of each row is trained, as in loss_step.py
# toy shapes keep the two model classes apart (and their tied / untied heads), at a few MB each
TOY_SHAPES = {"3B": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=4096, max_window_layers=2),
              "7B": dict(hidden_size=96, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=4160, max_window_layers=2)}
TOY_LENGTH_DIVISOR = 16  # toy rows are 1/16 of the recipe's max length


def log(message: str) -> None:
    print(f"[{time.perf_counter() - START:6.1f} s] {message}", flush=True)


@dataclass
class Case:
    """One training shape, shared by the recipes listed."""

    name: str
    recipes: list[str]
    recipe: dict  # the first recipe's settings (the others differ only in data and alpha)
    config: dict  # model config (shrunk in toy mode)
    seq: int
    batch: int
    quantized: bool
    rows: list[dict] = field(default_factory=list)


def read_recipes() -> dict[str, dict]:
    import yaml

    return {path.stem: yaml.safe_load(path.read_text()) for path in sorted(RECIPES.glob("*.yaml"))}


def shape_file(model_name: str) -> Path:
    return SHAPES / f"{model_name.rsplit('/', 1)[-1]}.json"


def build_cases(toy: bool) -> list[Case]:
    cases: dict[tuple, Case] = {}
    for name, recipe in read_recipes().items():
        config = json.loads(shape_file(recipe["model_name_or_path"]).read_text())
        size = "7B" if config["hidden_size"] >= 3584 else "3B"
        if toy:
            shape = TOY_SHAPES[size]
            config = {**config, **shape, "bos_token_id": shape["vocab_size"] - 2, "eos_token_id": shape["vocab_size"] - 1}
        seq = recipe["max_length"] // (TOY_LENGTH_DIVISOR if toy else 1)
        batch = recipe["per_device_train_batch_size"]
        quantized = bool(recipe.get("load_in_4bit"))
        dims = tuple(config[k] for k in ("hidden_size", "num_hidden_layers", "intermediate_size",
                                         "num_attention_heads", "num_key_value_heads", "vocab_size",
                                         "tie_word_embeddings"))
        key = (dims, seq, batch, quantized, recipe.get("lora_r"), str(recipe.get("lora_target_modules")))
        if key in cases:
            cases[key].recipes.append(name)
            continue
        adapter = f"{'QLoRA nf4' if quantized else 'LoRA'} r{recipe.get('lora_r')}"
        label = f"{'toy ' if toy else ''}{size}-class {adapter}, {batch} x {seq}"
        cases[key] = Case(label, [name], recipe, config, seq, batch, quantized)
    # the most informative rows first, in case the time budget runs out: short rows of each model, then long ones
    return sorted(cases.values(), key=lambda c: (c.seq, c.quantized))


# ---- models with random weights, saved where the recipe's loading code can read them ------------------------------


def make_tokenizer(config: dict):
    """A word-level tokenizer with one token per row of the model's vocabulary (no hub, no files)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab_size = config["vocab_size"]
    eos, pad = config["eos_token_id"], config["bos_token_id"]  # Qwen2.5 pads with <|endoftext|>, its bos id
    vocab = {f"t{i}": i for i in range(vocab_size)}
    vocab["<eos>"], vocab["<pad>"] = vocab.pop(f"t{eos}"), vocab.pop(f"t{pad}")
    backend = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<pad>", unk_token="t0")


def model_folder(case: Case, work_dir: Path, device: str) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    key = "-".join(str(case.config[k]) for k in ("hidden_size", "num_hidden_layers", "vocab_size"))
    folder = work_dir / f"model-{key}"
    if (folder / "done").exists():
        return folder
    log(f"building a random model with the shapes of {case.recipe['model_name_or_path']} in {folder}")
    config = AutoConfig.for_model(**case.config)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    parameters = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    make_tokenizer(case.config).save_pretrained(folder)
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    (folder / "done").write_text(str(parameters))
    log(f"saved ({parameters / 1e9:.2f}B parameters)")
    return folder


def random_rows(case: Case, rows: int, seed: int = 0):
    from datasets import Dataset

    generator = torch.Generator().manual_seed(seed)
    special = {case.config["eos_token_id"], case.config["bos_token_id"]}
    ids = torch.randint(0, case.config["vocab_size"], (rows, case.seq), generator=generator)
    for token in special:  # no special token inside the rows: they are all ordinary text
        ids[ids == token] = 1
    labels = ids.clone()
    labels[:, : int(case.seq * (1 - TRAINED_SHARE))] = -100
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})


# ---- one training run ---------------------------------------------------------------------------------------------


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_rss_mb() -> float:
    from _common import peak_rss_mb

    return peak_rss_mb()


def train_run(case: Case, variant: str, folder: Path, args, work_dir: Path) -> dict:
    from transformers import TrainerCallback
    from trl import ModelConfig, SFTConfig, SFTTrainer, get_peft_config, get_quantization_config

    from pdl_plugin import PDLSFTConfig, PDLSFTTrainer
    from pdl_plugin.settings import EQUATION_3

    recipe, cpu = case.recipe, not torch.cuda.is_available()
    dtype = "float32" if cpu else recipe.get("dtype", "bfloat16")
    model_args = ModelConfig(
        model_name_or_path=str(folder), dtype=dtype, attn_implementation=recipe.get("attn_implementation"),
        use_peft=True, lora_r=recipe["lora_r"], lora_alpha=recipe["lora_alpha"],
        lora_dropout=recipe.get("lora_dropout", 0.0), lora_target_modules=recipe.get("lora_target_modules"),
        load_in_4bit=case.quantized, bnb_4bit_quant_type=recipe.get("bnb_4bit_quant_type", "nf4"),
        use_bnb_nested_quant=recipe.get("use_bnb_nested_quant", False),
    )
    steps = args.warmup_steps + args.timed_steps
    common = dict(
        output_dir=str(work_dir / f"run-{variant}"), max_length=case.seq, per_device_train_batch_size=case.batch,
        gradient_accumulation_steps=1, activation_checkpointing=recipe.get("activation_checkpointing", False),
        bf16=not cpu and recipe.get("bf16", True), use_cpu=cpu, learning_rate=recipe.get("learning_rate", 1e-4),
        lr_scheduler_type="constant", max_steps=steps, logging_steps=steps, save_strategy="no", eval_strategy="no",
        report_to=[], disable_tqdm=True, seed=0, dataloader_num_workers=0,
        model_init_kwargs={"dtype": dtype, "attn_implementation": recipe.get("attn_implementation")},
    )
    if variant == "pdl":
        # plain PDL, equation (3), at the recipe's alpha: the protections' cost is step_variants' to measure
        config = PDLSFTConfig(loss_type="pdl", pdl_alpha=recipe.get("pdl_alpha", 0.5),
                              pdl_epsilon=recipe.get("pdl_epsilon", 1e-6), **EQUATION_3, **common)
        trainer_cls = PDLSFTTrainer
    else:
        config = SFTConfig(loss_type="nll", **common)
        trainer_cls = SFTTrainer

    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            _sync()
            self.start = time.perf_counter()

        def on_step_end(self, *_, **__):
            _sync()
            times.append(time.perf_counter() - self.start)

    gc.collect()
    if not cpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated() if not cpu else 0
    load_start = time.perf_counter()
    trainer = trainer_cls(model=str(folder), args=config, train_dataset=random_rows(case, steps * case.batch),
                          quantization_config=get_quantization_config(model_args),
                          peft_config=get_peft_config(model_args))
    trainer.add_callback(StepTimer())
    load_s = time.perf_counter() - load_start
    trainer.train()
    timed = times[args.warmup_steps:]
    if cpu:
        peak_gb, reserved_gb = _peak_rss_mb() / 1024, float("nan")
    else:
        peak_gb = (torch.cuda.max_memory_allocated() - baseline) / 2**30
        reserved_gb = torch.cuda.max_memory_reserved() / 2**30
    loss = next((entry["train_loss"] for entry in reversed(trainer.state.log_history) if "train_loss" in entry),
                float("nan"))
    del trainer
    gc.collect()
    if not cpu:
        torch.cuda.empty_cache()
    step_s = statistics.median(timed)
    return {
        "kind": "train", "case": case.name, "recipes": case.recipes, "variant": variant,
        "batch": case.batch, "seq": case.seq, "peak_allocated_gb": peak_gb, "peak_reserved_gb": reserved_gb,
        "baseline_allocated_gb": baseline / 2**30, "step_s_median": step_s,
        "tokens_per_s": case.batch * case.seq * len(timed) / sum(timed), "load_s": load_s,
        "timed_steps": len(timed), "step_s": timed, "train_loss": loss,
    }


# ---- the loss step alone --------------------------------------------------------------------------------------------


def loss_step_rows(vocab: int, hidden: int, tokens: int, repeats: int, device: str) -> list[dict]:
    import loss_step

    methods = {"naive": loss_step.naive, "pdl_fused": loss_step.pdl_fused,
               "trl_trained_only": lambda *a: loss_step.trl_chunked(*a, compact=True)}
    generator = torch.Generator().manual_seed(0)
    hidden_states = (torch.randn(tokens, hidden, generator=generator) * 0.5).to(device, torch.bfloat16)
    weight = (torch.randn(vocab, hidden, generator=generator) * 0.02).to(device, torch.bfloat16)
    labels = torch.randint(0, vocab, (tokens,), generator=generator)
    labels[torch.rand(tokens, generator=generator) > TRAINED_SHARE] = -100
    tensors = (hidden_states.requires_grad_(True), weight.requires_grad_(True), labels.to(device),
               (torch.rand(vocab, generator=generator) + 0.1).to(device))
    tensors[0].grad, tensors[1].grad = torch.zeros_like(tensors[0]), torch.zeros_like(tensors[1])
    cpu = device == "cpu"

    def step(method) -> float:
        _sync()
        start = time.perf_counter()
        methods[method](*tensors).backward()
        _sync()
        return time.perf_counter() - start

    added = {}
    for method in methods:
        step(method)  # warm-up (kernels, Triton compilation)
        gc.collect()
        if not cpu:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() if not cpu else 0
        step(method)
        added[method] = (torch.cuda.max_memory_allocated() - base) / 2**30 if not cpu else _peak_rss_mb() / 1024
    times = {method: [] for method in methods}
    for _ in range(repeats):
        for method in methods:
            times[method].append(step(method))
    rows = []
    for method in methods:
        ratios = sorted(t / n for t, n in zip(times[method], times["naive"]))
        rows.append({
            "kind": "loss_step", "case": f"loss step, vocab {vocab}, hidden {hidden}, {tokens} tokens",
            "variant": method, "peak_allocated_gb": added[method], "step_s_median": statistics.median(times[method]),
            "tokens_per_s": tokens / statistics.median(times[method]),
            "memory_vs_reference": added[method] / added["naive"], "time_vs_reference": statistics.median(ratios),
            "time_vs_reference_min_max": [ratios[0], ratios[-1]], "reference": "naive", "repeats": repeats,
        })
    return rows


# ---- report ---------------------------------------------------------------------------------------------------------


def _fmt(value, digits=2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def add_train_ratios(rows: list[dict]) -> None:
    for row in rows:
        if row["kind"] != "train" or row.get("status") != "ok":
            continue
        reference = next((r for r in rows if r["kind"] == "train" and r["case"] == row["case"]
                          and r["variant"] == "nll" and r.get("status") == "ok"), None)
        if reference is not None:
            row["reference"] = "nll"
            row["memory_vs_reference"] = row["peak_allocated_gb"] / reference["peak_allocated_gb"]
            row["time_vs_reference"] = reference["tokens_per_s"] / row["tokens_per_s"]


def table(rows: list[dict], memory_label: str) -> str:
    lines = [f"| case | recipes | variant | {memory_label} | tokens/s | step (s, median) | memory / reference "
             "| time / reference | status |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        reference = row.get("reference")
        lines.append(
            f"| {row['case']} | {', '.join(row.get('recipes', [])) or '-'} | {row['variant']} "
            f"| {_fmt(row.get('peak_allocated_gb'))} | {_fmt(row.get('tokens_per_s'), 0)} "
            f"| {_fmt(row.get('step_s_median'), 3)} "
            f"| {_fmt(row.get('memory_vs_reference'), 3) + (f' (vs {reference})' if reference else '')} "
            f"| {_fmt(row.get('time_vs_reference'), 3) + (f' (vs {reference})' if reference else '')} "
            f"| {row.get('status', 'ok')} |")
    return "\n".join(lines)


def machine(device: str) -> dict:
    import transformers
    import trl

    info = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "trl": trl.__version__, "device": device}
    try:
        import bitsandbytes

        info["bitsandbytes"] = bitsandbytes.__version__
    except Exception as error:  # noqa: BLE001 - reported, not fatal: the QLoRA rows then fail alone
        info["bitsandbytes"] = f"unavailable: {error}"
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_memory_gb"] = torch.cuda.get_device_properties(0).total_memory / 2**30
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--toy", action="store_true", help="tiny shapes on CPU: checks the plumbing in 1-2 minutes")
    parser.add_argument("--out", default=str(ROOT / "outputs" / "gpu_check"))
    parser.add_argument("--work_dir", default=None, help="where the random models are saved (default OUT/../work)")
    parser.add_argument("--warmup_steps", type=int, default=None, help="default 3 (toy: 1)")
    parser.add_argument("--timed_steps", type=int, default=None, help="default 5 (toy: 2)")
    parser.add_argument("--loss_repeats", type=int, default=None, help="default 10 (toy: 3)")
    parser.add_argument("--budget_s", type=float, default=360.0,
                        help="start no new training row after this many seconds (the rest is reported as skipped)")
    parser.add_argument("--skip_training", action="store_true")
    parser.add_argument("--skip_loss_step", action="store_true")
    args = parser.parse_args(argv)
    args.warmup_steps = args.warmup_steps if args.warmup_steps is not None else (1 if args.toy else 3)
    args.timed_steps = args.timed_steps if args.timed_steps is not None else (2 if args.toy else 5)
    args.loss_repeats = args.loss_repeats if args.loss_repeats is not None else (3 if args.toy else 10)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.toy:
        parser.error("no GPU here: the real shapes need one (7B-class models); use --toy to check the plumbing on CPU")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work_dir = Path(args.work_dir) if args.work_dir else Path("/tmp/pdl_gpu_check") / ("toy" if args.toy else "real")
    work_dir.mkdir(parents=True, exist_ok=True)
    info = machine(device)
    log(f"machine: {json.dumps(info)}")
    cases = build_cases(args.toy)
    log(f"{len(cases)} training cases: " + "; ".join(f"{c.name} ({', '.join(c.recipes)})" for c in cases))
    rows: list[dict] = []

    if not args.skip_loss_step:
        shapes = sorted({(c.config["vocab_size"], c.config["hidden_size"], c.batch * c.seq) for c in cases})
        for vocab, hidden, tokens in shapes:
            log(f"loss step: vocab {vocab}, hidden {hidden}, {tokens} tokens")
            try:
                new = loss_step_rows(vocab, hidden, tokens, args.loss_repeats, device)
                rows += [{**row, "status": "ok"} for row in new]
                for row in new:
                    log(f"  {row['variant']}: {row['peak_allocated_gb']:.3f} GB added, "
                        f"{row['step_s_median'] * 1e3:.1f} ms, time / naive {row['time_vs_reference']:.3f}")
            except Exception as error:  # noqa: BLE001 - one failed row must not cost the others
                traceback.print_exc()
                rows.append({"kind": "loss_step", "case": f"loss step, vocab {vocab}, hidden {hidden}",
                             "variant": "all", "status": f"error: {type(error).__name__}: {str(error)[:200]}"})

    if not args.skip_training:
        for index, case in enumerate(cases):
            for variant in ("pdl", "nll") if index % 2 == 0 else ("nll", "pdl"):  # alternate which runs first
                if time.perf_counter() - START > args.budget_s:
                    rows.append({"kind": "train", "case": case.name, "recipes": case.recipes, "variant": variant,
                                 "status": f"skipped (budget {args.budget_s:.0f} s)"})
                    log(f"skipped {case.name} {variant}: past the budget")
                    continue
                log(f"training {case.name} ({', '.join(case.recipes)}), {variant}")
                try:
                    folder = model_folder(case, work_dir, device)
                    row = {**train_run(case, variant, folder, args, work_dir), "status": "ok"}
                    log(f"  peak {row['peak_allocated_gb']:.2f} GB, {row['tokens_per_s']:.0f} tokens/s, "
                        f"step {row['step_s_median']:.3f} s, load {row['load_s']:.1f} s")
                except Exception as error:  # noqa: BLE001 - e.g. bitsandbytes missing: the LoRA rows still count
                    traceback.print_exc()
                    row = {"kind": "train", "case": case.name, "recipes": case.recipes, "variant": variant,
                           "status": f"error: {type(error).__name__}: {str(error)[:200]}"}
                rows.append(row)
                gc.collect()
                if device == "cuda":
                    torch.cuda.empty_cache()

    add_train_ratios(rows)
    memory_label = ("peak memory (GB; CPU: process peak RSS, not per row)" if device == "cpu"
                    else "peak allocated (GB; loss step: added)")
    report = table(rows, memory_label)
    result = {"toy": args.toy, "machine": info, "settings": {k: v for k, v in vars(args).items()},
              "elapsed_s": time.perf_counter() - START, "rows": rows}
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    header = (f"GPU check ({'toy shapes, CPU' if args.toy else 'recipe shapes'}) on {info.get('gpu', device)}, "
              f"torch {info['torch']}, transformers {info['transformers']}, trl {info['trl']}; "
              f"{args.warmup_steps} warm-up + {args.timed_steps} timed steps per training row; "
              f"{result['elapsed_s']:.0f} s in all.")
    (out / "gpu_check.md").write_text(header + "\n\n" + report + "\n")
    print("\n" + header + "\n\n" + report, flush=True)
    log(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    return 0 if all(row.get("status") == "ok" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
