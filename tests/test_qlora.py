"""QLoRA on CPU: after an eval pass, LoRA gradients through 4-bit layers equal those of a dequantised float model."""

import pytest
import torch
from datasets import Dataset

from conftest import PROMPT_COMPLETION, cpu_args

bnb = pytest.importorskip("bitsandbytes")
peft = pytest.importorskip("peft")


def _tiny_float_model(tokenizer, folder):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, tie_word_embeddings=True, attn_implementation="eager", pad_token_id=2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)


def _lora(model):
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0)
    model = peft.get_peft_model(model, config)
    torch.manual_seed(1)
    for name, param in model.named_parameters():
        if "lora_" in name:  # B starts at zero; random values make every LoRA gradient non-trivial
            torch.nn.init.normal_(param, std=0.5)
    return model


def _models(tokenizer, folder):
    """The same LoRA model twice: on nf4 weights, and on the float dequantisation of those very weights."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantized = AutoModelForCausalLM.from_pretrained(
        folder, quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                       bnb_4bit_compute_dtype=torch.float32), dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    quantized, reference = _lora(quantized), _lora(reference)
    _copy_dequantised(quantized, reference)
    return quantized, reference


def _copy_dequantised(quantized, reference):
    modules = dict(reference.named_modules())
    with torch.no_grad():
        for name, module in quantized.named_modules():
            if isinstance(module, bnb.nn.Linear4bit):
                modules[name].weight.copy_(bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state))


def _lora_grads(model, batch, weights):
    model.train()
    model.zero_grad()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels, reduction="none")
    w = weights[labels.clamp(min=0)] * (labels != -100)
    ((w * nll).sum() / w.sum()).backward()
    return torch.cat([torch.zeros_like(p).flatten() if p.grad is None else p.grad.flatten()
                      for n, p in model.named_parameters() if "lora_" in n])


def _eval_pass(model, batch):
    model.eval()
    with torch.no_grad():
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def test_lora_gradients_are_exact_after_an_eval_pass_through_the_trainer(tmp_path, tokenizer):
    from pdl_plugin import PDLSFTTrainer

    _tiny_float_model(tokenizer, tmp_path / "tiny")
    quantized, reference = _models(tokenizer, tmp_path / "tiny")
    dataset = Dataset.from_dict(PROMPT_COMPLETION)
    args = cpu_args(tmp_path, loss_type="pdl", eval_strategy="no", per_device_eval_batch_size=4)
    trainer = PDLSFTTrainer(quantized, args, dataset, eval_dataset=dataset, processing_class=tokenizer)
    for name, param in reference.named_parameters():  # TRL casts QLoRA adapters to bf16: do the same here
        if "lora_" in name:
            param.data = param.data.to(torch.bfloat16)
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.evaluate()  # the eval pass that, unguarded, repacks the 4-bit weights into a kernel with no backward
    got = _lora_grads(trainer.model, batch, trainer.pdl_weights)
    expected = _lora_grads(reference, batch, trainer.pdl_weights)
    assert float((got - expected).norm() / expected.norm()) < 1e-4


@pytest.mark.skipif(not bnb.nn.modules.has_avx512bf16(), reason="the pitfall needs a CPU with AVX512-BF16")
def test_without_the_guard_the_same_eval_pass_corrupts_gradients(tmp_path, tokenizer):
    """Shows the test above can fail: bitsandbytes alone gets these gradients wrong on this kind of CPU."""
    from pdl_plugin.quantization import guard_cpu_4bit_gradients

    _tiny_float_model(tokenizer, tmp_path / "tiny")
    quantized, reference = _models(tokenizer, tmp_path / "tiny")
    ids = tokenizer(["What is AI? The field of machines that think."], return_tensors="pt")
    batch = {**ids, "labels": ids["input_ids"].clone()}
    weights = torch.ones(len(tokenizer))
    _eval_pass(quantized, batch)
    expected = _lora_grads(reference, batch, weights)
    broken = _lora_grads(quantized, batch, weights)
    assert float((broken - expected).norm() / expected.norm()) > 0.1
    assert guard_cpu_4bit_gradients(quantized) == 7  # every linear layer of the one decoder layer
    # Unpacking restores the differentiable layout; the repacking stored scales in bf16, so compare against the
    # dequantisation of the weights the model holds now
    _copy_dequantised(quantized, reference)
    expected = _lora_grads(reference, batch, weights)
    repaired = _lora_grads(quantized, batch, weights)
    assert float((repaired - expected).norm() / expected.norm()) < 1e-4
