"""``data.exclude=FILE``: images to leave out of a run (both sides of the split), e.g. the mislabelled ones found at the
top of a k-fold run's ``label_issues.csv``.

The file is a CSV with a ``path`` or ``id`` column (``label_issues.csv`` cut to the rows to drop qualifies), or plain
text with one entry a line (blank lines and ``#`` comments skipped). An entry names an image by its path relative to
``data.dir`` (``train/cat.1.jpg``), relative to ``train/`` (``cat.1.jpg``, ``cat/1.jpg``), its absolute path, or its
id (the file name without extension) when that is unique. The split is made before the exclusion, so the remaining
images keep the validation side or fold they had without it.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from pathlib import Path

from catdog.errors import ConfigError, DatasetError


def check_exclude(value) -> None:
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"data.exclude must be the path of a file listing images, or null; got {value!r}")
    if value is not None and not Path(value).expanduser().is_file():
        raise ConfigError(f"data.exclude={value}: no such file")


def read_exclude(path: str | os.PathLike) -> list[str]:
    """The entries of an exclusion file (see the module docstring)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"data.exclude={path}: no such file")
    text = path.read_text()
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        fields = reader.fieldnames or []
        column = next((c for c in ("path", "id") if c in fields), None)
        if column is None:
            raise DatasetError(f"data.exclude={path}: a CSV needs a 'path' or an 'id' column, found {fields}")
        entries = [row[column].strip() for row in reader if (row.get(column) or "").strip()]
    else:
        entries = [s for line in text.splitlines() if (s := line.split("#", 1)[0].strip())]
    if not entries:
        raise DatasetError(f"data.exclude={path} lists no image")
    return entries


def _keys(path: str, root: Path) -> list[str]:
    p = Path(path)
    rel = Path(os.path.relpath(p, root))
    keys = [str(p), os.path.abspath(p), rel.as_posix(), p.stem, p.name]
    if rel.parts and rel.parts[0] == "train":
        keys.append(Path(*rel.parts[1:]).as_posix())
    return keys


def excluded_paths(entries: list[str], paths: list[str], root: Path, source: str) -> set[str]:
    """The ``paths`` the ``entries`` name; an entry that names no image, or several, is an error listing the first
    few."""
    owners: dict[str, set[str]] = defaultdict(set)
    for path in paths:
        for key in _keys(path, root):
            owners[key].add(path)
    found, unknown, ambiguous = set(), [], []
    for entry in entries:
        match = owners.get(entry) or owners.get(Path(entry).as_posix())
        if not match:
            unknown.append(entry)
        elif len(match) > 1:
            ambiguous.append(entry)
        else:
            found |= match
    if unknown:
        raise DatasetError(
            f"data.exclude={source}: {len(unknown)} of {len(entries)} entries name no labelled image under {root}, "
            f"e.g. {', '.join(unknown[:3])}"
        )
    if ambiguous:
        raise DatasetError(
            f"data.exclude={source}: {len(ambiguous)} entries name more than one image (e.g. {ambiguous[0]!r}); "
            "give their paths relative to data.dir"
        )
    return found
