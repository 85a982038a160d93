"""Prior tables: a text corpus's tokens and a base model's expected tokens, each against an independent computation."""

from collections import Counter

import numpy as np
import pytest
import torch
from conftest import make_tiny_model
from datasets import Dataset

from pdl_plugin import PDLConfigError, PDLDataError
from pdl_plugin.frequency import merge_tables
from pdl_plugin.priors import TextSource, corpus_table, model_prior_counts
from pdl_plugin.priors import corpus as corpus_module
from pdl_plugin.priors.corpus import text_blocks
from pdl_plugin.priors.english import strip_wiki_markup

TEXTS = [
    "The quick brown fox jumps over the lazy dog.\n\nIt was not amused.",
    "Tokenizers split text into pieces; PDL counts the pieces.   Some have  odd   spacing.\n",
    "Numbers like 12345 and 3.14159, symbols like ### and ---, and café, naïve, Zürich.",
    "",
    "A last line\n\n\n\nwith blank lines\n   \n inside it.",
]


def _by_hand(texts, tokenizer, rows):
    """Every token of each text, tokenised alone without special tokens, counted with a Counter."""
    counter = Counter()
    for text in texts:
        counter.update(tokenizer(text, add_special_tokens=False)["input_ids"])
    counts = np.zeros(rows, dtype=np.int64)
    for token, count in counter.items():
        counts[token] = count
    return counts


def test_corpus_counts_every_token_of_a_jsonl_file(tmp_path, tokenizer):
    path = tmp_path / "corpus.jsonl"
    Dataset.from_dict({"body": TEXTS, "id": list(range(len(TEXTS)))}).to_json(path)
    table = corpus_table(TextSource(str(path), column="body"), tokenizer, len(tokenizer))
    assert np.array_equal(table.counts.numpy(), _by_hand(TEXTS, tokenizer, len(tokenizer)))
    assert (table.kind, table.masking) == ("all_tokens", "all_tokens")
    assert table.extra["source"] == str(path) and table.extra["text_column"] == "body" and table.extra["texts"] == "5"


def test_text_files_in_small_blocks_count_as_the_whole_file(tmp_path, tokenizer, monkeypatch):
    """Blocks are cut before whitespace runs: the tokens of the blocks are those of the whole text."""
    folder = tmp_path / "books"
    folder.mkdir()
    whole = [("\n\n".join(TEXTS) + " trailing spaces   \n") * 7, "No line break at all, " * 40]
    for index, text in enumerate(whole):
        (folder / f"book{index}.txt").write_text(text)
    monkeypatch.setattr(corpus_module, "BLOCK_CHARS", 64)
    assert len(list(text_blocks(folder / "book0.txt"))) > 10
    table = corpus_table(TextSource(str(folder)), tokenizer, len(tokenizer))
    assert np.array_equal(table.counts.numpy(), _by_hand(whole, tokenizer, len(tokenizer)))


def test_corpus_shards_merge_into_the_whole(tmp_path, tokenizer):
    path = tmp_path / "corpus.parquet"
    Dataset.from_dict({"text": TEXTS * 3}).to_parquet(path)
    whole = corpus_table(TextSource(str(path)), tokenizer, len(tokenizer))
    parts = [corpus_table(TextSource(str(path)), tokenizer, len(tokenizer), shard=(i, 3)) for i in range(3)]
    assert torch.equal(merge_tables(parts).counts, whole.counts) and merge_tables(parts).kind == "all_tokens"
    assert [p.extra["shard"] for p in parts] == ["0/3", "1/3", "2/3"]


@pytest.mark.parametrize(("source", "error", "message"), [
    ("missing.jsonl", PDLDataError, "does not exist"),
    ("embedded:klingon", PDLConfigError, "Unknown embedded corpus"),
])
def test_bad_text_sources_are_refused(tmp_path, tokenizer, source, error, message):
    with pytest.raises(error, match=message):
        corpus_table(TextSource(str(tmp_path / source) if "." in source else source), tokenizer, len(tokenizer))


