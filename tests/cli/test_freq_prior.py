"""`pdl-freq --all-tokens` and `pdl-freq --model-prior`: prior tables in the task table's file format, and their
refusals (one `error:` line, nothing written)."""

import json
import re
from collections import Counter

import pytest
import torch
from conftest import PROMPT_COMPLETION, make_tiny_model
from datasets import Dataset

from pdl_plugin import FrequencyTable
from pdl_plugin.cli.freq import freq, main
from pdl_plugin.preparation import prepare_with_report
from pdl_plugin.recipe import parse_recipe

ROWS = [dict(zip(PROMPT_COMPLETION, values)) for values in zip(*PROMPT_COMPLETION.values())]
TEXTS = ["General English text, as a corpus holds it.", "", "Another document:\n\nwith two paragraphs.", "Zürich!"]


@pytest.fixture
def recipe(tmp_path, tokenizer):
    """A recipe on a tiny model saved with the real SmolLM2 tokenizer, prompt/completion data in a local file."""
    model_dir = tmp_path / "tiny-model"
    make_tiny_model(len(tokenizer)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    path = tmp_path / "recipe.yaml"
    path.write_text(f"model_name_or_path: {model_dir}\ndatasets:\n  - path: json\n    data_files: {data}\n"
                    f"    split: train\noutput_dir: {tmp_path / 'out'}\nloss_type: pdl\npdl_alpha: 0.8\nbf16: false\n"
                    "use_cpu: true\nper_device_eval_batch_size: 3\n")
    return str(path)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    Dataset.from_dict({"text": TEXTS, "source": ["a", "b", "c", "d"]}).to_json(path)
    return str(path)


def test_all_tokens_writes_a_prior_of_every_token(tmp_path, recipe, corpus, tokenizer):
    out = tmp_path / "prior.safetensors"
    freq(["--config", recipe, "--all-tokens", "--text_dataset", corpus, "--output", str(out),
          "--plot", str(tmp_path / "p.png")])
    table = FrequencyTable.load(out)
    by_hand = Counter(i for text in TEXTS for i in tokenizer(text, add_special_tokens=False)["input_ids"])
    assert {i: int(c) for i, c in enumerate(table.counts.tolist()) if c} == dict(by_hand)
    assert (table.kind, table.masking, table.extra["source"], table.extra["text_column"]) == (
        "all_tokens", "all_tokens", corpus, "text")
    assert (tmp_path / "p.png").stat().st_size > 10_000


def _expected_by_hand(model, prepared):
    """Full float64 logits of each prepared row; softmax at each position that predicts a trained label, summed."""
    total = torch.zeros(model.config.vocab_size, dtype=torch.float64)
    for row in prepared:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([row["input_ids"]])).logits[0].double()
        for j, label in enumerate(row["labels"]):
            if j and label != -100:
                total += torch.softmax(logits[j - 1], dim=-1)
    return total


def test_model_prior_equals_the_softmax_by_hand_and_records_the_task_data(tmp_path, recipe, tokenizer):
    task = freq(["--config", recipe, "--output", str(tmp_path / "task.safetensors")])
    freq(["--config", recipe, "--model-prior", "--output", str(tmp_path / "prior.safetensors")])
    prior = FrequencyTable.load(tmp_path / "prior.safetensors")
    assert (prior.kind, prior.masking, prior.data_fingerprint) == ("model_prior", "completion_only",
                                                                 task.data_fingerprint)
    assert prior.counts.dtype == torch.float64 and abs(prior.total - task.total) < 1e-6 * task.total
    settings = parse_recipe(["--config", recipe]).training
    prepared, _, _ = prepare_with_report(Dataset.from_list(ROWS), tokenizer, settings)
    model_dir = parse_recipe(["--config", recipe]).model.model_name_or_path
    from transformers import AutoModelForCausalLM

    expected = _expected_by_hand(AutoModelForCausalLM.from_pretrained(model_dir), prepared)
    assert float(((prior.counts - expected).abs() / expected).max()) < 1e-6


