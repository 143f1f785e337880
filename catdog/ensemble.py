"""Run-folder records (split, out-of-fold predictions, results), k-fold assembly and ensemble membership.

A k-fold run folder holds ``fold_<i>/`` sub-runs and, once every fold is done, ``oof.csv`` (every labelled image's
out-of-fold prediction), ``scores.csv`` / ``scores.md`` (per-fold and overall accuracy and log loss) and
``manifest.json`` (the member checkpoints, which ``predict.py ckpt=RUN_FOLDER`` loads).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from catdog.errors import CheckpointError, ConfigError, DatasetError
from catdog.fileio import atomic_write_text
from catdog.metrics import accuracy, log_loss
from catdog.models.calibration import calibrated_probs, cross_fitted

log = logging.getLogger(__name__)

RESULT_NAME = "result.json"
MANIFEST_NAME = "manifest.json"
MANIFEST_KIND = "catdog-ensemble"


def _rel(path: str, root: Path) -> str:
    return os.path.relpath(path, root)


def csv_text(header: Sequence[str], rows) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return out.getvalue()


def split_text(datamodule) -> str:
    """Which image was used for what, as ``split.csv`` holds it: ``path,label,split`` (train/val), or
    ``path,label,fold`` for k-fold."""
    root = Path(datamodule.root)
    classes = datamodule.classes
    if datamodule.fold_assignment is not None:
        images = datamodule.all_labelled
        rows = [
            (_rel(p, root), classes[y], f) for p, y, f in zip(images.paths, images.labels, datamodule.fold_assignment)
        ]
        header = ("path", "label", "fold")
    else:
        rows = [
            (_rel(p, root), classes[y], "train")
            for p, y in zip(datamodule.train_set.paths, datamodule.train_set.labels)
        ]
        rows += [
            (_rel(p, root), classes[y], "val") for p, y in zip(datamodule.val_set.paths, datamodule.val_set.labels)
        ]
        header = ("path", "label", "split")
    return csv_text(header, sorted(rows))


def read_split(path: str | os.PathLike, data_root: str | os.PathLike, classes: Sequence[str]):
    """The validation images of a run, from its ``split.csv``: :class:`~catdog.data.layouts.LabelledImages` with paths
    under ``data_root`` (the dataset the run was trained on). A k-fold fold's file gives the images of that fold
    (``fold_<i>/split.csv``)."""
    from catdog.data.layouts import LabelledImages

    path = Path(path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows, header = list(reader), reader.fieldnames or []
    if header not in (["path", "label", "split"], ["path", "label", "fold"]):
        raise DatasetError(f"{path} is not a catdog split.csv (path,label,split or path,label,fold), header {header}")
    if "split" in header:
        val = [r for r in rows if r["split"] == "val"]
    else:
        fold = path.parent.name[5:] if path.parent.name.startswith("fold_") else ""
        if not fold.isdigit():
            raise DatasetError(
                f"{path} lists every fold of a k-fold run; pass one fold's file (fold_<i>/split.csv) to score the "
                "images that fold did not train on"
            )
        val = [r for r in rows if r["fold"] == fold]
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({r["label"] for r in val} - set(index))
    if unknown:
        raise DatasetError(f"{path}: labels {unknown} are not among the checkpoint's classes {list(classes)}")
    if not val:
        raise DatasetError(f"{path} lists no validation images")
    root = Path(data_root)
    return LabelledImages([str(root / r["path"]) for r in val], [index[r["label"]] for r in val], list(classes))


def format_prob(value: float) -> str:
    """A probability as the shortest text that reads back as exactly the same number (``repr``), so that scores
    recomputed from a file equal the ones computed in memory, and p = 3e-7 is not written as 0."""
    return repr(float(value))


def write_oof(
    path: Path | None, datamodule, probs: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor, fold
) -> dict[str, float]:
    """Validation predictions of the best checkpoint: ``path,label,fold,p_<class>...``, one row per image, sorted by
    path (``path`` None: not written). Returns :func:`scores` of the rows as written (the figures k-fold assembly will
    compute from the file)."""
    root = Path(datamodule.root)
    classes = datamodule.classes
    val = datamodule.val_set
    rows = []
    for p, i in zip(probs.tolist(), indices.tolist()):
        rows.append(
            (
                _rel(val.paths[i], root),
                classes[val.labels[i]],
                "" if fold is None else fold,
                *(format_prob(v) for v in p),
            )
        )
    rows.sort()
    if path is not None:
        atomic_write_text(path, csv_text(("path", "label", "fold", *(f"p_{c}" for c in classes)), rows))
    written = np.array([[float(v) for v in r[3:]] for r in rows], dtype=np.float64).reshape(len(rows), len(classes))
    return scores(written, [r[1] for r in rows], classes)


def read_oof(path: Path) -> tuple[list[list[str]], np.ndarray, list[str], list[str]]:
    """(raw rows ``path,label,fold,p_...``, probabilities (N, K), labels, classes) from an ``oof.csv``."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = list(reader)
    classes = [h[2:] for h in header[3:]]
    probs = np.array([[float(v) for v in r[3:]] for r in rows], dtype=np.float64).reshape(len(rows), len(classes))
    return rows, probs, [r[1] for r in rows], classes


