"""``data.hf=...``: a Hugging Face ``datasets`` dataset as the data source.

``data.hf`` names a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, a local folder that
``datasets.load_dataset`` reads (``imagefolder``, parquet, ...), or a dataset on the Hub (read through ``datasets``'
own cache). ``data.hf_columns`` names its image, label and id columns (defaults ``image``, ``label``, ``id``).

The dataset is written out once, each row's encoded image bytes as they are (nothing re-encoded), into a folder under
``<data.cache_dir>/hf/`` keyed by the dataset's fingerprint and the columns: one subfolder per split holding
``<id>.<ext>`` files (the id column's values when the split has one, else the row numbers) and ``rows.json`` (the
files, ids and labels, and the ClassLabel names). Each split is written into a temporary folder and renamed into
place, so that an interrupted extraction is never taken for a finished one; a later run over the same dataset reads
the folder back. From there on the images are files like any others: the folder-based machinery (bad-image handling,
the decoded cache, k-fold, pseudo-labels, prediction) reads them.

Splits: ``train`` (required); ``validation`` (or ``valid`` / ``val``), which is then the validation set of a single
run, else catdog's stratified split; ``test``, which ``predict.py`` predicts by default. A k-fold run
(``data.folds=K``) makes its folds over train and validation together. Classes: the label column's ClassLabel names in
their order, else the sorted label values (integers as numbers), as for a CSV.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from catdog.data.cache import DEFAULT_CACHE_DIR
from catdog.data.csv_data import CsvDataset, sorted_classes
from catdog.data.layouts import LabelledImages
from catdog.errors import ConfigError, DatasetError, check_known_keys

log = logging.getLogger(__name__)

#: data.hf_columns's keys and their defaults.
HF_COLUMNS = {"image": "image", "label": "label", "id": "id"}
TRAIN_SPLIT = "train"
VALIDATION_SPLITS = ("validation", "valid", "val")
TEST_SPLIT = "test"
#: predict.py input=hf:SOURCE[:SPLIT]
INPUT_PREFIX = "hf:"
INSTALL = 'pip install -e ".[hf]"'
#: The version of the written folder's layout (part of its key: a new layout is written anew).
FORMAT = 1
ROWS_NAME = "rows.json"
#: Ids that can name a file: they become the file names (and so the ids pseudo-labels and submissions use).
_SAFE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=@-]*$")
_TRUE = ("1", "ON", "YES", "TRUE")
#: How many offending rows an error lists.
SHOWN = 3
#: Image formats recognized from their first bytes (else the original file's extension, else .img).
_MAGIC = (
    (b"\xff\xd8\xff", ".jpg"),
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"GIF87a", ".gif"),
    (b"GIF89a", ".gif"),
    (b"BM", ".bmp"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
)


def complete_columns(columns: dict | None) -> dict:
    """``data.hf_columns`` with the defaults of the keys left out or null."""
    return {**HF_COLUMNS, **{k: v for k, v in (columns or {}).items() if v}}


def _check_columns(columns) -> None:
    check_known_keys(columns, list(HF_COLUMNS), "data.hf_columns")
    for key, name in (columns or {}).items():
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ConfigError(f"data.hf_columns.{key} must be a column name, got {name!r}")


def check_hf_config(source, columns, csv=None) -> None:
    """``data.hf`` (null or a non-empty string; not with ``data.csv``; ``datasets`` installed) and
    ``data.hf_columns`` (known keys, column names)."""
    _check_columns(columns)
    if source is None:
        return
    if not isinstance(source, str) or not source.strip():
        raise ConfigError(
            f"data.hf must be a dataset folder (save_to_disk, imagefolder, parquet) or a Hub name, or null; got "
            f"{source!r}"
        )
    if csv is not None:
        raise ConfigError(f"data.hf={source} and data.csv={csv} are two data sources: set one of them")
    import_datasets("data.hf")


def import_datasets(key: str):
    """The ``datasets`` package; a :class:`ConfigError` naming ``key`` and the install command without it."""
    try:
        import datasets
    except ImportError as exc:
        raise ConfigError(f"{key} reads Hugging Face datasets, which needs the datasets package: {INSTALL}") from exc
    return datasets


# ----- loading -----------------------------------------------------------------------------------------------------
def _env_offline() -> bool:
    return any(os.environ.get(k, "").upper() in _TRUE for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


@contextlib.contextmanager
def _offline_as_set(datasets) -> Iterator[bool]:
    """Whether the Hub is to be left alone (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``), honoured as the
    environment says now, also where ``datasets`` was imported before it was set (it reads them at import)."""
    if not _env_offline() or datasets.config.HF_HUB_OFFLINE:
        yield bool(datasets.config.HF_HUB_OFFLINE)
        return
    import huggingface_hub.constants as hub_constants

    saved = datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield True
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


def _is_saved(folder: Path) -> bool:
    """Whether ``folder`` was written by ``save_to_disk`` (a DatasetDict's or a Dataset's)."""
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def _as_splits(loaded, source: str) -> dict:
    if hasattr(loaded, "keys"):  # a DatasetDict
        return dict(loaded.items())
    if hasattr(loaded, "_fingerprint"):  # one Dataset: its rows are the training split
        return {TRAIN_SPLIT: loaded}
    raise DatasetError(f"data.hf={source}: expected a dataset or a dict of splits, got {type(loaded).__name__}")


def load_hf_splits(source: str, key: str = "data.hf") -> dict:
    """Split name -> ``datasets.Dataset`` of ``source``: a ``save_to_disk`` folder, a folder ``load_dataset``
    reads, or a Hub name (``datasets``' cache; offline, a message saying how to get it)."""
    datasets = import_datasets(key)
    folder = Path(source).expanduser()
    if folder.is_file():
        raise DatasetError(
            f"{key}={source} is a file; give a folder written by save_to_disk, a folder datasets.load_dataset reads "
            "(imagefolder, parquet) or a Hub name"
        )
    if folder.is_dir():
        try:
            loaded = datasets.load_from_disk(str(folder)) if _is_saved(folder) else datasets.load_dataset(str(folder))
        except Exception as exc:  # noqa: BLE001 - whatever datasets raises, said with the key at fault
            raise DatasetError(f"{key}={source}: datasets cannot read this folder: {exc}") from exc
        return _as_splits(loaded, source)
    with _offline_as_set(datasets) as offline:
        try:
            loaded = datasets.load_dataset(source)
        except Exception as exc:  # noqa: BLE001 - see above
            raise DatasetError(_hub_message(source, key, exc, offline)) from exc
    return _as_splits(loaded, source)


def _hub_message(source: str, key: str, exc: Exception, offline: bool) -> str:
    how = (
        f"download it once with a network (python -c \"import datasets; datasets.load_dataset('{source}')\" fills "
        "datasets' cache, which offline runs then read), or save it with save_to_disk on a machine that has it and "
        f"point {key} at that folder"
    )
    if offline or isinstance(exc, ConnectionError):
        state = "offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set)" if offline else "the Hub cannot be reached"
        return f"{key}={source}: no such folder, and {state} with no copy in datasets' cache ({exc}); {how}"
    return (
        f"{key}={source}: no such folder, and datasets cannot load it as a Hub dataset ({type(exc).__name__}: "
        f"{exc}); check the name, or {how}"
    )


@dataclass(frozen=True)
class SplitRoles:
    """Which of the dataset's splits catdog trains on, validates on and predicts by default."""

    train: str
    validation: str | None
    test: str | None


def split_roles(splits: dict, source: str, key: str = "data.hf") -> SplitRoles:
    """``train`` (required; the error names the splits there are), the validation split (``validation``, ``valid``
    or ``val``; an empty one counts as none) and ``test``."""
    if TRAIN_SPLIT not in splits:
        raise DatasetError(
            f"{key}={source} has no '{TRAIN_SPLIT}' split (splits: {sorted(splits)}); catdog trains on 'train' and "
            f"validates on {' / '.join(VALIDATION_SPLITS)} when there is one"
        )
    if len(splits[TRAIN_SPLIT]) == 0:
        raise DatasetError(f"{key}={source}: its '{TRAIN_SPLIT}' split holds no rows")
    validation = next((s for s in VALIDATION_SPLITS if s in splits and len(splits[s]) > 0), None)
    return SplitRoles(TRAIN_SPLIT, validation, TEST_SPLIT if TEST_SPLIT in splits else None)


# ----- writing the image files -------------------------------------------------------------------------------------
def _extension(data: bytes, path: str | None) -> str:
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    suffix = Path(path).suffix.lower() if path else ""
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else ".img"


def _check_column(ds, column: str, which: str, source: str, split: str) -> None:
    if column not in ds.column_names:
        raise ConfigError(
            f"data.hf_columns.{which}: no column {column!r} in split {split!r} of {source} (columns: "
            f"{ds.column_names}); name it with data.hf_columns.{which}="
        )


def _image_reader(ds, column: str, source: str, split: str):
    """(the split with its image column left encoded, a function from a row's value to its bytes and original path)."""
    datasets = import_datasets("data.hf")
    feature = ds.features[column]
    if isinstance(feature, datasets.Image):
        ds = ds.cast_column(column, datasets.Image(decode=False))

        def read(value):
            value = value or {}
            data, path = value.get("bytes"), value.get("path")
            if not data and path and os.path.isfile(path):
                with open(path, "rb") as f:
                    data = f.read()
            return data or b"", path

        return ds, read
    dtype = getattr(feature, "dtype", None)
    if dtype in ("binary", "large_binary"):
        return ds, lambda value: (value or b"", None)
    raise ConfigError(
        f"data.hf_columns.image: column {column!r} of split {split!r} of {source} holds {feature!r}, not images (an "
        "Image feature or encoded bytes)"
    )


def _label_reader(ds, column: str, source: str, split: str):
    """(the ClassLabel names or None, a function from a row's value to its label as a string, None where missing)."""
    datasets = import_datasets("data.hf")
    feature = ds.features[column]
    if isinstance(feature, datasets.ClassLabel):
        names = list(feature.names)

        def name(value):
            return names[value] if isinstance(value, int) and 0 <= value < len(names) else None

        return names, name
    if isinstance(feature, datasets.Value):
        return None, lambda value: None if value is None or str(value).strip() == "" else str(value).strip()
    raise ConfigError(
        f"data.hf_columns.label: column {column!r} of split {split!r} of {source} holds {feature!r}; labels must be "
        "a ClassLabel, integers or strings"
    )


def _ids(ds, column: str, source: str, split: str) -> list[str]:
    """The split's ids: its id column's values when it has one and they are unique and can name files, else the row
    numbers (with a warning naming the column)."""
    rows = [str(i) for i in range(len(ds))]
    if column not in ds.column_names:
        return rows
    ids = ["" if v is None else str(v) for v in ds[column]]
    bad = [(i, v) for i, v in enumerate(ids) if not _SAFE_ID.match(v)]
    repeated = len(ids) - len(set(ids))
    if bad or repeated:
        why = (
            f"{len(bad)} cannot name a file (e.g. row {bad[0][0]}: {bad[0][1]!r}; ids are letters, digits and "
            ". _ - + = @)"
            if bad
            else f"{repeated} are repeated"
        )
        log.warning(
            "data.hf_columns.id: column %r of split %r of %s: %s; its rows are numbered instead (ids 0..%d)",
            column, split, source, why, len(ids) - 1,
        )  # fmt: skip
        return rows
    return ids


def _write_split(ds, split: str, columns: dict, source: str, target: Path) -> None:
    """Write split ``split`` of ``ds`` into ``target`` (through a temporary folder renamed into place)."""
    image_col, label_col = columns["image"], columns["label"]
    ds, read_image = _image_reader(ds, image_col, source, split)
    has_label = label_col in ds.column_names
    names, read_label = _label_reader(ds, label_col, source, split) if has_label else (None, lambda v: None)
    ids = _ids(ds, columns["id"], source, split)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        files, labels, row = [], [], 0
        wanted = [image_col] + ([label_col] if has_label else [])
        for batch in ds.select_columns(wanted).iter(batch_size=256):
            for k, value in enumerate(batch[image_col]):
                data, original = read_image(value)
                name = ids[row] + _extension(data, original)
                with open(tmp / name, "wb") as f:
                    f.write(data)
                files.append(name)
                labels.append(read_label(batch[label_col][k]) if has_label else None)
                row += 1
        record = {"split": split, "files": files, "ids": ids, "labels": labels, "classes": names}
        with open(tmp / ROWS_NAME, "w", encoding="utf-8") as f:
            json.dump(record, f)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / ROWS_NAME).is_file():  # not another process's finished copy
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _slug(source: str) -> str:
    name = Path(source.rstrip("/\\")).name or "dataset"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "dataset"


