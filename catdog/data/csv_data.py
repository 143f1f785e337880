"""``data.csv=PATH``: a dataset described by a CSV file, the images under ``data.dir``.

One row per image: a column of file names or paths relative to ``data.dir`` (``data.csv_columns.image``, default
``image``) and a label column (``.label``, default ``label``; class names or integers). Two optional columns are
honoured when the file has them: ``.fold`` (default ``fold``; integers 0..K-1), which replaces catdog's own folds in a
k-fold run (``data.folds=K``), and ``.split`` (default ``split``; ``train`` or ``val``/``valid``/``validation``),
which replaces the random validation split of a single run. Other columns are ignored.

Classes are the sorted label values (integers sorted as numbers, so ``2`` comes before ``10``). A file that names no
image, a label missing from a row, an unknown split value or fold, and an image listed twice are errors naming the
file, the column and the first few rows at fault. So is a row naming an image outside ``data.dir``, symlinks followed
(``../x.png``, an absolute path elsewhere, a link under ``data.dir`` that leads out of it), unless
``data.csv_outside_dir=true``.

``predict.py input=IDS.csv`` reads the image column the same way (the ids of the submission are the values as
written), and with ``labelled=true`` scores the labels of the label column; the images must lie under its ``data.dir``
in the same way.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from catdog.data.layouts import LabelledImages
from catdog.errors import ConfigError, DatasetError, check_known_keys

#: data.csv_columns's keys and their defaults.
CSV_COLUMNS = {"image": "image", "label": "label", "fold": "fold", "split": "split"}
SPLIT_VALUES = {"train": "train", "val": "val", "valid": "val", "validation": "val"}
#: How many offending rows an error lists.
SHOWN = 3
#: The key that lets rows name images outside data.dir.
OUTSIDE_KEY = "data.csv_outside_dir"


def complete_columns(columns: dict | None) -> dict:
    return {**CSV_COLUMNS, **(columns or {})}


def check_outside_dir(value) -> bool:
    """``data.csv_outside_dir``: true or false."""
    if not isinstance(value, bool):
        raise ConfigError(f"{OUTSIDE_KEY} must be true or false, got {value!r}")
    return value


def check_csv_config(path, columns, outside_dir=False) -> None:
    """``data.csv`` (null or an existing file), ``data.csv_columns`` (known keys, non-empty names) and
    ``data.csv_outside_dir`` (true or false)."""
    check_outside_dir(outside_dir)
    if path is not None and not isinstance(path, str):
        raise ConfigError(f"data.csv must be the path of a CSV file, or null; got {path!r}")
    if path is not None and not Path(path).expanduser().is_file():
        raise ConfigError(f"data.csv={path}: no such file")
    check_known_keys(columns, sorted(CSV_COLUMNS), "data.csv_columns")
    for key, name in (columns or {}).items():
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"data.csv_columns.{key} must be a column name, got {name!r}")


@dataclass(frozen=True)
class CsvDataset:
    """The rows of a dataset CSV, in file order: the images and labels, and the user's folds and splits (None where
    the file has no such column)."""

    images: LabelledImages
    folds: list[int] | None
    splits: list[str] | None


def _rows(path: Path, needed: list[str]) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        reader.fieldnames = header
        rows = list(reader)
    missing = [c for c in needed if c not in header]
    if missing:
        raise DatasetError(
            f"{path} has no column {', '.join(repr(c) for c in missing)} (columns: {header}); name the columns with "
            "data.csv_columns.image= / .label="
        )
    if not rows:
        raise DatasetError(f"{path} lists no image")
    return header, rows


def _where(path: Path, column: str, bad: list[tuple[int, str]], what: str, hint: str = "") -> DatasetError:
    shown = ", ".join(f"line {line}: {value!r}" for line, value in bad[:SHOWN])
    more = f" and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
    return DatasetError(f"{path}, column {column!r}: {len(bad)} row(s) {what} ({shown}{more}){hint}")


def outside_root(paths: list[str], root: str | os.PathLike) -> list[int]:
    """The positions of ``paths`` that lie outside ``root`` once both are resolved (symlinks followed, ``..``
    collapsed): a link under ``root`` that leads out of it is outside."""
    top = os.path.realpath(root)
    return [i for i, p in enumerate(paths) if os.path.commonpath([top, os.path.realpath(p)]) != top]


def _image_paths(
    path: Path, root: Path, column: str, rows: list[dict[str, str]], outside_dir: bool = False
) -> list[str]:
    """Each row's image under ``root``; empty, missing and repeated images are errors, and so are images outside
    ``root`` unless ``outside_dir``."""
    values = [(r.get(column) or "").strip() for r in rows]
    empty = [(i + 2, v) for i, v in enumerate(values) if not v]
    if empty:
        raise _where(path, column, empty, "name no image")
    paths = [str(root / v) for v in values]
    if not outside_dir:
        outside = [(i + 2, values[i]) for i in outside_root(paths, root)]
        if outside:
            raise _where(
                path, column, outside, f"name an image outside {root} (data.dir; symlinks followed)",
                f"; images must lie under data.dir, or set {OUTSIDE_KEY}=true to read them from anywhere",
            )  # fmt: skip
    missing = [(i + 2, v) for i, (v, p) in enumerate(zip(values, paths)) if not os.path.isfile(p)]
    if missing:
        raise _where(path, column, missing, f"name a file that is not in {root} (data.dir)")
    seen: dict[str, int] = {}
    repeated = []
    for i, p in enumerate(paths):
        key = os.path.normpath(p)
        if key in seen:
            repeated.append((i + 2, f"{values[i]}, as on line {seen[key]}"))
        seen.setdefault(key, i + 2)
    if repeated:
        raise _where(path, column, repeated, "list an image a second time")
    return paths


def sorted_classes(labels: list[str]) -> list[str]:
    """The distinct label values sorted, integers as numbers (``2`` before ``10``)."""
    found = set(labels)
    if all(v.lstrip("-").isdigit() for v in found):
        return sorted(found, key=int)
    return sorted(found)


def read_csv_dataset(
    path: str | os.PathLike,
    root: str | os.PathLike,
    columns: dict | None = None,
    classes: list[str] | None = None,
    outside_dir: bool = False,
) -> CsvDataset:
    """The dataset a CSV describes (see the module docstring); ``classes``: the classes labels must be among (a
    checkpoint's), else the sorted label values; ``outside_dir``: rows may name images outside ``root``."""
    path, root, cols = Path(path), Path(root), complete_columns(columns)
    header, rows = _rows(path, [cols["image"], cols["label"]])
    paths = _image_paths(path, root, cols["image"], rows, outside_dir)
    labels = [(r.get(cols["label"]) or "").strip() for r in rows]
    empty = [(i + 2, "") for i, v in enumerate(labels) if not v]
    if empty:
        raise _where(path, cols["label"], empty, "have no label")
    if classes is None:
        classes = sorted_classes(labels)
        if len(classes) < 2:
            raise DatasetError(
                f"{path}, column {cols['label']!r}: only one class ({classes[0]!r}); a classifier needs two"
            )
    index = {c: i for i, c in enumerate(classes)}
    unknown = [(i + 2, v) for i, v in enumerate(labels) if v not in index]
    if unknown:
        raise _where(path, cols["label"], unknown, f"have a label that is not one of the classes {list(classes)}")
    folds = splits = None
    if cols["fold"] in header:
        values = [(r.get(cols["fold"]) or "").strip() for r in rows]
        bad = [(i + 2, v) for i, v in enumerate(values) if not v.isdigit()]
        if bad:
            raise _where(path, cols["fold"], bad, "hold no fold number such as 0 or 1")
        folds = [int(v) for v in values]
    if cols["split"] in header:
        values = [(r.get(cols["split"]) or "").strip().lower() for r in rows]
        bad = [(i + 2, v) for i, v in enumerate(values) if v not in SPLIT_VALUES]
        if bad:
            raise _where(path, cols["split"], bad, "hold neither 'train' nor 'val'")
        splits = [SPLIT_VALUES[v] for v in values]
    images = LabelledImages(paths, [index[v] for v in labels], list(classes), "csv")
    return CsvDataset(images, folds, splits)


def read_csv_images(
    path: str | os.PathLike, root: str | os.PathLike, columns: dict | None = None, outside_dir: bool = False
) -> tuple[list, list]:
    """(image paths under ``root``, their ids: the image column's values as written) of an unlabelled CSV;
    ``outside_dir``: rows may name images outside ``root``."""
    path, root, cols = Path(path), Path(root), complete_columns(columns)
    _, rows = _rows(path, [cols["image"]])
    paths = _image_paths(path, root, cols["image"], rows, outside_dir)
    return paths, [(r.get(cols["image"]) or "").strip() for r in rows]


def check_user_folds(folds: list[int], k: int, path) -> list[int]:
    """The CSV's fold column as the run's fold assignment: every value in 0..k-1, every fold non-empty."""
    found = sorted(set(folds))
    if found != list(range(k)):
        raise DatasetError(
            f"data.csv={path}: its fold column holds folds {found}, but data.folds={k} needs every fold 0..{k - 1}"
        )
    return folds


def check_user_split(splits: list[str], path) -> tuple[list[int], list[int]]:
    """(train rows, validation rows) of the CSV's split column; both sides must hold images."""
    train = [i for i, s in enumerate(splits) if s == "train"]
    val = [i for i, s in enumerate(splits) if s == "val"]
    if not train or not val:
        raise DatasetError(
            f"data.csv={path}: its split column puts {len(train)} image(s) in train and {len(val)} in val; both "
            "need some"
        )
    return train, val
