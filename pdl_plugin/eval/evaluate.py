"""Evaluation of a finetuned model on a recipe's validation split: generations, their metrics and validation losses.

`evaluate_model` returns a JSON-able dict; `pdl-eval` loads a model from an adapter folder and calls it, `pdl-compare`
calls it on each freshly trained model.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import PDLConfigError
from ..frequency import TABLE_FILENAME, FrequencyTable, tokenizer_fingerprint
from . import metrics
from .execution import pass_at_1
from .generation import Example, Generation, generate, validation_examples

EVAL_FORMAT = "pdl-eval/1"


@dataclass
class EvalSettings:
    max_prompts: int = 48
    max_new_tokens: int = 64
    batch_size: int = 16
    seed: int = 0
    temperature: float = 0.7
    top_p: float = 0.95
    sampled: bool = True  # also one seeded sampled run beside greedy
    reference_alpha: float | None = None  # alpha of the reported validation PDL; default: the recipe's pdl_alpha
    rare_fraction: float = 0.2
    repetition_n: int = 3
    test_timeout: float = 10.0
    max_prompt_tokens: int | None = None


def load_validation_split(recipe):
    """The recipe's validation split (its `dataset_test_split`), whatever its `eval_strategy` says."""
    from ..recipe import load_recipe_datasets

    training = recipe.training
    saved = training.eval_strategy
    training.eval_strategy = "steps"  # only read by load_recipe_datasets, to decide whether to return the eval split
    try:
        train, validation = load_recipe_datasets(recipe)
    finally:
        training.eval_strategy = saved
    return train, validation