def dataset_key(splits: dict, columns: dict) -> str:
    """What the written folder depends on: each split's fingerprint and the columns (and :data:`FORMAT`)."""
    state = {
        "format": FORMAT,
        "splits": {name: ds._fingerprint for name, ds in sorted(splits.items())},
        "columns": [columns["image"], columns["label"], columns["id"]],
    }
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class HfSplit:
    """One written split: its image files (absolute paths), ids, labels (class names; None where missing) and the
    label column's ClassLabel names (None: plain values)."""

    name: str
    paths: list[str]
    ids: list[str]
    labels: list[str | None]
    classes: list[str] | None


def _read_split(folder: Path) -> HfSplit:
    with open(folder / ROWS_NAME, encoding="utf-8") as f:
        record = json.load(f)
    paths = [str(folder / name) for name in record["files"]]
    return HfSplit(record["split"], paths, record["ids"], record["labels"], record["classes"])


class HfDataset:
    """``data.hf=source`` opened: its splits loaded with ``datasets`` and written out (once) under
    ``<cache_dir>/hf/``; :meth:`split` gives a split's files, ids and labels."""

    def __init__(self, source: str, columns: dict | None, cache_dir: str | os.PathLike | None, key: str = "data.hf"):
        self.source, self.key = str(source), key
        self.columns = complete_columns(columns)
        self._datasets = load_hf_splits(self.source, key)
        name = f"{_slug(self.source)}-{dataset_key(self._datasets, self.columns)}"
        self.root = Path(cache_dir or DEFAULT_CACHE_DIR).expanduser() / "hf" / name
        self._written: dict[str, HfSplit] = {}  # the splits read back so far

    @property
    def split_names(self) -> list[str]:
        return sorted(self._datasets)

    @property
    def roles(self) -> SplitRoles:
        """The splits catdog trains, validates and predicts on (an error without a train split)."""
        return split_roles(self._datasets, self.source, self.key)

    def split(self, name: str) -> HfSplit:
        """Split ``name``'s rows, written out first unless an earlier run did."""
        if name in self._written:
            return self._written[name]
        if name not in self._datasets:
            raise DatasetError(f"{self.key}={self.source} has no split {name!r} (splits: {self.split_names})")
        folder = self.root / name
        if not (folder / ROWS_NAME).is_file():
            if folder.exists():  # not written by catdog: not trusted
                shutil.rmtree(folder)
            self.check_column(name, "image")
            log.info(
                "data.hf: writing split %r of %s (%d rows) to %s", name, self.source, len(self._datasets[name]), folder
            )
            _write_split(self._datasets[name], name, self.columns, self.source, folder)
        self._written[name] = _read_split(folder)
        return self._written[name]

    def check_column(self, split: str, which: str) -> None:
        """Split ``split`` has the column ``data.hf_columns.<which>`` names (an error naming the key and the
        columns there are)."""
        _check_column(self._datasets[split], self.columns[which], which, self.source, split)

    def write_all(self) -> None:
        """Write out the train, validation and test splits (those it has)."""
        for name in (self.roles.train, self.roles.validation, self.roles.test):
            if name is not None:
                self.split(name)