def test_model_prior_shards_merge_into_the_unsharded_prior(tmp_path, recipe):
    """One row per forward, so that both runs compute each row alike (batches of other rows, padded otherwise,
    round differently in float32); the float64 sums then agree to their own rounding."""
    one = ["--per_device_eval_batch_size", "1"]
    whole = freq(["--config", recipe, "--model-prior", *one, "--output", str(tmp_path / "whole.safetensors")])
    parts = [str(tmp_path / f"part{i}.safetensors") for i in range(2)]
    for i, part in enumerate(parts):
        freq(["--config", recipe, "--model-prior", *one, "--shard", f"{i}/2", "--output", part])
    merged = freq(["merge", "--output", str(tmp_path / "merged.safetensors"), *parts])
    assert merged.kind == "model_prior" and torch.allclose(merged.counts, whole.counts, rtol=1e-12, atol=0)


def _refused(capsys, argv, output) -> str:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert stop.value.code == 2 and len(lines) == 1 and "Traceback" not in err
    assert not output.exists()
    return lines[0]


@pytest.mark.parametrize(("flags", "message"), [
    (["--model-prior", "--all-tokens", "--text_dataset", "x.txt"], "two different priors"),
    (["--all-tokens"], "--all-tokens needs the text"),
    (["--text_dataset", "x.txt"], "go with --all-tokens"),
    (["--all-tokens", "--text_dataset", "missing/corpus.jsonl"], "does not exist"),
    (["--all-tokens", "--text_dataset", "no-such-org/no-such-corpus"], "Cannot load the text data set"),
    (["--all-tokens", "--text_dataset", "CORPUS", "--text_column", "body"], r"no column `body` \(its columns"),
    (["--all-tokens", "--text_dataset", "CORPUS", "--text_max_rows", "many"], r"--text_max_rows: invalid int value"),
])
def test_bad_prior_commands_are_refused_with_one_line(tmp_path, capsys, recipe, corpus, flags, message):
    output = tmp_path / "prior.safetensors"
    flags = [corpus if flag == "CORPUS" else flag for flag in flags]
    line = _refused(capsys, ["--config", recipe, *flags, "--output", str(output)], output)
    assert re.search(message, line), line


def test_an_empty_corpus_writes_nothing(tmp_path, capsys, recipe):
    empty = tmp_path / "empty.jsonl"
    Dataset.from_dict({"text": ["", ""]}).to_json(empty)
    output = tmp_path / "prior.safetensors"
    line = _refused(capsys, ["--config", recipe, "--all-tokens", "--text_dataset", str(empty), "--output", str(output)],
                    output)
    assert "holds no token" in line


def test_priors_of_another_tokenizer_empty_or_of_mixed_kinds_are_refused(tmp_path, capsys, recipe, corpus, tokenizer):
    good = tmp_path / "good.safetensors"
    freq(["--config", recipe, "--all-tokens", "--text_dataset", corpus, "--output", str(good)])
    table = FrequencyTable.load(good)
    other = tmp_path / "other.safetensors"
    FrequencyTable(table.counts, "0123456789abcdef", "all_tokens", "x", kind="all_tokens").save(other)
    line = _refused(capsys, ["--config", recipe, "--table", str(other)], tmp_path / "never")
    assert "another tokenizer" in line
    empty = tmp_path / "empty.safetensors"
    FrequencyTable(torch.zeros(len(tokenizer), dtype=torch.float64), table.tokenizer_fingerprint, "completion_only",
                   "x", kind="model_prior").save(empty)
    assert "empty prior" in _refused(capsys, ["--config", recipe, "--table", str(empty)], tmp_path / "never")
    mixed = tmp_path / "mixed.safetensors"
    assert "Cannot merge" in _refused(capsys, ["merge", "--output", str(mixed), str(good), str(empty)], mixed)
