"""Where built resources live, and how they get there without half-written leftovers."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, load_from_disk

from ..errors import PDLError


class EmbeddedResourceError(PDLError):
    """A built-in model or data set cannot be found or built; the message names the fix."""


def cache_dir(*parts: str) -> Path:
    """Return the cache path for `parts` (not created).

    The root is `$PDL_PLUGIN_CACHE`, else `$XDG_CACHE_HOME/pdl_plugin`, else
    `~/.cache/pdl_plugin`, read at call time so tests and users can redirect it.
    """
    root = os.environ.get("PDL_PLUGIN_CACHE")
    if root:
        base, where = Path(root), "PDL_PLUGIN_CACHE"
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "pdl_plugin"
        where = "The cache folder (XDG_CACHE_HOME/pdl_plugin)" if xdg else "The cache folder"
    base = base.expanduser()
    _check_cache_root(base, where)
    return base.joinpath(*parts)


def _check_cache_root(base: Path, where: str) -> None:
    """Refuse a cache root that is, or lies under, a file: no cached model or data set could be made there."""
    probe = base
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        what = "is a file" if probe == base else f"lies under {probe}, which is a file"
        raise EmbeddedResourceError(
            f"{where} {base} {what}, not a folder, so the built-in models and data sets cannot be cached there. "
            "Point PDL_PLUGIN_CACHE at a folder (it is created), or unset it to use ~/.cache/pdl_plugin."
        )


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory that becomes `target` only if the block succeeds.

    The temporary directory sits next to `target` so the final `os.replace` is a rename on
    one file system: readers see either no `target` or a complete one. If another process
    finished `target` first, its copy wins and ours is discarded.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        try:
            os.replace(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def split_position(text: str) -> float:
    """Stable position in [0, 1) of a text, ignoring case and spacing.

    Records are routed by this value, so equal prompts always land on the same side of
    the train/validation split, on any machine and Python version.
    """
    normalised = " ".join(text.lower().split())
    return int(hashlib.sha1(normalised.encode("utf-8")).hexdigest()[:12], 16) / 16**12


def cached_splits(
    name: str,
    fingerprint: dict[str, Any],
    build: Callable[[], list[dict[str, Any]]],
    split_key: Callable[[dict[str, Any]], str],
    validation_fraction: float,
    max_records: int | None,
) -> DatasetDict:
    """Return the train/validation splits of `build()`, built once and then read from disk.

    `fingerprint` names everything the records depend on (source, format version, ...);
    it keys the cache directory together with `validation_fraction`. Rows are ordered by
    split position, so `max_records` (a cap on each split) keeps a spread-out sample.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be between 0 and 1 (exclusive), got {validation_fraction!r}.")
    if max_records is not None and max_records < 1:
        raise ValueError(f"max_records must be a positive integer or None, got {max_records!r}.")
    key_source = json.dumps({**fingerprint, "validation_fraction": validation_fraction}, sort_keys=True)
    target = cache_dir("data", name, hashlib.sha1(key_source.encode("utf-8")).hexdigest()[:16])
    if not target.is_dir():
        splits = _split(build(), split_key, validation_fraction)
        with atomic_dir(target) as tmp:
            splits.save_to_disk(str(tmp))
            (tmp / "fingerprint.json").write_text(key_source + "\n", encoding="utf-8")
    splits = _load_cached(target)
    if max_records is not None:
        splits = DatasetDict({part: rows.select(range(min(max_records, len(rows)))) for part, rows in splits.items()})
    return splits


def _load_cached(target: Path) -> DatasetDict:
    """The cached splits at `target`, or one clear error when the cache is damaged (a copy cut short, a file
    truncated by a full disk): what to delete so that the next run builds it again."""
    try:
        return load_from_disk(str(target))
    except Exception as err:  # noqa: BLE001 - pyarrow, json and datasets each fail in their own words
        reason = " ".join(str(err).split())[:200]
        raise EmbeddedResourceError(
            f"The cached data set at {target} is damaged ({type(err).__name__}: {reason}). Delete that folder "
            f"(`rm -r {target}`) and run again: it is built again from its source."
        ) from None


def _split(
    records: list[dict[str, Any]], split_key: Callable[[dict[str, Any]], str], validation_fraction: float
) -> DatasetDict:
    positioned = sorted(
        ((split_position(split_key(r)), json.dumps(r, sort_keys=True), r) for r in records),
        key=lambda item: item[:2],
    )
    train = [r for pos, _, r in positioned if pos >= validation_fraction]
    validation = [r for pos, _, r in positioned if pos < validation_fraction]
    if not train or not validation:
        raise EmbeddedResourceError(
            f"Only {len(records)} records were found, too few to fill both splits at "
            f"validation_fraction={validation_fraction}; check that the data source is complete."
        )
    return DatasetDict({"train": Dataset.from_list(train), "validation": Dataset.from_list(validation)})