def data_root(data) -> str | Path | None:
    """Where a run's images lie (paths in its split and out-of-fold files are relative to it), from its data settings
    (``cfg.data`` or a checkpoint's datamodule hyperparameters): ``data.dir``, or with ``data.hf`` the folder its
    images were written to."""
    if not data.get("hf"):
        return data.get("dir")
    columns = data.get("hf_columns")
    hf = HfDataset(data["hf"], dict(columns) if columns is not None else None, data.get("cache_dir"))
    hf.write_all()  # again where the folder was deleted since
    return hf.root


def _missing_labels(split: HfSplit, column: str, source: str) -> DatasetError:
    rows = [i for i, v in enumerate(split.labels) if v is None]
    shown = ", ".join(f"row {i}" for i in rows[:SHOWN])
    more = f" and {len(rows) - SHOWN} more" if len(rows) > SHOWN else ""
    return DatasetError(
        f"data.hf_columns.label: split {split.name!r} of {source}: {len(rows)} row(s) have no label in column "
        f"{column!r} ({shown}{more})"
    )


def training_table(hf: HfDataset) -> CsvDataset:
    """The labelled images of ``hf``'s train and validation splits (written out, with its test split), as a CSV's
    rows: a split column (``train`` / ``val``) when the dataset has a validation split, no folds."""
    label_col = hf.columns["label"]
    hf.check_column(hf.roles.train, "label")
    hf.write_all()
    train = hf.split(hf.roles.train)
    parts = [train] + ([hf.split(hf.roles.validation)] if hf.roles.validation else [])
    for part in parts:
        if any(v is None for v in part.labels):
            raise _missing_labels(part, label_col, hf.source)
    labels = [v for part in parts for v in part.labels]
    classes = train.classes or sorted_classes(labels)
    if len(classes) < 2:
        raise DatasetError(
            f"data.hf_columns.label: {hf.source} has only one class ({classes[0]!r}) in column {label_col!r}; a "
            "classifier needs two"
        )
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({v for v in labels if v not in index})
    if unknown:
        raise DatasetError(
            f"data.hf_columns.label: {hf.source}'s validation split has label(s) {unknown[:SHOWN]} that are not among "
            f"the training classes {classes}"
        )
    paths = [p for part in parts for p in part.paths]
    images = LabelledImages(paths, [index[v] for v in labels], list(classes), "hf")
    splits = None
    if hf.roles.validation:
        splits = ["train"] * len(train.paths) + ["val"] * (len(paths) - len(train.paths))
    return CsvDataset(images, None, splits)


