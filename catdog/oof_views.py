"""Out-of-fold rows made with test-time augmentation: ``RUN/oof_tta<N>_<views>.csv`` of a k-fold run.

A k-fold run's ``oof.csv`` holds one plain pass per labelled image, by the fold model that did not train on it. A
prediction with ``tta=N`` averages N augmented views with the plain pass, which is less sure of itself: on the shared
images a blend's temperature fitted on the plain rows was 1.34x too soft for its predictions at ``tta=5``
(``docs/results.md``). These rows are the same images predicted by the same fold models with the prediction's TTA.
They take a forward pass per view of every labelled image, so they are kept in the run folder, with what made them
(the views, the precision, the decoder and every member checkpoint's digest) beside them in a ``.json``, and reused
while that holds.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from catdog.blending import OofRun
from catdog.data.splits import file_digest
from catdog.errors import CheckpointError
from catdog.fileio import atomic_write_text
from catdog.inference import load_classifier
from catdog.runs.layout import csv_text, format_prob, read_json, read_oof, write_json

log = logging.getLogger(__name__)


def views_name(tta: int, views: str) -> str:
    """The rows' file name in the run folder."""
    return f"oof_tta{int(tta)}_{views}.csv"


def _identity(run: OofRun, tta: int, views: str, settings: dict) -> dict:
    members = {str(c.relative_to(run.run)): file_digest(c) for c in run.checkpoints}
    return {"tta": int(tta), "views": views, **settings, "checkpoints": members}


def _cached(run: OofRun, path: Path, identity: dict) -> np.ndarray | None:
    """The rows kept at ``path`` in ``run``'s row order, when they were made by what ``identity`` says; else None."""
    if read_json(path.with_suffix(".json")) != identity or not path.is_file():
        return None
    rows, probs, _, classes = read_oof(path)
    at = {r[0]: i for i, r in enumerate(rows)}
    if classes != run.classes or sorted(at) != sorted(run.paths):
        return None
    return probs[[at[p] for p in run.paths]]


def oof_with_views(
    run: OofRun,
    root: Path,
    tta: int,
    views: str,
    settings: dict,
    predict: Callable[[object, list[str]], np.ndarray],
) -> OofRun:
    """``run`` with its out-of-fold rows predicted with ``tta`` views of ``views`` (``tta=0``: ``run`` itself): each
    image of fold f by fold f's model, ``predict(model, paths)`` giving raw probabilities (no temperature), the images
    under ``root`` (the dataset the run was trained on). ``settings``: what else changes the numbers (precision,
    decoder), part of the cache's identity."""
    if not tta:
        return run
    path = run.run / views_name(tta, views)
    identity = _identity(run, tta, views, settings)
    probs = _cached(run, path, identity)
    if probs is not None:
        log.info("%s: the out-of-fold rows with tta=%d (%s) kept from an earlier prediction", path, tta, views)
        return dataclasses.replace(run, probs=probs, tta=int(tta), views=views)
    if len(run.member_folds) != len(run.checkpoints) or set(map(str, run.member_folds)) != set(run.folds):
        raise CheckpointError(f"{run.run}: its manifest's members do not name the folds of its {len(run.folds)} rows")
    log.info(
        "%s: predicting its %d out-of-fold rows again with tta=%d (%s), each by the fold model that did not train on "
        "it (kept in %s)", run.run, len(run.paths), tta, views, path.name,
    )  # fmt: skip
    probs = np.empty_like(run.probs)
    for fold, checkpoint in zip(run.member_folds, run.checkpoints):
        rows = [i for i, f in enumerate(run.folds) if f == str(fold)]
        probs[rows] = predict(load_classifier(checkpoint), [str(root / run.paths[i]) for i in rows])
    header = ("path", "label", "fold", *(f"p_{c}" for c in run.classes))
    lines = [(p, y, f, *(format_prob(v) for v in row)) for p, y, f, row in zip(run.paths, run.labels, run.folds, probs)]
    atomic_write_text(path, csv_text(header, lines), overwrite=True)
    write_json(path.with_suffix(".json"), identity)
    return dataclasses.replace(run, probs=probs, tta=int(tta), views=views)
