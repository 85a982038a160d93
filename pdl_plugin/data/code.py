"""Real code data with no hub: functions of the running interpreter's standard library.

Prompt = decorators, signature and docstring; completion = the body. Prompt + completion
is the function's source moved to column 0, so it always parses. The prompt ends right
after the docstring and the completion starts with the newline, which keeps the token
boundary clean (the newline would otherwise merge with the body's indentation).
"""

from __future__ import annotations

import ast
import hashlib
import os
import sys
import sysconfig
import tokenize
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from datasets import DatasetDict
from tqdm.auto import tqdm

from .cache import EmbeddedResourceError, cached_splits

MIN_DOC_WORDS = 5
BODY_LINES = (3, 30)
_SKIPPED_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests"}
# Bump when the records built from the same files change.
_FORMAT_VERSION = 1

_Function = ast.FunctionDef | ast.AsyncFunctionDef


def load_code(
    validation_fraction: float = 0.1,
    max_records: int | None = None,
    source_dir: str | Path | None = None,
) -> DatasetDict:
    """Return `train`/`validation` splits with `prompt` (signature + docstring) and `completion` (body).

    Mines functions and methods outside test code, with a docstring of 5+ words and a body
    of 3 to 30 non-blank lines, from `source_dir` (default: this Python's standard library).
    Equal bodies are kept once. `max_records` caps each split.
    """
    root = Path(source_dir or sysconfig.get_paths()["stdlib"]).resolve()
    files = _source_files(root)
    if not files:
        raise EmbeddedResourceError(
            f"No Python files were found under {root}; pass source_dir=... pointing at Python sources."
        )
    listing = "\n".join(f"{f.relative_to(root)} {f.stat().st_size} {f.stat().st_mtime_ns}" for f in files)
    return cached_splits(
        "code",
        {
            "format": _FORMAT_VERSION,
            "root": str(root),
            "python": sys.version,
            "files_sha1": hashlib.sha1(listing.encode("utf-8")).hexdigest(),
        },
        lambda: _build(files),
        lambda record: record["prompt"],
        validation_fraction,
        max_records,
    )


def function_records(source: str) -> Iterator[dict[str, str]]:
    """Yield a prompt/completion record for every qualifying function in `source`."""
    lines = source.split("\n")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, _Function):
            record = _record(node, lines)
            if record is not None:
                yield record


def _record(node: _Function, lines: list[str]) -> dict[str, str] | None:
    doc = ast.get_docstring(node)
    if doc is None or len(doc.split()) < MIN_DOC_WORDS or len(node.body) < 2:
        return None
    doc_end = node.body[0].end_lineno
    if node.body[1].lineno <= doc_end:
        return None  # body shares the docstring's line
    start = node.decorator_list[0].lineno if node.decorator_list else node.lineno
    indent = lines[start - 1][: node.col_offset]
    chunk = lines[start - 1 : node.end_lineno]
    if indent.strip() or any(line.strip() and not line.startswith(indent) for line in chunk):
        return None  # a string literal reaches left of the def: it cannot be moved to column 0
    chunk = [line[len(indent) :] for line in chunk]
    head, body = chunk[: doc_end - start + 1], chunk[doc_end - start + 1 :]
    if not BODY_LINES[0] <= sum(1 for line in body if line.strip()) <= BODY_LINES[1]:
        return None
    return {"prompt": "\n".join(head), "completion": "\n" + "\n".join(body) + "\n"}


def _is_test_dir(name: str) -> bool:
    return name in _SKIPPED_DIRS or name.endswith("_test")


def _is_test_file(stem: str) -> bool:
    return stem.startswith("test_") or stem.endswith("_test") or stem in {"test", "tests", "conftest"}


def _source_files(root: Path) -> list[Path]:
    """Python files under `root`, not descending into tests or installed packages."""
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not _is_test_dir(d)]
        files += [Path(folder, n) for n in names if n.endswith(".py") and not _is_test_file(n[:-3])]
    return sorted(files)


def _build(files: list[Path]) -> list[dict[str, Any]]:
    records, seen = [], set()
    for path in tqdm(files, desc="Mining functions", unit="file"):
        try:
            with tokenize.open(path) as handle:
                found = list(function_records(handle.read()))
        except (SyntaxError, ValueError):
            continue  # not valid Python 3 for this interpreter (e.g. lib2to3 fixtures)
        for record in found:
            if record["completion"] not in seen:
                seen.add(record["completion"])
                records.append(record)
    return records
