"""Counting at scale gives exactly the in-memory table: shards merged, a streaming dataset, several processes."""

from pathlib import Path

import pytest
import torch

from conftest import cpu_args
from pdl_plugin import FrequencyTable, FrequencyTableError, count_trained_tokens
from pdl_plugin.cli.freq import freq
from pdl_plugin.data.dialogue import load_dialogue
from pdl_plugin.frequency import merge_tables
from pdl_plugin.preparation import prepare_like_sft_trainer

RECIPE = str(Path(__file__).parents[1] / "recipes" / "offline" / "dialogue_lora.yaml")


def _count(dataset, tokenizer, **overrides):
    args = cpu_args(Path("/tmp"), assistant_only_loss=True, max_length=256, **overrides)
    prepared, _ = prepare_like_sft_trainer(dataset, tokenizer, args)
    return count_trained_tokens(prepared, len(tokenizer))


def test_merged_shards_equal_the_whole(tmp_path):
    whole = freq(["--config", RECIPE, "--output", str(tmp_path / "whole.safetensors")])
    parts = [str(tmp_path / f"part{i}.safetensors") for i in range(3)]
    for index, part in enumerate(parts):
        freq(["--config", RECIPE, "--shard", f"{index}/3", "--output", part])
    shard_totals = [FrequencyTable.load(part).total for part in parts]
    assert all(total > 0 for total in shard_totals) and sum(shard_totals) == whole.total
    merged = freq(["merge", "--output", str(tmp_path / "merged.safetensors"), *parts])
    assert torch.equal(merged.counts, whole.counts)
    assert torch.equal(FrequencyTable.load(tmp_path / "merged.safetensors").counts, whole.counts)
    assert FrequencyTable.load(parts[1]).extra["shard"] == "1/3" and "shards" not in merged.extra  # all 3: the whole
    # tokens counted twice are refused: a shard with itself, the whole with one of its shards, partial merges overlapping
    out = str(tmp_path / "bad.safetensors")
    with pytest.raises(FrequencyTableError, match="given twice"):
        freq(["merge", "--output", out, parts[0], parts[0]])
    with pytest.raises(FrequencyTableError, match="whole table .* with shard tables"):
        freq(["merge", "--output", out, str(tmp_path / "whole.safetensors"), parts[0]])
    partial = freq(["merge", "--output", str(tmp_path / "p01.safetensors"), parts[0], parts[1]])
    assert partial.extra["shards"] == "0,1/3"
    with pytest.raises(FrequencyTableError, match="shard 1/3 is given twice"):
        freq(["merge", "--output", out, str(tmp_path / "p01.safetensors"), parts[1], parts[2]])
    assert torch.equal(freq(["merge", "--output", out, str(tmp_path / "p01.safetensors"), parts[2]]).counts,
                       whole.counts)


def test_streaming_dataset_counts_the_same_as_in_memory(tokenizer):
    train = load_dialogue()["train"]
    in_memory = _count(train, tokenizer)
    streamed = _count(train.to_iterable_dataset(num_shards=4), tokenizer)
    assert in_memory.sum() > 10_000 and torch.equal(streamed, in_memory)


def test_preparation_on_two_processes_counts_the_same(tokenizer):
    train = load_dialogue()["train"]
    assert torch.equal(_count(train, tokenizer, dataset_num_proc=2), _count(train, tokenizer))


def test_merging_tables_of_different_masking_or_tokenizer_is_refused():
    base = FrequencyTable(torch.tensor([1, 2]), "tok", "assistant_only", "a")
    with pytest.raises(FrequencyTableError, match="masking"):
        merge_tables([base, FrequencyTable(torch.tensor([1, 2]), "tok", "all_tokens", "b")])
    with pytest.raises(FrequencyTableError, match="another tokenizer"):
        merge_tables([base, FrequencyTable(torch.tensor([1, 2]), "other", "assistant_only", "b")])


@pytest.mark.parametrize(("shard", "message"), [("3/3", "must be in 0..2"), ("a/b", "whole numbers"),
                                              ("1", "whole numbers"), ("1/0", "must be at least 1")])
def test_bad_shard_is_refused(tmp_path, shard, message):
    from pdl_plugin import PDLConfigError

    with pytest.raises(PDLConfigError, match=f"--shard .*{message}"):
        freq(["--config", RECIPE, "--shard", shard, "--output", str(tmp_path / "t.safetensors")])


def test_table_with_output_is_refused_and_help_is_help(tmp_path, capsys):
    from pdl_plugin import PDLConfigError

    with pytest.raises(PDLConfigError, match="--table inspects an existing table and writes nothing"):
        freq(["--config", RECIPE, "--table", str(tmp_path / "t.safetensors"), "--output", str(tmp_path / "o")])
    assert freq(["--help"]) is None and "--model-prior" in capsys.readouterr().out