# ----- prediction --------------------------------------------------------------------------------------------------
def is_hf_input(value) -> bool:
    """Whether ``predict.py input=`` names a Hugging Face dataset (``hf:SOURCE[:SPLIT]``)."""
    return isinstance(value, str) and value.startswith(INPUT_PREFIX)


def check_hf_input(value, columns) -> None:
    """``predict.py``'s ``data.hf_columns`` (known keys, column names or null) and, for ``input=hf:...``, a dataset
    named and ``datasets`` installed."""
    _check_columns(columns)
    if is_hf_input(value):
        parse_hf_input(value)
        import_datasets("input=hf:...")


def parse_hf_input(value: str) -> tuple[str, str | None]:
    """``hf:SOURCE[:SPLIT]`` -> (SOURCE, SPLIT or None). A SOURCE that is an existing path is taken whole (a colon in
    a folder name is not a split)."""
    spec = value[len(INPUT_PREFIX) :]
    if not spec.strip():
        raise ConfigError(f"input={value}: name a dataset after hf: (a folder or a Hub name), e.g. input=hf:data/set")
    head, sep, tail = spec.rpartition(":")
    if sep and head and re.fullmatch(r"[A-Za-z0-9_.-]+", tail) and not Path(spec).expanduser().exists():
        return head, tail
    return spec, None


