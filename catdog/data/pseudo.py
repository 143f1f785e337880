"""Pseudo-labelling (``data.pseudo``): confidently predicted test images join the training images.

``data.pseudo.labels`` is a submission-format CSV (what ``predict.py`` writes) of predictions for the images in
``data.pseudo.images`` (default ``<data.dir>/test``). Images whose predicted class has probability >=
``data.pseudo.threshold`` join the training side of every split and fold, never the validation side: their target is
the predicted class (``soft=false``) or the predicted probabilities (``soft=true``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from catdog.data.layouts import find_unlabelled
from catdog.errors import ConfigError, DatasetError, check_known_keys
from catdog.runs.layout import csv_text, format_prob
from catdog.submission import read_submission

#: data.pseudo's keys and their defaults (conf/data/default.yaml).
PSEUDO_DEFAULTS = {"labels": None, "images": None, "threshold": 0.95, "soft": False}


def complete_pseudo(pseudo: dict | None) -> dict:
    return {**PSEUDO_DEFAULTS, **(pseudo or {})}


def check_pseudo(pseudo) -> None:
    """``data.pseudo``'s keys and values (the files are read at setup)."""
    if pseudo is None:
        return
    check_known_keys(pseudo, sorted(PSEUDO_DEFAULTS), "data.pseudo")
    p = complete_pseudo(pseudo)
    for key in ("labels", "images"):
        if p[key] is not None and not isinstance(p[key], str):
            raise ConfigError(f"data.pseudo.{key} must be a path or null, got {p[key]!r}")
    if p["labels"] is not None and not Path(p["labels"]).expanduser().is_file():
        raise ConfigError(f"data.pseudo.labels={p['labels']}: no such file (a submission CSV written by predict.py)")
    t = p["threshold"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 < t <= 1.0:
        raise ConfigError(f"data.pseudo.threshold must be a probability in (0, 1], got {t!r}")
    if not isinstance(p["soft"], bool):
        raise ConfigError(f"data.pseudo.soft must be true or false, got {p['soft']!r}")


@dataclass(frozen=True)
class PseudoLabels:
    """The test images that passed the threshold, and their targets (N, K): one-hot, or the predicted probabilities;
    ``source`` and ``threshold`` as configured, ``candidates`` the number of predictions the file held."""

    paths: list[str]
    targets: np.ndarray
    soft: bool
    candidates: int
    source: str
    threshold: float

    def hard(self) -> list[int]:
        return [int(i) for i in self.targets.argmax(axis=1)]

    def subset(self, keep: list[int]) -> PseudoLabels:
        return dataclasses.replace(self, paths=[self.paths[i] for i in keep], targets=self.targets[keep])


def load_pseudo(pseudo: dict | None, root: Path, classes: list[str], labelled: list[str]) -> PseudoLabels | None:
    """The pseudo-labelled images for ``data.pseudo`` (None when ``labels`` is null). Ids of the CSV that name no
    image, and images that are also labelled training images, are errors naming the first few."""
    p = complete_pseudo(pseudo)
    if p["labels"] is None:
        return None
    images = Path(p["images"]).expanduser() if p["images"] else root / "test"
    ids, probs = read_submission(p["labels"], classes, key="data.pseudo.labels")
    by_id = {Path(f).stem: str(f) for f in find_unlabelled(images)}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise DatasetError(
            f"data.pseudo.labels={p['labels']}: {len(missing)} of {len(ids)} id(s) name no image in {images} "
            f"(data.pseudo.images), e.g. {', '.join(missing[:3])}"
        )
    paths = [by_id[i] for i in ids]
    overlap = sorted(set(map(os.path.abspath, paths)) & set(map(os.path.abspath, labelled)))
    if overlap:
        raise DatasetError(
            f"data.pseudo.labels={p['labels']}: {len(overlap)} image(s) are also labelled training images, e.g. "
            f"{', '.join(overlap[:3])}; pseudo-labels are for unlabelled images"
        )
    keep = np.flatnonzero(probs.max(axis=1) >= p["threshold"])
    probs = probs[keep]
    targets = probs if p["soft"] else np.eye(len(classes))[probs.argmax(axis=1)]
    return PseudoLabels(
        [paths[i] for i in keep], targets, bool(p["soft"]), len(ids), str(p["labels"]), float(p["threshold"])
    )


def pseudo_record(used: PseudoLabels | None, classes: list[str]) -> dict | None:
    """What the run record (``result.json``) says of the pseudo-labels: the source, the settings, how many were
    candidates and how many were used per class."""
    if used is None:
        return None
    hard = used.hard()
    return {
        "labels": used.source, "threshold": used.threshold, "soft": used.soft, "candidates": used.candidates,
        "used": len(used.paths), "used_per_class": {c: hard.count(i) for i, c in enumerate(classes)},
    }  # fmt: skip


def pseudo_text(used: PseudoLabels, root: Path, classes: list[str]) -> str:
    """``pseudo.csv``: the images that joined training and their targets."""
    rows = [
        (os.path.relpath(path, root), *(format_prob(v) for v in target))
        for path, target in zip(used.paths, used.targets)
    ]
    return csv_text(("path", *(f"target_{c}" for c in classes)), sorted(rows))
