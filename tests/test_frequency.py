"""Counting trained targets and the table file, against counts written out by hand."""

import pyarrow as pa
import pytest
import torch
from datasets import Dataset

from pdl_plugin import FrequencyTable, FrequencyTableError, count_trained_tokens
from pdl_plugin.frequency import TABLE_FILENAME, count_label_array


def _table(counts=(5, 0, 2, 1), **overrides):
    fields = {"tokenizer_fingerprint": "tok-a", "masking": "completion_only", "data_fingerprint": "data-1"}
    return FrequencyTable(torch.tensor(counts), **{**fields, **overrides})


def test_counting_skips_ignored_labels_and_the_first_position_of_each_row():
    labels = pa.array([[3, -100, 1, 1], [-100, 2, 2, 3], [], [0]], type=pa.list_(pa.int64()))
    # row 0: first label (3) is never a target -> 1, 1 ; row 1: 2, 2, 3 ; row 3: only a first position
    assert count_label_array(labels, 5).tolist() == [0, 2, 2, 1, 0]


def test_counting_a_sliced_chunk_uses_its_own_offsets():
    labels = pa.array([[9, 9], [4, 1, 2], [4, 2]], type=pa.list_(pa.int64())).slice(1)
    assert count_label_array(labels, 10).tolist() == [0, 1, 2, 0, 0, 0, 0, 0, 0, 0]


def test_counting_a_dataset_honours_its_selection_and_batches():
    rows = [[-100, 1, 2], [-100, 3, 3], [-100, 4, -100]] * 3
    dataset = Dataset.from_dict({"labels": rows}).select([0, 1, 3, 7])  # an indices mapping, as after shuffle
    counts = count_trained_tokens(dataset, 6, batch_size=2)
    # selected rows 0, 1, 3, 7 = [1, 2], [3, 3], [1, 2], [3, 3]
    assert counts.tolist() == [0, 2, 2, 4, 0, 0]


def test_counting_packed_rows_skips_the_first_label_of_every_packed_sequence():
    # TRL's bfd packing: row 0 holds sequences of 2 and 3 tokens, row 1 one of 3; the padding-free collator masks each
    # sequence's first label, so the targets are row 0: 5 | 7, 8 and row 1: 2, 2
    labels = pa.array([[1, 5, 6, 7, 8], [4, 2, 2]], type=pa.list_(pa.int64()))
    seq_lengths = pa.array([[2, 3], [3]], type=pa.list_(pa.int64()))
    assert count_label_array(labels, 9, seq_lengths).tolist() == [0, 0, 2, 0, 0, 1, 0, 1, 1]
    assert count_label_array(labels, 9).tolist() == [0, 0, 2, 0, 0, 1, 1, 1, 1]  # unpacked: only row starts
    # through a dataset, with a selection, in batches of one row: the same counts
    dataset = Dataset.from_dict({"labels": labels.to_pylist(), "seq_lengths": seq_lengths.to_pylist()}).select([1, 0])
    assert count_trained_tokens(dataset, 9, batch_size=1).tolist() == [0, 0, 2, 0, 0, 1, 0, 1, 1]
    streamed = Dataset.from_dict({"labels": labels.to_pylist(), "seq_lengths": seq_lengths.to_pylist()})
    assert count_trained_tokens(streamed.to_iterable_dataset(), 9).tolist() == [0, 0, 2, 0, 0, 1, 0, 1, 1]


def test_packed_lengths_that_do_not_match_the_row_are_refused():
    labels = pa.array([[1, 5, 6, 7, 8]], type=pa.list_(pa.int64()))
    with pytest.raises(FrequencyTableError, match="sum to 4 but the row has 5 labels"):
        count_label_array(labels, 9, pa.array([[2, 2]], type=pa.list_(pa.int64())))


def test_label_outside_the_vocabulary_is_refused():
    with pytest.raises(FrequencyTableError, match="outside the model's 4 output rows"):
        count_label_array(pa.array([[-100, 7]], type=pa.list_(pa.int64())), 4)


def test_table_round_trip_keeps_counts_and_metadata(tmp_path):
    table = _table(extra={"source": "unit-test"})
    path = table.save(tmp_path / "t.safetensors")
    loaded = FrequencyTable.load(path)
    assert loaded.counts.dtype == torch.int64 and loaded.counts.tolist() == [5, 0, 2, 1]
    assert (loaded.total, loaded.masking, loaded.data_fingerprint) == (8, "completion_only", "data-1")
    assert loaded.tokenizer_fingerprint == "tok-a" and loaded.extra == {"source": "unit-test"}


