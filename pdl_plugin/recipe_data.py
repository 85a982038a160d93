"""A recipe's data: its train and evaluation splits from the hub, local files, a `datasets:` mixture or a data set
this package ships, with loading errors explained in one line that names the source."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .data.embedded_model import EMBEDDED_PREFIX
from .data.registry import resolve_embedded_dataset
from .errors import PDLConfigError, PDLDataError, PDLError

if TYPE_CHECKING:
    from .recipe import Recipe


def load_recipe_datasets(recipe: Recipe):
    """The train and (optional) eval splits, from the hub, local files, or a dataset this package ships."""
    script = recipe.script
    dataset = load_dataset_dict(recipe)
    if script.dataset_train_split not in dataset:
        raise PDLConfigError(
            f"The dataset has no split `{script.dataset_train_split}` (it has {list(dataset)}). "
            "Set `dataset_train_split` to one of them."
        )
    train = dataset[script.dataset_train_split]
    evaluate = recipe.training.eval_strategy != "no"
    eval_split = script.dataset_test_split
    if evaluate and eval_split not in dataset:
        raise PDLConfigError(
            f"eval_strategy is {recipe.training.eval_strategy!r} but the dataset has no split `{eval_split}` "
            f"(it has {list(dataset)}). Set `dataset_test_split`, or `eval_strategy: 'no'`."
        )
    return train, dataset[eval_split] if evaluate else None


def load_dataset_dict(recipe: Recipe):
    """Every split of the recipe's data set (a `DatasetDict`), from the hub, local files, or a data set this package
    ships."""
    from datasets import load_dataset
    from trl import get_dataset

    script = recipe.script
    if recipe.datasets.datasets:
        check_local_data_files(recipe.datasets.datasets)
        with _explain_dataset_errors("the `datasets:` mixture of the recipe"):
            dataset = get_dataset(recipe.datasets)
    elif script.dataset_name and script.dataset_name.startswith(EMBEDDED_PREFIX):
        dataset = resolve_embedded_dataset(script.dataset_name)
    elif script.dataset_name:
        with _explain_dataset_errors(f"`dataset_name: {script.dataset_name}`"):
            dataset = load_dataset(script.dataset_name, name=script.dataset_config, streaming=script.dataset_streaming)
    else:
        raise PDLConfigError("The recipe names no dataset: set `dataset_name` (hub id, local path or "
                             f"`{EMBEDDED_PREFIX}dialogue`) or a `datasets:` mixture.")
    return dataset


_LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow", "pandas", "webdataset", "xml", "sql"}


def first_rows(dataset, count: int):
    """The first `count` rows of a dataset (all of them if it has fewer); a streamed dataset is cut lazily."""
    if not hasattr(dataset, "select"):  # datasets.IterableDataset (dataset_streaming: true)
        return dataset.take(count)
    return dataset.select(range(min(count, len(dataset))))


def check_local_data_files(entries) -> None:
    """Refuse, before loading, a `datasets:` entry whose local `data_files` (or local folder `path`) do not exist."""
    for entry in entries:
        files = entry.data_files
        if isinstance(files, dict):
            names = [name for value in files.values() for name in ([value] if isinstance(value, str) else value)]
        elif isinstance(files, str):
            names = [files]
        else:
            names = list(files or [])
        for name in names:
            if not isinstance(name, str) or "://" in name or any(char in name for char in "*?["):
                continue  # a URL or a glob: datasets resolves those
            if entry.path in _LOCAL_BUILDERS and not Path(name).expanduser().exists():
                base = Path(entry.data_dir) / name if entry.data_dir else None
                if base is None or not base.exists():
                    raise PDLDataError(
                        f"Data file {name} (under `datasets:`, path `{entry.path}`) not found. Fix the path in "
                        "`data_files`; relative paths count from the folder you run the command in."
                    )
        path = str(entry.path)
        if path.startswith((".", "/", "~")) and not Path(path).expanduser().exists():
            raise PDLDataError(f"Dataset folder {path} (under `datasets:`) not found. Fix `path` in the recipe.")


class _explain_dataset_errors:
    """Loading errors of `datasets` (missing files, hub unreachable or offline) as one message naming the source."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if err is None or isinstance(err, PDLError):
            return False
        from datasets.exceptions import DatasetNotFoundError

        if isinstance(err, FileNotFoundError):
            raise PDLDataError(
                f"Cannot load {self.source}: {err}. Fix the path (a local folder or file must exist), or name a "
                "dataset on the hub."
            ) from None
        if isinstance(err, (ConnectionError, DatasetNotFoundError)):
            raise PDLDataError(
                f"Cannot load {self.source}: {err}. A hub dataset needs network access (and no HF_HUB_OFFLINE / "
                "HF_DATASETS_OFFLINE), or download it first; a local dataset needs an existing path."
            ) from None
        columns = _column_mismatch(err)
        if columns is not None:
            raise PDLDataError(f"Cannot load {self.source}: {columns}") from None
        if isinstance(err, (OSError, UnicodeDecodeError)) or type(err).__module__.startswith(("datasets", "pyarrow")):
            raise PDLDataError(f"Cannot load {self.source}: {type(err).__name__}: {err}") from None
        return False


def _column_mismatch(err: BaseException) -> str | None:
    """The cause `datasets` hides behind "An error occurred while generating the dataset" when one data file (a
    validation split, say) has other columns than the first one read: a `CastError` naming both column sets."""
    seen = 0
    while err is not None and seen < 8:
        seen += 1
        found, wanted = getattr(err, "table_column_names", None), getattr(err, "requested_column_names", None)
        if found is not None and wanted is not None:
            return (f"its data files do not have the same columns: one has {sorted(found)}, but the first file read "
                    f"(the columns every split must have) has {sorted(wanted)}. Give every split (train and "
                    "validation) the same columns, e.g. all `messages`, or all `prompt` and `completion`.")
        err = err.__cause__ or err.__context__
    return None
