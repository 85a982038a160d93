"""Run by tests/test_distributed.py under `torch.distributed.run` (2 CPU processes, gloo): one SGD step of PDL with
per-device batch 1 and 2 accumulation steps, then rank 0 saves the parameter change."""

import sys
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).parent))
from conftest import PROMPT_COMPLETION, cpu_args, make_tiny_model  # noqa: E402

from pdl_plugin import PDLSFTTrainer  # noqa: E402


def main(tokenizer_path: str, output: str, per_device: int, accumulation: int) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    model = make_tiny_model(len(tokenizer), seed=3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = cpu_args(
        Path(output).parent, loss_type="pdl", pdl_alpha=1.0, optim="sgd", learning_rate=1.0,
        lr_scheduler_type="constant", max_grad_norm=0.0, weight_decay=0.0, max_steps=1, ddp_backend="gloo",
        per_device_train_batch_size=per_device, gradient_accumulation_steps=accumulation,
        average_tokens_across_devices=True,
    )
    trainer = PDLSFTTrainer(model, args, Dataset.from_dict(PROMPT_COMPLETION), processing_class=tokenizer)
    trainer.train()
    if trainer.accelerator.is_main_process:
        delta = torch.cat([(p.detach() - before[n]).flatten() for n, p in model.named_parameters()])
        torch.save({"delta": delta, "world_size": trainer.accelerator.num_processes}, output)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