def scores(probs: np.ndarray, labels: Sequence[str], classes: Sequence[str]) -> dict[str, float]:
    """Accuracy and log loss."""
    index = {c: i for i, c in enumerate(classes)}
    p = torch.from_numpy(probs)
    t = torch.tensor([index[y] for y in labels])
    return {"logloss": log_loss(p, t), "acc": accuracy(p, t), "images": len(labels)}


def temperature_scaled(probs: np.ndarray, temperature: float | None) -> torch.Tensor:
    """``softmax(log(probs) / T)`` in double precision (log-probabilities scale like logits)."""
    logp = torch.from_numpy(np.log(np.clip(probs, 1e-300, 1.0)))
    return calibrated_probs(logp, temperature)


def finalize_ensemble(run_dir: str | os.PathLike, expected_folds: int | None = None) -> dict:
    """Combine finished ``fold_<i>/`` runs into ``oof.csv``, ``scores.csv``/``.md`` and ``manifest.json``."""
    run_dir = Path(run_dir)
    done = [d for d in run_dir.glob("fold_*") if d.name[5:].isdigit() and (d / RESULT_NAME).is_file()]
    done.sort(key=lambda d: int(d.name[5:]))
    expected = expected_folds or len(done)
    missing = sorted(set(range(expected)) - {int(d.name[5:]) for d in done})
    if missing:
        raise DatasetError(f"{run_dir}: fold(s) {missing} have not finished; run the same command again to finish them")
    oof_rows, all_probs, all_scaled, all_labels, members, fold_rows, classes = [], [], [], [], [], [], None
    for d in done:
        result = json.loads((d / RESULT_NAME).read_text())
        rows, probs, labels, fold_classes = read_oof(d / "oof.csv")
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
        member = {"checkpoint": _rel(str(d / result["best_checkpoint"]), run_dir), "fold": result["fold"], **s}
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
    atomic_write_text(run_dir / "oof.csv", csv_text(header, sorted(oof_rows)))
    header = (
        "fold", "images", "acc", "logloss", "logloss_cross_fitted", "logloss_calibrated_in_sample", "temperature",
        "temperature_cross_fitted", "epochs", "wall_time_s",
    )  # fmt: skip
    rows = [[r.get(k) for k in header] for r in fold_rows]
    rows.append(["oof", *(overall.get(k) for k in header[1:6]), None, None, None, None])
    atomic_write_text(run_dir / "scores.csv", csv_text(header, [[_exact(v) for v in r] for r in rows]))
    table = [[_short(v, 1 if k == "wall_time_s" else 4) for k, v in zip(header, r)] for r in rows]
    atomic_write_text(run_dir / "scores.md", markdown_table(header, table) + SCORES_NOTE)
    manifest = {"kind": MANIFEST_KIND, "classes": classes, "members": members, "oof": overall}
    atomic_write_text(run_dir / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")
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


def _exact(v) -> str:
    """CSV cell: floats in full (``repr``) so files agree with the figures computed in memory; None as empty."""
    return "" if v is None else repr(v) if isinstance(v, float) else str(v)


def _short(v, digits: int = 4) -> str:
    """Markdown cell: floats to ``digits`` decimals; None as empty."""
    return "" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def markdown_table(header: Sequence, rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


ENSEMBLE_MODES = ("prob", "logit")


def check_ensemble_mode(mode: str) -> str:
    if mode not in ENSEMBLE_MODES:
        raise ConfigError(f"ensemble must be 'prob' (mean of probabilities) or 'logit' (mean of logits), got {mode!r}")
    return mode


def combine(member_probs: Sequence[np.ndarray], mode: str = "prob") -> np.ndarray:
    """Average members' probabilities (``prob``) or their log-probabilities, renormalized (``logit``)."""
    stacked = np.stack(member_probs)
    if check_ensemble_mode(mode) == "prob":
        return stacked.mean(axis=0)
    logits = np.log(np.clip(stacked, 1e-15, 1.0)).mean(axis=0)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
