"""K-fold assembly and ensembling: finished folds combined into one ensemble, and members' predictions averaged.

A k-fold run folder holds ``fold_<i>/`` sub-runs and, once every fold is done, ``oof.csv`` (every labelled image's
out-of-fold prediction), ``scores.csv`` / ``scores.md`` (per-fold and overall accuracy and log loss) and
``manifest.json`` (the member checkpoints, which ``predict.py ckpt=RUN_FOLDER`` loads) and ``label_issues.csv``
(:mod:`catdog.label_issues`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from catdog.errors import CheckpointError, ConfigError, DatasetError
from catdog.fileio import atomic_write_text
from catdog.label_issues import label_issues_text
from catdog.metrics import scores
from catdog.models.calibration import cross_fitted, temperature_scaled
from catdog.runs.layout import (
    FOLD_PREFIX,
    LABEL_ISSUES_NAME,
    MANIFEST_KIND,
    MANIFEST_NAME,
    OOF_NAME,
    RESULT_NAME,
    SCORES_CSV,
    SCORES_MD,
    csv_text,
    exact_number,
    fold_number,
    markdown_table,
    read_json,
    read_oof,
    rel_path,
    short_number,
    write_json,
)

log = logging.getLogger(__name__)


def finalize_ensemble(run_dir: str | os.PathLike, expected_folds: int | None = None) -> dict:
    """Combine finished ``fold_<i>/`` runs into ``oof.csv``, ``scores.csv``/``.md`` and ``manifest.json``."""
    run_dir = Path(run_dir)
    done = [d for d in run_dir.glob(f"{FOLD_PREFIX}*") if fold_number(d) is not None and (d / RESULT_NAME).is_file()]
    done.sort(key=fold_number)
    expected = expected_folds or len(done)
    missing = sorted(set(range(expected)) - {fold_number(d) for d in done})
    if missing:
        raise DatasetError(f"{run_dir}: fold(s) {missing} have not finished; run the same command again to finish them")
    oof_rows, all_probs, all_scaled, all_labels, members, fold_rows, classes = [], [], [], [], [], [], None
    for d in done:
        result = read_json(d / RESULT_NAME)
        rows, probs, labels, fold_classes = read_oof(d / OOF_NAME)
        if classes is not None and fold_classes != classes:
            raise CheckpointError(f"{d} was trained on classes {fold_classes}, other folds on {classes}")
        classes = fold_classes
        temperature = (result.get("calibration") or {}).get("temperature")
        # Each fold's own temperature, fitted on its own out-of-fold images (None: unscaled): in-sample there.
        scaled = temperature_scaled(probs, temperature).numpy()
        s = scores(probs, labels, classes)
        if temperature is not None:
            s["logloss_calibrated_in_sample"] = scores(scaled, labels, classes)["logloss"]
        fold_rows.append(
            {
                "fold": result["fold"], **s, "temperature": temperature, "epochs": result["epochs"],
                "wall_time_s": result["wall_time_s"],
            }
        )  # fmt: skip
        member = {"checkpoint": rel_path(str(d / result["best_checkpoint"]), run_dir), "fold": result["fold"], **s}
        if temperature is not None:
            member["temperature"] = temperature
        members.append(member)
        oof_rows += rows
        all_probs.append(probs)
        all_scaled.append(scaled)
        all_labels += labels
    overall = scores(np.concatenate(all_probs), all_labels, classes)
    calibrated = all(r["temperature"] is not None for r in fold_rows)
    if calibrated:
        overall["logloss_calibrated_in_sample"] = scores(np.concatenate(all_scaled), all_labels, classes)["logloss"]
        per_fold, overall["logloss_cross_fitted"] = _cross_fit(all_probs, all_labels, classes)
        for row, member, cross in zip(fold_rows, members, per_fold):
            row.update(cross)
            member.update(cross)
    if len({r[0] for r in oof_rows}) != len(oof_rows):
        raise DatasetError(f"{run_dir}: an image appears in more than one fold's validation set")
    header = ("path", "label", "fold", *(f"p_{c}" for c in classes))
    atomic_write_text(run_dir / OOF_NAME, csv_text(header, sorted(oof_rows)))
    issues = label_issues_text(oof_rows, np.concatenate(all_probs), all_labels, classes)
    atomic_write_text(run_dir / LABEL_ISSUES_NAME, issues)
    header = (
        "fold", "images", "acc", "logloss", "logloss_cross_fitted", "logloss_calibrated_in_sample", "temperature",
        "temperature_cross_fitted", "epochs", "wall_time_s",
    )  # fmt: skip
    rows = [[r.get(k) for k in header] for r in fold_rows]
    rows.append(["oof", *(overall.get(k) for k in header[1:6]), None, None, None, None])
    atomic_write_text(run_dir / SCORES_CSV, csv_text(header, [[exact_number(v) for v in r] for r in rows]))
    table = [[short_number(v, 1 if k == "wall_time_s" else 4) for k, v in zip(header, r)] for r in rows]
    atomic_write_text(run_dir / SCORES_MD, markdown_table(header, table) + SCORES_NOTE)
    manifest = {"kind": MANIFEST_KIND, "classes": classes, "members": members, "oof": overall}
    write_json(run_dir / MANIFEST_NAME, manifest)
    best = min(fold_rows, key=lambda r: r["logloss"])
    log.info(
        "k-fold: OOF log loss %.4f%s, acc %.4f over %d images (best single fold %s: %.4f)",
        overall["logloss"],
        f" ({overall['logloss_cross_fitted']:.4f} with temperatures cross-fitted on the other folds; "
        f"{overall['logloss_calibrated_in_sample']:.4f} in-sample with each fold's own)" if calibrated else "",
        overall["acc"], overall["images"], best["fold"], best["logloss"],
    )  # fmt: skip
    print(markdown_table(header, table))
    return {"oof": overall, "folds": fold_rows, "manifest": str(run_dir / MANIFEST_NAME)}


#: Under scores.md: what the calibrated columns mean.
SCORES_NOTE = (
    "\nlogloss_cross_fitted: each fold's out-of-fold rows scaled with a temperature fitted on the other folds' rows "
    "(temperature_cross_fitted), the out-of-fold calibrated score. logloss_calibrated_in_sample: each fold's rows "
    "scaled with its own temperature, fitted on those same rows (optimistic). Every fold's best epoch was chosen on "
    "its own out-of-fold rows.\n"
)


def _cross_fit(probs: list[np.ndarray], labels: list[str], classes) -> tuple[list[dict], float]:
    """Each fold's ``{"temperature_cross_fitted", "logloss_cross_fitted"}`` (its rows, ``probs[i]``, scaled with a
    temperature fitted on the other folds' rows) and the out-of-fold log loss of all rows so scaled."""
    index = {c: i for i, c in enumerate(classes)}
    logp = torch.from_numpy(np.log(np.clip(np.concatenate(probs), 1e-300, 1.0)))
    targets = torch.tensor([index[y] for y in labels])
    parts = torch.cat([torch.full((len(p),), i) for i, p in enumerate(probs)])
    scaled, temperatures = cross_fitted(logp, targets, parts)
    scaled = scaled.numpy()
    ends = np.cumsum([len(p) for p in probs])
    per_fold = [
        {
            "temperature_cross_fitted": temperatures[i],
            "logloss_cross_fitted": scores(scaled[end - len(p) : end], labels[end - len(p) : end], classes)["logloss"],
        }
        for i, (p, end) in enumerate(zip(probs, ends))
    ]
    return per_fold, scores(scaled, labels, classes)["logloss"]


ENSEMBLE_MODES = ("prob", "logit")


def check_ensemble_mode(mode: str) -> str:
    if mode not in ENSEMBLE_MODES:
        raise ConfigError(f"ensemble must be 'prob' (mean of probabilities) or 'logit' (mean of logits), got {mode!r}")
    return mode


def combine(member_probs: Sequence[np.ndarray], mode: str = "prob") -> np.ndarray:
    """Average members' probabilities (``prob``) or their log-probabilities, renormalized (``logit``)."""
    stacked = np.stack(member_probs)
    if mode == "prob":
        return stacked.mean(axis=0)
    logits = np.log(np.clip(stacked, 1e-15, 1.0)).mean(axis=0)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
