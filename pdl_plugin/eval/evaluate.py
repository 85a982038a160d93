"""Evaluation of a finetuned model on a recipe's validation split: generations, their metrics and validation losses.

`evaluate_model` returns a JSON-able dict; `pdl-eval` loads a model from an adapter folder and calls it, `pdl-compare`
calls it on each freshly trained model.

The validation losses come from validation.py, the model from loading.py, the generations from generation.py.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from ..errors import PDLConfigError
from ..frequency import FrequencyTable, tokenizer_fingerprint
from . import metrics
from .execution import pass_at_1
from .generation import CODE_STOP_SEQUENCES, Example, Generation, generate, validation_examples
from .loading import check_adapter_folder, load_for_eval  # noqa: F401  (re-exported)
from .settings import TASK_TYPES, EvalSettings  # noqa: F401  (EvalSettings: re-exported)
from .validation import (UNSEEN_POLICY, check_finite_losses, loss_summary, token_nll,  # noqa: F401  (re-exported)
                         validation_losses)

EVAL_FORMAT = "pdl-eval/2"
KNOWN_CODE_DATASETS = ("embedded:code",)


def load_validation_split(recipe):
    """The recipe's train split and its validation split (its `dataset_test_split`), whatever its `eval_strategy`
    says; a missing validation split is refused with the split's name and how to set it."""
    from ..recipe_data import load_dataset_dict

    script = recipe.script
    dataset = load_dataset_dict(recipe)
    for split, key in ((script.dataset_test_split, "dataset_test_split"),
                       (script.dataset_train_split, "dataset_train_split")):
        if split not in dataset:
            raise PDLConfigError(
                f"The data set has no split `{split}` (it has {', '.join(f'`{name}`' for name in dataset)}), which "
                f"the evaluation reads as the recipe's `{key}`. Set `{key}` to one of them, in the recipe or on the "
                f"command line (e.g. `--{key} {next(iter(dataset), 'validation')}`)."
            )
    return dataset[script.dataset_train_split], dataset[script.dataset_test_split]


# Where a training frequency table given to an evaluation comes from, and the way out when it does not fit
EVAL_TABLE_HINT = ("or pass the table of the run that trained this adapter (`pdl-eval --table`, by default "
                   "ADAPTER/pdl_frequency_table.safetensors)")


def check_eval_table(table: FrequencyTable, tokenizer, vocab_rows: int) -> None:
    """Refuse a training table that does not fit the model, or counts nothing (every weight would be 0/0)."""
    table.check_compatible(tokenizer_fingerprint(tokenizer), vocab_rows, source="The training frequency table",
                           hint=EVAL_TABLE_HINT)
    if not table.total > 0:
        raise PDLConfigError("The training frequency table counts no trained token (total 0), so it has no "
                             "frequencies for self-information, rare tokens or validation PDL. Recount it with "
                             f"`pdl-freq --config RECIPE.yaml --output TABLE`, {EVAL_TABLE_HINT}.")


