"""Helpers for the Axolotl integration tests: run a real `axolotl` command, and recompute PDL independently.

The independent side uses plain transformers + peft and writes the PDL formula out directly (float64), without
pdl_plugin's weights or loss code.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from conftest import EQUATION_3

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes" / "axolotl"
HERE = Path(__file__).resolve().parent
RECORDER = "pdl_axolotl_recorder.RecorderPlugin"
PDL_PLUGIN = "pdl_plugin.integrations.axolotl.PDLPlugin"
EMBEDDED_PLUGIN = "pdl_plugin.integrations.axolotl.EmbeddedResourcesPlugin"
IGNORE = -100


def axolotl_env() -> dict[str, str]:
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env.update(
        AXOLOTL_DO_NOT_TRACK="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
        PATH=bin_dir + os.pathsep + env.get("PATH", ""),
        PYTHONPATH=os.pathsep.join(p for p in (str(HERE), str(REPO), env.get("PYTHONPATH")) if p),
    )
    return env


def recipe(name: str, **overrides) -> dict:
    cfg = yaml.safe_load((RECIPES / name).read_text())
    cfg.update(overrides)
    return cfg


def short_config(tmp_path: Path, prepared: Path, name: str = "offline_dialogue_lora.yaml", **overrides) -> dict:
    """The offline twin, made short and deterministic: few steps, every step logged, no dropout, no clipping; its loss
    is equation (3) at the recipe's alpha unless the test turns a protection on."""
    settings = dict(
        plugins=[PDL_PLUGIN, EMBEDDED_PLUGIN, RECORDER], output_dir=str(tmp_path / "out"), dataset_prepared_path=str(prepared),
        max_steps=3, logging_steps=1, micro_batch_size=2, gradient_accumulation_steps=2, lora_dropout=0.0,
        max_grad_norm=0.0, warmup_steps=0, learning_rate=1.0e-3, lr_scheduler="constant", **EQUATION_3,
    )
    settings.update(overrides)
    return recipe(name, **settings)


def run_axolotl(tmp_path: Path, cfg: dict, command: str = "train", *args: str, check: bool = True, timeout: int = 600):
    """Write `cfg` as YAML and run `axolotl COMMAND cfg.yaml ARGS`; returns (returncode, combined output)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{command}-config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    axolotl = Path(sys.executable).parent / "axolotl"
    proc = subprocess.run(
        [str(axolotl), command, str(path), *args], env=axolotl_env(), cwd=tmp_path, capture_output=True, text=True,
        timeout=timeout, stdin=subprocess.DEVNULL,
    )
    output = proc.stdout + proc.stderr
    (tmp_path / f"{command}.log").write_text(output)
    if check and proc.returncode != 0:
        raise AssertionError(f"axolotl {command} failed (rc {proc.returncode}):\n{output[-6000:]}")
    return proc.returncode, output


def load_record(cfg: dict) -> dict:
    return torch.load(Path(cfg["output_dir"]) / "pdl_record.pt", weights_only=False)


def step_logs(record: dict) -> list[dict]:
    return [entry for entry in record["logs"] if "loss" in entry]


# ---- the independent side ------------------------------------------------------------------------------------------


def reference_weights(counts: torch.Tensor, alpha: float, epsilon: float) -> torch.Tensor:
    """w(t) = 1 / (count(t) / total + epsilon) ** alpha, float64, written out."""
    counts = counts.to(torch.float64)
    return 1.0 / (counts / counts.sum() + epsilon) ** alpha


def count_labels_by_hand(label_rows) -> torch.Tensor:
    counts: dict[int, int] = {}
    for labels in label_rows:
        for label in list(labels)[1:]:  # a causal LM never predicts the first position
            if label != IGNORE:
                counts[int(label)] = counts.get(int(label), 0) + 1
    return counts


def lora_model(model_path: str, params: dict[str, torch.Tensor], cfg: dict, quantization_config=None):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, quantization_config=quantization_config)
    lora = LoraConfig(
        r=cfg["lora_r"], lora_alpha=cfg["lora_alpha"], lora_dropout=0.0, target_modules=cfg["lora_target_modules"],
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, lora)
    named = dict(model.named_parameters())
    missing = [name for name in params if name not in named]
    assert not missing, f"recorded parameters not in the reference model: {missing[:3]}"
    with torch.no_grad():
        for name, value in params.items():
            named[name].copy_(value)
    return model.train()


def _model_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}


def reference_window(model, batches: list[dict], weights: torch.Tensor) -> dict[str, float]:
    """PDL of one optimizer step, computed directly: full logits, log-softmax, sum w*nll / sum w over the window."""
    num = den = nll_sum = 0.0
    tokens = 0
    with torch.no_grad():
        for batch in batches:
            logits = model(**_model_inputs(batch)).logits.to(torch.float64)
            targets = batch["labels"][:, 1:]
            trained = targets != IGNORE
            log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
            nll = -log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)[trained]
            w = weights[targets[trained]]
            num += float((w * nll).sum())
            den += float(w.sum())
            nll_sum += float(nll.sum())
            tokens += int(trained.sum())
    return {"loss": num / den, "ce_loss": nll_sum / tokens, "mean_weight": den / tokens, "weight_sum": den}


def one_batch(batches: list[dict], pad_id: int) -> dict:
    """The micro-batches of a window as one right-padded batch (what 1 x N would see)."""
    rows = [(b["input_ids"][i], b["labels"][i], b["attention_mask"][i]) for b in batches for i in range(len(b["input_ids"]))]
    rows = [(ids[mask.bool()], labels[mask.bool()]) for ids, labels, mask in rows]
    length = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(rows), length), dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, : len(ids)], labels[i, : len(ids)], attention[i, : len(ids)] = ids, lab, 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


def reference_gradients(model, batch: dict, weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradients of sum w*nll / sum w over one batch (the whole window at once)."""
    model.zero_grad()
    logits = model(**_model_inputs(batch)).logits.float()
    targets = batch["labels"][:, 1:]
    trained = targets != IGNORE
    nll = torch.nn.functional.cross_entropy(logits[:, :-1][trained], targets[trained], reduction="none")
    w = weights.float()[targets[trained]]
    ((w * nll).sum() / w.sum()).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def rows_of(batches: list[dict]) -> list[tuple[int, ...]]:
    """The unpadded token rows of a window, sorted: the same samples whatever the micro-batch split."""
    rows = []
    for b in batches:
        for ids, mask in zip(b["input_ids"], b["attention_mask"]):
            rows.append(tuple(ids[mask.bool()].tolist()))
    return sorted(rows)


def max_relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    scale = max(float(t.abs().max()) for t in a.values())
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a) / scale