def hf_input(
    value: str, columns: dict | None, cache_dir: str | os.PathLike, classes: list[str], labelled: bool
) -> tuple[list[str], list[int] | None, list[str]]:
    """``predict.py input=hf:SOURCE[:SPLIT]`` (default split: ``test``, or the only one there is): (image files,
    labels as indices into ``classes`` with ``labelled``, else None, ids: the id column's values, else the row
    numbers)."""
    source, split = parse_hf_input(value)
    hf = HfDataset(source, columns, cache_dir, key="input")
    if split is None:
        names = hf.split_names
        if TEST_SPLIT not in names and len(names) > 1:
            raise DatasetError(
                f"input={value}: {source} has no '{TEST_SPLIT}' split (splits: {names}); name one: "
                f"input=hf:{source}:SPLIT"
            )
        split = TEST_SPLIT if TEST_SPLIT in names else names[0]
    rows = hf.split(split)
    if not labelled:
        return rows.paths, None, rows.ids
    if all(v is None for v in rows.labels):
        raise DatasetError(
            f"input={value}: split {split!r} has no labels (column {hf.columns['label']!r}) to score; "
            "labelled=true needs them"
        )
    if any(v is None for v in rows.labels):
        raise _missing_labels(rows, hf.columns["label"], source)
    unknown = sorted({v for v in rows.labels if v not in classes})
    if unknown:
        raise DatasetError(
            f"input={value}: split {split!r} has label(s) {unknown[:SHOWN]} that are not the model's classes {classes}"
        )
    return rows.paths, [classes.index(v) for v in rows.labels], rows.ids