def evaluate_model(model, tokenizer, recipe, table: FrequencyTable, settings: EvalSettings | None = None,
                   train_dataset=None, validation_dataset=None) -> dict:
    """Generate (greedy, and sampled when asked) on the first `max_prompts` validation prompts and score them.

    `train_dataset` is accepted for compatibility and not used: the validation losses need only the validation rows.
    """
    from ..recipe_data import first_rows

    settings = settings or EvalSettings()
    started, cpu_started = time.perf_counter(), time.process_time()
    vocab_rows = model.get_output_embeddings().weight.shape[0]
    check_eval_table(table, tokenizer, vocab_rows)
    if validation_dataset is None:
        _, validation_dataset = load_validation_split(recipe)
    split = recipe.script.dataset_test_split
    validation = first_rows(validation_dataset, settings.max_prompts)
    task, task_reason = resolve_task_type(settings.task_type, recipe, validation)
    examples = validation_examples(validation, tokenizer, settings.max_prompts, args=recipe.training)
    epsilon = recipe.training.pdl_epsilon
    reference_alpha = settings.reference_alpha if settings.reference_alpha is not None else recipe.training.pdl_alpha
    counts = table.counts.numpy()
    rare = metrics.rare_token_ids(counts, settings.rare_fraction)
    reference_ids = [tokenizer(e.reference, add_special_tokens=False)["input_ids"] for e in examples]
    is_code = task == "code"
    completes_functions = is_code and is_function_completion(examples)
    stop_sequences = CODE_STOP_SEQUENCES if completes_functions else ()
    tested = [i for i, e in enumerate(examples) if e.test]
    # first, so that a model of NaN is refused before the generations are spent on it
    validation_scores = validation_losses(model, tokenizer, recipe, table, reference_alpha, validation)
    check_finite_losses(validation_scores)

    result = {
        "format": EVAL_FORMAT,
        "settings": dataclasses.asdict(settings) | {"reference_alpha": reference_alpha, "epsilon": epsilon},
        "split": split,
        "task_type": task,
        "task_type_reason": task_reason,
        "function_completion": completes_functions,
        "stop_sequences": list(stop_sequences),
        "prompts": len(examples),
        "prompts_cut_by_training": sum(bool(e.prompt_cut) for e in examples),
        "table": {"total_tokens": table.total, "distinct": int((table.counts > 0).sum()), "masking": table.masking,
                  "rare_types": len(rare), "data_fingerprint": table.data_fingerprint},
        "references": _text_metrics([e.reference for e in examples], reference_ids, counts, epsilon, settings),
        "generation": {},
    }
    if tested:
        result["references"].update(_reference_tests(examples, tested, settings.test_timeout, completes_functions))
    samples = {}
    for mode, do_sample in [("greedy", False)] + ([("sampled", True)] if settings.sampled else []):
        samples[mode] = _generate(model, tokenizer, examples, settings, do_sample, stop_sequences, mode)
        result["generation"][mode] = _generation_metrics(examples, samples[mode], reference_ids, counts, rare, epsilon,
                                                         settings, is_code, completes_functions)
    result["validation"] = validation_scores
    result.update(_samples_and_ranks(examples, samples, reference_ids, counts))
    result["time"] = {"wall_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu_started}
    return result


def _samples_and_ranks(examples: list[Example], samples: dict[str, list[Generation]], reference_ids, counts) -> dict:
    """Each prompt's end, reference and generations, and the training-frequency ranks of every generated token."""
    return {
        "samples": [{"prompt": e.source_prompt[-300:], "reference": e.reference,
                     **{mode: samples[mode][i].text for mode in samples}} for i, e in enumerate(examples)],
        "ranks": {
            "references": metrics.frequency_ranks(reference_ids, counts).tolist(),
            **{mode: metrics.frequency_ranks([g.token_ids for g in samples[mode]], counts).tolist() for mode in samples},
        },
    }


def _generate(model, tokenizer, examples, settings: EvalSettings, do_sample: bool, stop_sequences, mode: str):
    return generate(
        model, tokenizer, examples, max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size,
        do_sample=do_sample, temperature=settings.temperature, top_p=settings.top_p, seed=settings.seed,
        max_prompt_tokens=settings.max_prompt_tokens, stop_sequences=stop_sequences, desc=f"pdl-eval: {mode}",
    )


def resolve_task_type(requested: str, recipe, validation) -> tuple[str, str]:
    """'code' or 'text', and why: as asked (`--task_type`), else code when the validation rows carry tests (a `test`
    or `entry_point` column) or the data set is a known code set (`embedded:code`), else text. The data set's name
    is never searched for "code"."""
    if requested not in TASK_TYPES:
        raise PDLConfigError(f"--task_type must be one of {', '.join(TASK_TYPES)}; got {requested!r}.")
    if requested != "auto":
        return requested, "set by --task_type"
    columns = set(validation.column_names)
    for column in ("test", "entry_point"):
        if column in columns:
            return "code", f"the validation rows have a `{column}` column"
    name = recipe.script.dataset_name or ""
    if name in KNOWN_CODE_DATASETS:
        return "code", f"{name} is a code data set"
    return "text", "no `test` column and not a known code data set (pass --task_type code for code)"


def is_function_completion(examples: list[Example]) -> bool:
    """Whether the prompts are heads of Python functions (signature + docstring, HumanEval's layout) that the
    completion continues, rather than instructions answered with code: raw prompts, at least half of which hold a
    `def` and parse once given a body."""
    if not examples or examples[0].chat:
        return False
    heads = [("def " in e.trained_source_prompt and metrics.parses(e.trained_source_prompt.rstrip() + "\n    pass\n"))
             for e in examples]
    return sum(heads) * 2 >= len(heads)


def program_text(example: Example, text: str, function_completion: bool) -> str:
    """The program a completion makes: for function completion the prompt as trained + the generation; otherwise the
    first fenced code block of the generation (the whole generation when it has none)."""
    if function_completion:
        return example.trained_source_prompt + text
    return metrics.first_code_block(text)


def blank_line_first(example: Example, text: str) -> bool:
    """Whether the generation puts a blank line between the prompt's last line and its own first line (the symptom
    of a prompt whose final newline training never saw: the model writes the newline it was trained to write)."""
    seen = example.prompt if example.chat else example.trained_source_prompt
    tail = seen[len(seen.rstrip("\n")):] + text  # the prompt's own final newlines, then the generation
    lines = tail.split("\n")
    return len(lines) > 2 and not lines[1].strip()


def _reference_tests(examples: list[Example], tested: list[int], timeout: float, function_completion: bool) -> dict:
    """Run every test against the row's own reference solution; refuse a test that reaches no assertion there."""
    programs = [examples[i].source_prompt + examples[i].reference if function_completion
                else metrics.first_code_block(examples[i].reference) for i in tested]
    score, results = pass_at_1(programs, [examples[i].test for i in tested], timeout,
                               [examples[i].entry_point for i in tested])
    silent = [i for i, r in zip(tested, results) if r.status == "no_assertion"]
    if silent:
        first = examples[silent[0]]
        if "def check(" in (first.test or "") and not first.entry_point:
            hint = ("It defines `check(candidate)` but nothing calls it: add an `entry_point` column naming the "
                    "function to test (pdl-eval then calls `check(<entry_point>)`).")
        else:
            hint = "Make each test assert something (`assert` statements or unittest assertions)."
        raise PDLConfigError(
            f"{len(silent)} of {len(tested)} tests (validation row {silent[0]} first) reach no assertion when run "
            "against the row's own reference solution, so they would pass any program, even one that returns None. "
            f"{hint}"
        )
    return {"pass_at_1": score, "pass_at_1_examples": len(tested)}


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
                        settings: EvalSettings, is_code: bool, function_completion: bool = False) -> dict:
    texts = [g.text for g in generations]
    scored = {
        "rouge_l": metrics.rouge_l(texts, [e.reference for e in examples]),
        **_text_metrics(texts, [g.token_ids for g in generations], counts, epsilon, settings),
        "hit_token_limit": float(np.mean([g.hit_limit for g in generations])),
        "empty": float(np.mean([not g.text.strip() for g in generations])),
        "blank_line_first": float(np.mean([blank_line_first(e, g.text) for e, g in zip(examples, generations)])),
    }
    scored["rouge_l_first_line"] = metrics.rouge_l([metrics.first_line(t) for t in texts],
                                                   [metrics.first_line(e.reference) for e in examples])
    recall, qualified = metrics.rare_token_recall([g.token_ids for g in generations], reference_ids, rare)
    scored["rare_token_recall"], scored["rare_token_recall_examples"] = recall, qualified
    if is_code:
        sources = [program_text(e, g.text, function_completion) for e, g in zip(examples, generations)]
        scored["parse_rate"] = metrics.parse_rate(sources)
        finished = [s for s, g in zip(sources, generations) if not g.hit_limit]
        scored["parse_rate_finished"] = metrics.parse_rate(finished)
        if function_completion:
            scored["body_parse_rate"] = float(np.mean([metrics.body_parses(t) for t in texts])) if texts else math.nan
    tested = [(e, g) for e, g in zip(examples, generations) if e.test]
    if tested:
        scored["pass_at_1"], results = pass_at_1([program_text(e, g.text, function_completion) for e, g in tested],
                                                 [e.test for e, _ in tested], settings.test_timeout,
                                                 [e.entry_point for e, _ in tested])
        scored["pass_at_1_examples"] = len(tested)
        scored["pass_at_1_no_assertion"] = sum(r.status == "no_assertion" for r in results)
        # what the harness could isolate on this machine (README, "What the harness isolates")
        scored["pass_at_1_isolation"] = sorted({r.isolation for r in results if r.isolation})
    return scored