def evaluate_model(model, tokenizer, recipe, table: FrequencyTable, settings: EvalSettings | None = None,
                   train_dataset=None, validation_dataset=None) -> dict:
    """Generate (greedy, and sampled when asked) on the first `max_prompts` validation prompts and score them."""
    settings = settings or EvalSettings()
    started, cpu_started = time.perf_counter(), time.process_time()
    vocab_rows = model.get_output_embeddings().weight.shape[0]
    table.check_compatible(tokenizer_fingerprint(tokenizer), vocab_rows, source="The training frequency table")
    if train_dataset is None or validation_dataset is None:
        train_dataset, validation_dataset = load_validation_split(recipe)
    validation = validation_dataset.select(range(min(settings.max_prompts, len(validation_dataset))))
    examples = validation_examples(validation, tokenizer, settings.max_prompts)
    epsilon = recipe.training.pdl_epsilon
    reference_alpha = settings.reference_alpha if settings.reference_alpha is not None else recipe.training.pdl_alpha
    counts = table.counts.numpy()
    rare = metrics.rare_token_ids(counts, settings.rare_fraction)
    reference_ids = [tokenizer(e.reference, add_special_tokens=False)["input_ids"] for e in examples]
    is_code = _is_code_task(recipe)

    result = {
        "format": EVAL_FORMAT,
        "settings": dataclasses.asdict(settings) | {"reference_alpha": reference_alpha, "epsilon": epsilon},
        "prompts": len(examples),
        "table": {"total_tokens": table.total, "distinct": int((table.counts > 0).sum()), "masking": table.masking,
                  "rare_types": len(rare)},
        "references": _text_metrics([e.reference for e in examples], reference_ids, counts, epsilon, settings),
        "generation": {},
    }
    modes = [("greedy", False)] + ([("sampled", True)] if settings.sampled else [])
    samples = {}
    for mode, do_sample in modes:
        generations = generate(
            model, tokenizer, examples, max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size,
            do_sample=do_sample, temperature=settings.temperature, top_p=settings.top_p, seed=settings.seed,
            max_prompt_tokens=settings.max_prompt_tokens, desc=f"pdl-eval: {mode}",
        )
        scored = _generation_metrics(examples, generations, reference_ids, counts, rare, epsilon, settings, is_code)
        result["generation"][mode] = scored
        samples[mode] = generations
    result["validation"] = validation_losses(model, tokenizer, recipe, table, reference_alpha, train_dataset,
                                             validation)
    result["samples"] = [
        {"prompt": e.source_prompt[-300:], "reference": e.reference,
         **{mode: samples[mode][i].text for mode in samples}}
        for i, e in enumerate(examples)
    ]
    result["ranks"] = {
        "references": metrics.frequency_ranks(reference_ids, counts).tolist(),
        **{mode: metrics.frequency_ranks([g.token_ids for g in samples[mode]], counts).tolist() for mode in samples},
    }
    result["time"] = {"wall_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu_started}
    return result


def _is_code_task(recipe) -> bool:
    name = (recipe.script.dataset_name or "").lower()
    return "code" in name


def _text_metrics(texts, token_ids, counts, epsilon, settings: EvalSettings) -> dict:
    lengths = [len(ids) for ids in token_ids]
    return {
        "distinct_1": metrics.distinct_n(texts, 1),
        "distinct_2": metrics.distinct_n(texts, 2),
        f"repetition_{settings.repetition_n}": metrics.repetition_rate(texts, settings.repetition_n),
        "self_information_bits": metrics.mean_self_information(token_ids, counts, epsilon),
        "unseen_token_rate": metrics.unseen_token_rate(token_ids, counts),
        "mean_tokens": float(np.mean(lengths)) if lengths else math.nan,
    }


def _generation_metrics(examples: list[Example], generations: list[Generation], reference_ids, counts, rare, epsilon,
                        settings: EvalSettings, is_code: bool) -> dict:
    texts = [g.text for g in generations]
    scored = {
        "rouge_l": metrics.rouge_l(texts, [e.reference for e in examples]),
        **_text_metrics(texts, [g.token_ids for g in generations], counts, epsilon, settings),
        "hit_token_limit": float(np.mean([g.hit_limit for g in generations])),
        "empty": float(np.mean([not g.text.strip() for g in generations])),
    }
    scored["rouge_l_first_line"] = metrics.rouge_l([metrics.first_line(t) for t in texts],
                                                   [metrics.first_line(e.reference) for e in examples])
    recall, qualified = metrics.rare_token_recall([g.token_ids for g in generations], reference_ids, rare)
    scored["rare_token_recall"], scored["rare_token_recall_examples"] = recall, qualified
    if is_code:
        sources = [e.source_prompt + g.text for e, g in zip(examples, generations)]
        scored["parse_rate"] = metrics.parse_rate(sources)
        finished = [s for s, g in zip(sources, generations) if not g.hit_limit]
        scored["parse_rate_finished"] = metrics.parse_rate(finished)
        scored["body_parse_rate"] = float(np.mean([metrics.body_parses(t) for t in texts])) if texts else math.nan
    tested = [(e, g) for e, g in zip(examples, generations) if e.test]
    if tested:
        scored["pass_at_1"], _ = pass_at_1([e.source_prompt + g.text for e, g in tested], [e.test for e, _ in tested],
                                           settings.test_timeout)
        scored["pass_at_1_examples"] = len(tested)
    return scored


def validation_losses(model, tokenizer, recipe, table: FrequencyTable, reference_alpha: float, train_dataset,
                      validation_dataset) -> dict:
    """Unweighted cross-entropy and PDL (at `reference_alpha`, weights from the TRAINING table) on the validation rows.

    Runs the trainer's own evaluation (same preparation and masking as training): with `loss_type: pdl` its
    `eval_loss` is the PDL and `eval_ce_loss` the plain cross-entropy of the same tokens.
    """
    from ..trainer import PDLSFTTrainer

    with tempfile.TemporaryDirectory(prefix="pdl-eval-") as folder:
        table_path = table.save(Path(folder) / TABLE_FILENAME)
        args = dataclasses.replace(
            recipe.training, output_dir=folder, loss_type="pdl", pdl_alpha=float(reference_alpha),
            pdl_freq_path=str(table_path), pdl_alpha_warmup_steps=0, model_init_kwargs=None, report_to=[],
            save_strategy="no", eval_strategy="no", disable_tqdm=True, per_device_eval_batch_size=8,
            resume_from_checkpoint=None, push_to_hub=False,
        )
        was_training = model.training
        trainer = PDLSFTTrainer(model, args=args, train_dataset=train_dataset.select(range(min(8, len(train_dataset)))),
                                eval_dataset=validation_dataset, processing_class=tokenizer)
        try:
            output = trainer.evaluate()
        finally:
            model.train(was_training)
    if "eval_ce_loss" not in output:
        raise PDLConfigError("The evaluation produced no cross-entropy: the validation rows hold no trained token.")
    return {"ce": output["eval_ce_loss"], "pdl": output["eval_loss"], "pdl_alpha": float(reference_alpha),
            "mean_weight": output.get("eval_pdl_mean_weight"), "rows": len(validation_dataset)}


def load_for_eval(adapter: str | Path, recipe):
    """The base model of `recipe` with the LoRA adapter in `adapter` (or a full model folder), and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = Path(adapter)
    if not adapter.is_dir():
        raise PDLConfigError(f"--adapter {adapter} is not a folder. Pass the output_dir of a pdl-sft run.")
    dtype = recipe.model.dtype if recipe.model.dtype not in (None, "auto") else torch.float32
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    has_tokenizer = (adapter / "tokenizer_config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(str(adapter if has_tokenizer else recipe.model.model_name_or_path))
    if (adapter / "adapter_config.json").is_file():
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(recipe.model.model_name_or_path, dtype=dtype)
        model = PeftModel.from_pretrained(base, str(adapter))
    elif (adapter / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(str(adapter), dtype=dtype)
    else:
        raise PDLConfigError(f"{adapter} holds neither a LoRA adapter (adapter_config.json) nor a model (config.json).")
    model.eval()
    return model, tokenizer


def format_table(result: dict) -> "rich.table.Table":  # noqa: F821
    """The readable view of one evaluation: one column per generation mode, plus the references."""
    from rich.table import Table

    modes = list(result["generation"])
    view = Table(title=f"pdl-eval: {result['prompts']} validation prompts")
    view.add_column("metric")
    for mode in modes:
        view.add_column(mode, justify="right")
    view.add_column("references", justify="right")
    keys = list(dict.fromkeys(k for mode in modes for k in result["generation"][mode]))
    for key in keys:
        cells = [_fmt(result["generation"][mode].get(key)) for mode in modes]
        view.add_row(key, *cells, _fmt(result["references"].get(key)))
    validation = result["validation"]
    view.add_section()
    view.add_row("validation cross-entropy", _fmt(validation["ce"]), *[""] * len(modes))
    view.add_row(f"validation PDL (alpha={validation['pdl_alpha']})", _fmt(validation["pdl"]), *[""] * len(modes))
    return view


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return "nan" if math.isnan(value) else f"{value:.4f}"
