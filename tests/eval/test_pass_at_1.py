"""pass@1 inside `evaluate_model` on HumanEval-style rows (`test` defines `check(candidate)`, `entry_point` names the
function): a correct body passes, a stub fails, a test that nothing calls is refused. Generations are scripted, the
model is tiny, the tokenizer real."""

from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset

from conftest import cpu_args
from pdl_plugin import PDLConfigError
from pdl_plugin.eval import evaluate as evaluate_module
from pdl_plugin.eval.evaluate import EvalSettings, evaluate_model
from pdl_plugin.eval.generation import CODE_STOP_SEQUENCES, Generation
from pdl_plugin.frequency import FrequencyTable, tokenizer_fingerprint

ROWS = {
    "prompt": ['def add(a, b):\n    """Add two numbers."""\n', 'def neg(x):\n    """Negate x."""\n'],
    "completion": ["    return a + b\n", "    return -x\n"],
    "test": ["def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n",
             "def check(candidate):\n    assert candidate(2) == -2\n"],
    "entry_point": ["add", "neg"],
}
# What the model "generates" after the trained prompt, which ends before the prompt's final newline
GENERATED = ["\n    return a + b\n", "\n    pass\n"]  # right, and a stub returning None


@pytest.fixture
def scripted(monkeypatch, tokenizer):
    calls, texts = [], list(GENERATED)

    def fake_generate(model, tok, examples, **options):
        calls.append(options)
        return [Generation(text, tok(text, add_special_tokens=False)["input_ids"], False)
                for text in texts[: len(examples)]]


    monkeypatch.setattr(evaluate_module, "generate", fake_generate)
    return SimpleNamespace(calls=calls, texts=texts)  # the options of each call; the generations it returns


def _evaluate(tmp_path, tokenizer, tiny_model, rows):
    recipe = SimpleNamespace(script=SimpleNamespace(dataset_test_split="test", dataset_name="someone/humaneval-like"),
                             training=cpu_args(tmp_path, loss_type="pdl", pdl_alpha=0.5))
    counts = torch.zeros(tiny_model.get_output_embeddings().weight.shape[0], dtype=torch.int64)
    counts[:1000] = 3
    table = FrequencyTable(counts, tokenizer_fingerprint(tokenizer), "completion_only", "test")
    settings = EvalSettings(max_prompts=8, max_new_tokens=16, sampled=False)
    return evaluate_model(tiny_model, tokenizer, recipe, table, settings, validation_dataset=Dataset.from_dict(rows))


def test_correct_body_passes_and_stub_fails_with_entry_points(tmp_path, tokenizer, tiny_model, scripted):
    result = _evaluate(tmp_path, tokenizer, tiny_model, ROWS)
    greedy = result["generation"]["greedy"]
    assert greedy["pass_at_1"] == 0.5 and greedy["pass_at_1_examples"] == 2 and greedy["pass_at_1_no_assertion"] == 0
    assert result["references"]["pass_at_1"] == 1.0  # the data set's own solutions pass their tests
    assert result["task_type"] == "code" and "`test` column" in result["task_type_reason"]
    assert result["function_completion"]
    assert scripted.calls[0]["stop_sequences"] == CODE_STOP_SEQUENCES == ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
    assert result["split"] == "test" and result["prompts_cut_by_training"] == 2
    assert greedy["parse_rate"] == 1.0 and greedy["blank_line_first"] == 0.0
    assert result["validation"]["pdl_unseen_weight"] == "rarest" and result["validation"]["tokens"] > 0


def test_a_test_that_nothing_calls_is_refused(tmp_path, tokenizer, tiny_model, scripted):
    rows = {key: value for key, value in ROWS.items() if key != "entry_point"}
    with pytest.raises(PDLConfigError, match=r"2 of 2 tests .* reach no assertion .* add an `entry_point` column"):
        _evaluate(tmp_path, tokenizer, tiny_model, rows)


def test_instructions_answered_with_code_run_the_generated_program_alone(tmp_path, tokenizer, tiny_model, scripted):
    rows = {  # MBPP-like: the prompt is prose, the completion a whole function, tests are top-level asserts
        "prompt": ["Write a function add(a, b) that returns the sum.\n", "Write a function neg(x) that negates x.\n"],
        "completion": ["def add(a, b):\n    return a + b\n", "def neg(x):\n    return -x\n"],
        "test": ["assert add(1, 2) == 3\n", "assert neg(2) == -2\n"],
    }
    scripted.texts[:] = ["```python\ndef add(a, b):\n    return a + b\n```\nDone.", "def neg(x):\n    return x\n"]
    result = _evaluate(tmp_path, tokenizer, tiny_model, rows)
    greedy = result["generation"]["greedy"]
    assert greedy["pass_at_1"] == 0.5 and result["references"]["pass_at_1"] == 1.0
    assert not result["function_completion"] and scripted.calls[0]["stop_sequences"] == ()  # whole answers, no stops
    assert greedy["parse_rate"] == 1.0 and "body_parse_rate" not in greedy