# ---- validation losses -------------------------------------------------------------------------------------------


def format_table(result: dict) -> "rich.table.Table":  # noqa: F821
    """The readable view of one evaluation: one column per generation mode, plus the references."""
    from rich.table import Table

    modes = list(result["generation"])
    split = result.get("split", "validation")
    task = f", task: {result['task_type']} ({result.get('task_type_reason', '')})" if "task_type" in result else ""
    view = Table(title=f"pdl-eval: the first {result['prompts']} prompts of the `{split}` split{task}")
    view.add_column("metric")
    for mode in modes:
        view.add_column(mode, justify="right")
    view.add_column("references", justify="right")
    keys = list(dict.fromkeys(k for mode in modes for k in result["generation"][mode]))
    for key in keys:
        cells = [_fmt(result["generation"][mode].get(key)) for mode in modes]
        view.add_row(key, *cells, _fmt(result["references"].get(key)))
    validation = result["validation"]
    blank = [""] * len(modes)
    alpha = f"{validation['pdl_alpha']:g}"
    view.add_section()
    view.add_row(f"val CE ({validation.get('tokens', '?')} tokens)", _fmt(validation["ce"]), *blank)
    policy = validation.get("pdl_unseen_weight", "formula")
    view.add_row(f"val PDL, alpha {alpha}, unseen: {_POLICY_WORDS[policy]}", _fmt(validation["pdl"]), *blank)
    if "pdl_formula" in validation:
        view.add_row(f"val PDL, alpha {alpha}, unseen: {_POLICY_WORDS['formula']}", _fmt(validation["pdl_formula"]),
                     *blank)
    for bucket in validation.get("ce_by_bucket", []):
        view.add_row(f"val CE, seen {_bucket_words(bucket['bucket'])} ({bucket['tokens']} tok)", _fmt(bucket["ce"]),
                     *blank)
    return view


_POLICY_WORDS = {"rarest": "rarest token's weight", "formula": "eq. 3 (eps**-alpha)"}


def _bucket_words(name: str) -> str:
    return {"unseen": "0x in training", ">100": ">100x"}.get(name, f"{name}x")


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return "nan" if math.isnan(value) else f"{value:.4f}"