def test_table_weights_take_the_loss_options_a_floor_included():
    # counts 5, 0, 2, 1 of 8: freq 0.625, 0 (unseen: the rarest, 0.125), 0.25, 0.125; at alpha 1 (epsilon 1e-6,
    # negligible) w = 1/freq = 1.6, 8, 4, 8; count-weighted mean (5 * 1.6 + 2 * 4 + 1 * 8) / 8 = 3, the floor at 1x
    table = _table()
    torch.testing.assert_close(table.weights(1.0, 1e-6), torch.tensor([1.6, 8.0, 4.0, 8.0]), rtol=1e-4, atol=0)
    torch.testing.assert_close(table.weights(1.0, 1e-6, min_weight=1.0), torch.tensor([3.0, 8.0, 4.0, 8.0]),
                               rtol=1e-4, atol=0)


def test_saving_into_a_directory_uses_the_standard_name(tmp_path):
    assert _table().save(tmp_path) == tmp_path / TABLE_FILENAME


def test_missing_table_names_the_fix(tmp_path):
    with pytest.raises(FrequencyTableError, match="No frequency table at .*pdl-freq"):
        FrequencyTable.load(tmp_path / "absent.safetensors")


@pytest.mark.parametrize("content", [b"", b"not a safetensors file at all", b"\xff" * 64])
def test_corrupt_table_is_refused(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(FrequencyTableError, match="not a readable safetensors frequency table"):
        FrequencyTable.load(path)


def test_truncated_table_is_refused(tmp_path):
    path = _table().save(tmp_path / "t.safetensors")
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(FrequencyTableError):
        FrequencyTable.load(path)


def test_safetensors_file_that_is_not_a_table_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(3)}, tmp_path / "w.safetensors")
    with pytest.raises(FrequencyTableError, match="not a pdl-plugin frequency table"):
        FrequencyTable.load(tmp_path / "w.safetensors")


def test_other_tokenizer_or_vocabulary_size_is_refused():
    table = _table()
    table.check_compatible("tok-a", 4)
    with pytest.raises(FrequencyTableError, match="another tokenizer"):
        table.check_compatible("tok-b", 4)
    with pytest.raises(FrequencyTableError, match="4 entries but the model's output embedding has 6 rows"):
        table.check_compatible("tok-a", 6)


def test_a_crash_while_saving_leaves_the_old_table_and_no_partial_file(tmp_path, monkeypatch):
    path = _table().save(tmp_path / "t.safetensors")
    before = path.read_bytes()

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr("pdl_plugin.frequency.save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        _table(counts=(1, 1, 1, 1)).save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.safetensors"]


def test_counting_a_shuffled_dataset_reads_the_stored_column_and_counts_the_same():
    rows = [[-100, i % 7, (i * 3) % 7] for i in range(50)]
    dataset = Dataset.from_dict({"labels": rows})
    shuffled = dataset.shuffle(seed=1)
    assert shuffled._indices is not None
    assert count_trained_tokens(shuffled, 7).tolist() == count_trained_tokens(dataset, 7).tolist()
    subset = shuffled.select(range(10))  # a mapping that is not a permutation: rows are gathered
    expected = [0] * 7
    for row in subset["labels"]:
        for label in row[1:]:
            expected[label] += 1
    assert count_trained_tokens(subset, 7, batch_size=3).tolist() == expected


def test_a_model_prior_recorded_with_a_threaded_float_sum_loads_and_a_wrong_total_is_refused(tmp_path):
    """A float64 prior's total is summed exactly rounded (math.fsum), so it does not depend on how many threads
    summed it; a file whose recorded total came from another summation order (a threaded torch.sum: its last digits
    differ) still loads, while a total that is really different is refused as corrupt."""
    import math

    from safetensors.torch import load_file, safe_open, save_file

    counts = torch.rand(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    path = FrequencyTable(counts, "tok", "completion_only", "data", kind="model_prior").save(tmp_path / "prior")
    file = path if path.is_file() else path / TABLE_FILENAME
    with safe_open(str(file), "pt") as handle:
        metadata = handle.metadata()
    assert float(metadata["total_tokens"]) == math.fsum(counts.tolist())
    reordered = sum(reversed(counts.tolist()))  # another order: differs from fsum in the last digits
    assert reordered != math.fsum(counts.tolist())
    tensors = load_file(str(file))
    save_file(tensors, str(file), metadata={**metadata, "total_tokens": repr(reordered)})
    assert FrequencyTable.load(file).total == pytest.approx(reordered, rel=1e-12)
    save_file(tensors, str(file), metadata={**metadata, "total_tokens": repr(reordered + 1.0)})
    with pytest.raises(FrequencyTableError, match="the file is corrupt"):
        FrequencyTable.load(file)
