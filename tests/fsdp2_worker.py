"""Run by tests/test_fsdp2.py and tests/test_deepspeed.py under `torch.distributed.run` (CPU processes, gloo). Two
modes, each saving rank 0's result with `torch.save`:

`trainer TOKENIZER OUTPUT PER_DEVICE ACCUMULATION ENGINE`: one SGD step of PDLSFTTrainer (loss_type pdl, alpha 1,
lr 1, no clipping) with LoRA (peft LoraConfig, all-linear, random B so that A and B both move) on a tiny Llama; saves
the LoRA parameters before and after (gathered whole) and what the Trainer built. ENGINE:
- `none`: plain data parallel (DDP under torchrun, or one process);
- `fsdp2`: FSDP2 asked of the Trainer (`fsdp=True`, `fsdp_config={"version": 2}`). accelerate 1.15 takes the FSDP
  plugin only for GPU-like distributed types (`AcceleratorState`: MULTI_GPU, MULTI_XPU, ...): on CPU it silently
  stays MULTI_CPU and the Trainer wraps the model in DDP. `fsdp2` therefore lifts that one device gate
  (`_force_fsdp_on_cpu`), after which accelerate's own FSDP2 preparation (`fsdp2_prepare_model`: `fully_shard` per
  decoder layer, the embedding/norm/LM-head tail, the root) and the Trainer's FSDP code paths run unchanged;
- `fsdp2-as-asked`: the same request without lifting the gate (what a user gets on CPU);
- `zero2`, `zero3`: DeepSpeed ZeRO stage 2 or 3 through the Trainer's `deepspeed=` config (with `use_cpu=True`,
  accelerate runs DeepSpeed's CPU accelerator over gloo).

`shard TOKENIZER OUTPUT SHARD TIED`: the PDL head and loss without the Trainer: full finetuning of a tiny Llama, PDL
weights from the batch's own token counts (alpha 1), loss = sum w*nll / sum w over the whole global batch of 4 rows.
SHARD=1 applies `torch.distributed.fsdp.fully_shard` to each decoder layer, to the LM head (untied: TIED=0) or the
input embedding (tied: TIED=1) as their own units, and to the root, so that the head weight is a sharded DTensor
inside the PDL forward (its module's own forward is never called); each of the 2 ranks gets 2 of the 4 rows. SHARD=0
is one process with all 4 rows. Saves the full gradient of every parameter.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).parent))
from conftest import PROMPT_COMPLETION, cpu_args, make_tiny_model  # noqa: E402


def _force_fsdp_on_cpu() -> None:
    """Let accelerate take the FSDP plugin on a MULTI_CPU (gloo) state; it otherwise drops it silently on CPU."""
    import accelerate.state
    from accelerate.utils import DistributedType

    original = accelerate.state.AcceleratorState.__init__

    def __init__(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin

    accelerate.state.AcceleratorState.__init__ = __init__


def _record_head_weight_type(model) -> list[str]:
    """Record, on each PDL head call, the type of the registered output-embedding weight at that moment."""
    from pdl_plugin import fused_head

    seen, kernel = [], fused_head.linear_cross_entropy

    def spy(hidden, weight, targets):
        seen.append(type(model.get_output_embeddings().weight).__name__)
        return kernel(hidden, weight, targets)

    fused_head.linear_cross_entropy = spy
    return seen


def _full(tensor: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return (tensor.full_tensor() if isinstance(tensor, DTensor) else tensor).detach().clone()


def _engine_args(engine: str) -> dict:
    if engine.startswith("fsdp2"):
        return dict(fsdp=True, fsdp_config={"version": 2, "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]})
    if engine.startswith("zero"):
        return dict(deepspeed={
            "zero_optimization": {"stage": int(engine[-1])}, "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto", "gradient_clipping": "auto", "bf16": {"enabled": False},
            "zero_allow_untested_optimizer": True,  # the Trainer's torch SGD
        })
    assert engine == "none", engine
    return {}


def _gathered(model, names) -> dict[str, torch.Tensor]:
    """Whole copies of the named parameters (collective under FSDP2 and ZeRO-3: every rank calls it)."""
    params = [p for n, p in model.named_parameters() if n in names]
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params):
            return {n: p.detach().clone() for n, p in model.named_parameters() if n in names}
    return {n: _full(p) for n, p in model.named_parameters() if n in names}


def trainer_step(tokenizer_path: str, output: str, per_device: int, accumulation: int, engine: str) -> None:
    from peft import LoraConfig

    from pdl_plugin import PDLSFTTrainer

    if engine == "fsdp2":
        _force_fsdp_on_cpu()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    model = make_tiny_model(len(tokenizer), seed=3)
    args = cpu_args(
        Path(output).parent / Path(output).stem, loss_type="pdl", pdl_alpha=1.0, optim="sgd", learning_rate=1.0,
        lr_scheduler_type="constant", max_grad_norm=0.0, weight_decay=0.0, max_steps=1, ddp_backend="gloo",
        per_device_train_batch_size=per_device, gradient_accumulation_steps=accumulation,
        average_tokens_across_devices=True, **_engine_args(engine),
    )
    torch.manual_seed(11)
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    trainer = PDLSFTTrainer(model, args, Dataset.from_dict(PROMPT_COMPLETION), processing_class=tokenizer,
                            peft_config=peft_config)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    seen = _record_head_weight_type(trainer.model)
    distributed_type, fsdp2 = str(trainer.accelerator.distributed_type), bool(trainer.accelerator.is_fsdp2)
    trainer.train()
    after = _gathered(trainer.model, before)
    if trainer.accelerator.is_main_process:
        torch.save({
            "before": before, "after": after, "world_size": trainer.accelerator.num_processes,
            "distributed_type": distributed_type, "fsdp2": fsdp2,
            "wrapper": type(trainer.model_wrapped).__name__, "head_weight_type_in_forward": seen,
            "dtensor_params": sum(type(p).__name__ == "DTensor" for p in trainer.model.parameters()),
        }, output)


def _batch(tokenizer, rows: list[int]):
    texts = [PROMPT_COMPLETION["prompt"][i] + PROMPT_COMPLETION["completion"][i] for i in range(4)]
    prompt_lengths = [len(tokenizer(PROMPT_COMPLETION["prompt"][i])["input_ids"]) for i in range(4)]
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    labels = encoded["input_ids"].clone()
    for i, length in enumerate(prompt_lengths):
        labels[i, :length] = -100
    labels[encoded["attention_mask"] == 0] = -100
    # PDL weights (alpha 1, eps 1e-6) from the trained-token counts of the global batch, as the trainer's table does
    targets = labels[:, 1:][labels[:, 1:] != -100]
    counts = torch.bincount(targets, minlength=len(tokenizer)).double()
    weights = (1.0 / (counts / counts.sum() + 1e-6)).float()
    weight_sum = weights[targets].double().sum().float()  # the global denominator, known to every rank
    return {"input_ids": encoded["input_ids"][rows], "attention_mask": encoded["attention_mask"][rows],
            "labels": labels[rows]}, weights, weight_sum


def shard_step(tokenizer_path: str, output: str, shard: int, tied: int) -> None:
    from pdl_plugin.fused_head import add_pdl_head

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    tokenizer.padding_side = "right"
    model = make_tiny_model(len(tokenizer), seed=5)
    if not tied:
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone() * 3.0)
    add_pdl_head(model)
    rank, world = 0, 1
    if shard:
        import torch.distributed as dist
        from torch.distributed.fsdp import fully_shard

        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard([model.model.embed_tokens, model.lm_head] if tied else model.lm_head)  # tied: one group
        fully_shard(model)
    seen = _record_head_weight_type(model)
    batch, weights, weight_sum = _batch(tokenizer, list(range(rank * 4 // world, (rank + 1) * 4 // world)))
    out = model(**batch, pdl_head=True)
    # FSDP averages gradients over the ranks, as DDP does: scale by the world size to get the global sum's gradient
    loss = (weights[out.targets] * -out.log_probs).sum() / weight_sum * world
    loss.backward()
    grads = {n: _full(p.grad) for n, p in model.named_parameters()}
    if rank == 0:
        torch.save({"grads": grads, "world_size": world, "head_weight_type_in_forward": seen}, output)


if __name__ == "__main__":
    mode, tokenizer_path, output, *rest = sys.argv[1:]
    if mode == "trainer":
        trainer_step(tokenizer_path, output, int(rest[0]), int(rest[1]), rest[2])
    else:
        shard_step(tokenizer_path, output, *map(int, rest))
