"""Real summarization data with no hub: Debian package long descriptions -> synopsis.

The English descriptions come from the `Translation-en` indexes of the machine's apt
sources, fetched once into the cache (not into apt's system state). Prompt/completion
format: TRL trains only on the completion (the one-line synopsis).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from datasets import DatasetDict

from .cache import EmbeddedResourceError, atomic_dir, cache_dir, cached_splits

PROMPT_TEMPLATE = "Summarize this software package description in one line.\n\n{description}\n\nSummary:"
APT_HELPER = "/usr/lib/apt/apt-helper"
_TRANSLATION_GLOB = "*_i18n_Translation-en*"
_COMPRESSED_SUFFIXES = {".lz4", ".gz", ".xz", ".bz2", ".zst", ".lzma"}
# Bump when the records built from the same files change.
_FORMAT_VERSION = 1


def load_summarization(
    validation_fraction: float = 0.1,
    max_records: int | None = None,
    translation_files: Sequence[str | Path] | None = None,
    min_words: int = 40,
    max_words: int = 400,
) -> DatasetDict:
    """Return `train`/`validation` splits with `prompt` (long description) and `completion`.

    Without `translation_files`, the Debian `Translation-en` indexes are fetched once with
    `apt-get update` (network to the apt mirrors) and reused afterwards. Records need
    `min_words` to `max_words` words of long description (400 words keep all but a few
    records within TRL's default 1024-token `max_length`, where truncation would eat the
    synopsis); packages sharing one (-dev, -doc, ...) are kept once. `max_records` caps
    each split.
    """
    files = [Path(f) for f in translation_files] if translation_files is not None else fetch_translations()
    digests = [(f.name, hashlib.sha1(f.read_bytes()).hexdigest()) for f in files]
    return cached_splits(
        "summarization",
        {"format": _FORMAT_VERSION, "words": [min_words, max_words], "files": digests},
        lambda: _build(files, min_words, max_words),
        lambda record: record["prompt"],
        validation_fraction,
        max_records,
    )


def fetch_translations() -> list[Path]:
    """Return the `Translation-en` index files, downloading them on the first call only.

    `apt-get update` runs with its lists and caches redirected into our cache directory,
    so the system's apt state is untouched and no root rights are needed.
    """
    lists = cache_dir("apt-lists")
    if not lists.is_dir():
        apt_get = shutil.which("apt-get")
        if apt_get is None:
            raise EmbeddedResourceError(
                "The embedded summarization data set is built from Debian package descriptions, "
                "but `apt-get` is not available on this machine; run on Debian/Ubuntu, or pass "
                "translation_files=[...] with a *_i18n_Translation-en file copied from "
                "/var/lib/apt/lists of such a machine."
            )
        with atomic_dir(lists) as tmp:
            (tmp / "partial").mkdir()
            _run_apt_update(apt_get, tmp)
    return sorted(lists.glob(_TRANSLATION_GLOB))


def parse_translation(text: str) -> Iterator[tuple[str, str, str]]:
    """Yield (package, synopsis, long description) from a `Translation-en` index.

    Long descriptions follow Debian policy: wrapped lines are joined, ` .` separates
    paragraphs, and lines indented further are kept verbatim.
    """
    for block in text.split("\n\n"):
        package, description = "", []
        for line in block.splitlines():
            if line.startswith("Package:"):
                package = line.partition(":")[2].strip()
            elif line.startswith("Description-en:"):
                description = [line.partition(":")[2].strip()]
            elif line.startswith(" ") and description:
                description.append(line)
        if package and description and description[0]:
            yield package, description[0], _long_description(description[1:])


def _long_description(lines: list[str]) -> str:
    out: list[str] = []
    for raw in lines:
        text = raw[1:].rstrip()
        if text == ".":
            out.append("")
        elif text.startswith(" ") or not out or not out[-1] or out[-1].startswith(" "):
            out.append(text)
        else:
            out[-1] += " " + text
    return "\n".join(out).strip()


def _run_apt_update(apt_get: str, lists: Path) -> None:
    command = [
        apt_get, "update", "-q",
        "-o", f"Dir::State::Lists={lists}",
        "-o", "Acquire::Languages=en",
        "-o", "Acquire::IndexTargets::deb::Packages::DefaultEnabled=false",
        "-o", "Dir::Cache::pkgcache=",
        "-o", "Dir::Cache::srcpkgcache=",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not any(lists.glob(_TRANSLATION_GLOB)):
        raise EmbeddedResourceError(
            f"`apt-get update` (exit {result.returncode}) fetched no English package descriptions "
            "(Translation-en); check network access to the apt mirrors and that the apt sources "
            f"publish them, or pass translation_files=[...].\n{result.stderr.strip()[-2000:]}"
        )


def _read(path: Path) -> str:
    """Read an index file; compressed ones go through apt's own decompressor."""
    if path.suffix not in _COMPRESSED_SUFFIXES:
        return path.read_text(encoding="utf-8")
    if not Path(APT_HELPER).is_file():
        raise EmbeddedResourceError(
            f"{path} is compressed and {APT_HELPER} (from apt) is missing to decompress it; "
            "pass an uncompressed Translation-en file instead."
        )
    result = subprocess.run([APT_HELPER, "cat-file", str(path)], capture_output=True, check=False)
    if result.returncode != 0:
        raise EmbeddedResourceError(f"Could not decompress {path}: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout.decode("utf-8", errors="replace")


def _build(files: list[Path], min_words: int, max_words: int) -> list[dict[str, Any]]:
    entries = sorted(entry for path in files for entry in parse_translation(_read(path)))
    records, seen = [], set()
    for _package, synopsis, long in entries:
        key = " ".join(long.lower().split())
        if min_words <= len(long.split()) <= max_words and key not in seen:
            seen.add(key)
            records.append({"prompt": PROMPT_TEMPLATE.format(description=long), "completion": " " + synopsis})
    return records