def test_a_missing_column_and_an_empty_corpus_are_refused(tmp_path, tokenizer):
    path = tmp_path / "corpus.jsonl"
    Dataset.from_dict({"body": TEXTS}).to_json(path)
    with pytest.raises(PDLConfigError, match=r"no column `text` \(its columns: body\).*--text_column"):
        corpus_table(TextSource(str(path)), tokenizer, len(tokenizer))
    Dataset.from_dict({"text": ["", None]}).to_json(path)
    with pytest.raises(PDLDataError, match="holds no token"):
        corpus_table(TextSource(str(path)), tokenizer, len(tokenizer))


def test_wiki_markup_is_stripped_to_prose():
    raw = ("'''Albedo''' {{Infobox|a={{nested}}}} is the [[Diffuse reflection|diffuse reflection]] of [[sunlight]]."
           "<ref>Source</ref>\n[[File:Albedo.png|thumb|A [[map]]]]\n== History ==\n* An [https://x.org item]\n"
           "{| class=wikitable\n|-\n| cell\n|}\n[[Category:Physics]]")
    assert strip_wiki_markup(raw) == "Albedo  is the diffuse reflection of sunlight.\n\nHistory\nAn item"


# ---- the model prior -----------------------------------------------------------------------------------------------


def _rows():
    """Prepared rows by hand: prompt positions masked, one row without trained labels, one packed row of two
    sequences (whose second sequence's first label is trained but, starting a sequence, never predicted)."""
    generator = torch.Generator().manual_seed(0)
    rows = []
    for length, prompt in ((9, 4), (17, 10), (5, 5), (30, 1), (12, 6)):
        ids = torch.randint(0, 49152, (length,), generator=generator).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    ids = torch.randint(0, 49152, (14,), generator=generator).tolist()
    rows.append({"input_ids": ids, "labels": [-100] * 3 + ids[3:], "seq_lengths": [6, 8]})
    return rows


def _expected_by_hand(model, rows):
    """Full logits of each sequence alone, in float64, softmax at every position that predicts a trained label."""
    total = torch.zeros(model.config.vocab_size, dtype=torch.float64)
    for row in rows:
        start = 0
        for length in row.get("seq_lengths") or [len(row["input_ids"])]:
            ids = torch.tensor(row["input_ids"][start : start + length])
            labels = row["labels"][start : start + length]
            with torch.no_grad():
                logits = model(input_ids=ids[None]).logits[0].double()
            for j in range(1, length):
                if labels[j] != -100:
                    total += torch.softmax(logits[j - 1], dim=-1)
            start += length
    return total


@pytest.mark.parametrize("scaled_head", [False, True])
def test_model_prior_equals_the_softmax_summed_by_hand(scaled_head):
    model = make_tiny_model(49152)
    if scaled_head:  # a model whose head the prior does not reimplement: its own logits are used
        model.config.logits_scaling = 1.0 + 1e-9
    rows = _rows()
    expected = _expected_by_hand(model, rows)
    packed = Dataset.from_list([{**row, "seq_lengths": row.get("seq_lengths") or [len(row["labels"])]} for row in rows])
    for prepared in (rows, packed):
        counts, positions = model_prior_counts(model, prepared, batch_size=2)
        assert counts.dtype == torch.float64 and counts.shape == (49152,) and (counts > 0).all()
        assert positions == 5 + 7 + 0 + 29 + 6 + (3 + 7) == round(float(counts.sum()))
        assert float(((counts - expected).abs() / expected).max()) < 1e-6


def test_the_embedded_news_corpus_counts_when_gensim_is_installed(tokenizer):
    from pdl_plugin.priors.english import NEWS_FILE, gensim_data_file

    try:
        path = gensim_data_file(NEWS_FILE)
    except PDLDataError:
        pytest.skip("the gensim wheel (the embedded corpora's files) is not installed")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    table = corpus_table(TextSource("embedded:news"), tokenizer, len(tokenizer))
    assert table.extra["texts"] == str(len(lines)) == "300"
    assert np.array_equal(table.counts.numpy(), _by_hand(lines, tokenizer, len(tokenizer)))


def test_the_embedded_corpus_without_gensim_names_the_install(tokenizer, monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(PDLDataError, match=r"pip install --no-deps gensim==4\.4\.0"):
        corpus_table(TextSource("embedded:wikipedia"), tokenizer, len(tokenizer))
