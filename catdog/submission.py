"""Kaggle-style submission files: ``id,label`` for two classes, one probability column per class otherwise."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from catdog.errors import ConfigError, DatasetError
from catdog.fileio import atomic_write_text, check_writable

#: Nine significant digits: every float32 probability reads back exactly (as float32), and p = 3e-7 stays 3e-07
#: instead of rounding to 0 (which Kaggle's clamp would score as a log loss of 34.5 instead of 15.0).
PROB_FORMAT = ".9g"


def id_sort_key(image_id: str):
    """Numeric ids sort numerically (2 before 10), others by text after them."""
    return (0, int(image_id), "") if image_id.isdigit() else (1, 0, image_id)


def clip_bounds(clip: Sequence[float] | None) -> tuple[float, float] | None:
    """``clip`` as ``(lo, hi)`` with 0 < lo < 0.5 < hi < 1; None: no clipping."""
    if clip is None:
        return None
    try:
        lo, hi = (float(v) for v in clip)
    except (TypeError, ValueError):
        raise ConfigError(
            f"clip must be [lo, hi] with 0 < lo < 0.5 < hi < 1 (e.g. [0.005, 0.995]), got {clip!r}"
        ) from None
    if not (0.0 < lo < 0.5 < hi < 1.0):
        raise ConfigError(f"clip must be [lo, hi] with 0 < lo < 0.5 < hi < 1 (e.g. [0.005, 0.995]), got {list(clip)}")
    return lo, hi


def clip_probs(probs: np.ndarray, clip: Sequence[float] | None) -> np.ndarray:
    """Clamp probabilities to [lo, hi] (bounds the log loss of confident mistakes) and renormalize rows."""
    bounds = clip_bounds(clip)
    if bounds is None:
        return probs
    p = np.clip(probs, *bounds)
    if p.shape[1] == 2:  # keep the two columns complementary so the written P(class 1) is exactly clamped
        p[:, 0] = 1.0 - p[:, 1]
        return p
    return p / p.sum(axis=1, keepdims=True)


def submission_text(ids: Sequence[str], probs: np.ndarray, classes: Sequence[str]) -> str:
    order = sorted(range(len(ids)), key=lambda i: id_sort_key(ids[i]))
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    if len(classes) == 2:
        w.writerow(["id", "label"])
        for i in order:
            w.writerow([ids[i], f"{probs[i, 1]:{PROB_FORMAT}}"])
    else:
        w.writerow(["id", *classes])
        for i in order:
            w.writerow([ids[i], *(f"{v:{PROB_FORMAT}}" for v in probs[i])])
    return out.getvalue()


def write_submission(
    path: str | os.PathLike, ids: Sequence[str], probs: np.ndarray, classes: Sequence[str], overwrite: bool = False
) -> Path:
    """Write the submission atomically; refuse to replace an existing file (even one another process wrote meanwhile)
    unless ``overwrite``."""
    path = check_writable(path, overwrite)
    if probs.shape != (len(ids), len(classes)):
        raise ValueError(f"probabilities of shape {probs.shape} do not match {len(ids)} ids x {len(classes)} classes")
    if not np.isfinite(probs).all():
        raise ValueError("refusing to write non-finite probabilities")
    atomic_write_text(path, submission_text(ids, probs, classes), overwrite=overwrite)
    return path


def read_submission(path: str | os.PathLike, classes: Sequence[str], key: str = "file") -> tuple[list[str], np.ndarray]:
    """(ids, probabilities (N, K)) from a submission written by :func:`write_submission`: ``id,label`` with
    P(``classes[1]``) for two classes, ``id,<class>...`` otherwise. Every error names ``key``, the file and the row."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{key}={path}: no such file")
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        rows = list(reader)
    two = len(classes) == 2
    expected = ["id", "label"] if two else ["id", *classes]
    if header is None or [h.strip() for h in header] != expected:
        raise DatasetError(
            f"{key}={path} is not a submission for classes {list(classes)}: header {header}, expected "
            f"{','.join(expected)}"
        )
    ids, probs = [], []
    for line, row in enumerate(rows, start=2):
        try:
            values = [float(v) for v in row[1:]]
        except ValueError:
            values = []
        if len(row) != len(expected) or not all(0.0 <= v <= 1.0 for v in values) or len(values) != len(row) - 1:
            raise DatasetError(f"{key}={path}, line {line}: expected an id and probabilities in [0, 1], got {row}")
        ids.append(row[0].strip())
        probs.append([1.0 - values[0], values[0]] if two else values)
    seen: set[str] = set()
    dupes = [i for i in ids if i in seen or seen.add(i)]
    if dupes:
        raise DatasetError(f"{key}={path}: {len(dupes)} id(s) appear more than once, e.g. {', '.join(dupes[:3])}")
    if not ids:
        raise DatasetError(f"{key}={path} holds no predictions")
    p = np.asarray(probs, dtype=np.float64).reshape(len(ids), len(classes))
    return ids, p / p.sum(axis=1, keepdims=True).clip(min=1e-300)
