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
from omegaconf import ListConfig

from catdog.checkpoints import BEST_NAME, resolve_checkpoint
from catdog.errors import CheckpointError, ConfigError, DatasetError
from catdog.fileio import atomic_write_text
from catdog.metrics import accuracy, log_loss

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


def write_split(path: Path, datamodule) -> None:
    """Which image was used for what: ``path,label,split`` (train/val), or ``path,label,fold`` for k-fold."""
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
    atomic_write_text(path, csv_text(header, sorted(rows)))


def write_oof(path: Path, datamodule, probs: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor, fold) -> None:
    """Validation predictions of the best checkpoint: ``path,label,fold,p_<class>...``, one row per image."""
    root = Path(datamodule.root)
    classes = datamodule.classes
    val = datamodule.val_set
    rows = []
    for p, i in zip(probs.tolist(), indices.tolist()):
        rows.append(
            (_rel(val.paths[i], root), classes[val.labels[i]], "" if fold is None else fold, *(f"{v:.6f}" for v in p))
        )
    atomic_write_text(path, csv_text(("path", "label", "fold", *(f"p_{c}" for c in classes)), sorted(rows)))


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
    index = {c: i for i, c in enumerate(classes)}
    p = torch.from_numpy(probs)
    t = torch.tensor([index[y] for y in labels])
    return {"logloss": log_loss(p, t), "acc": accuracy(p, t), "images": len(labels)}


def finalize_ensemble(run_dir: str | os.PathLike, expected_folds: int | None = None) -> dict:
    """Combine finished ``fold_<i>/`` runs into ``oof.csv``, ``scores.csv``/``.md`` and ``manifest.json``."""
    run_dir = Path(run_dir)
    done = [d for d in run_dir.glob("fold_*") if d.name[5:].isdigit() and (d / RESULT_NAME).is_file()]
    done.sort(key=lambda d: int(d.name[5:]))
    expected = expected_folds or len(done)
    missing = sorted(set(range(expected)) - {int(d.name[5:]) for d in done})
    if missing:
        raise DatasetError(f"{run_dir}: fold(s) {missing} have not finished; run the same command again to finish them")
    oof_rows, all_probs, all_labels, members, fold_rows, classes = [], [], [], [], [], None
    for d in done:
        result = json.loads((d / RESULT_NAME).read_text())
        rows, probs, labels, fold_classes = read_oof(d / "oof.csv")
        if classes is not None and fold_classes != classes:
            raise CheckpointError(f"{d} was trained on classes {fold_classes}, other folds on {classes}")
        classes = fold_classes
        s = scores(probs, labels, classes)
        fold_rows.append(
            {"fold": result["fold"], **s, "epochs": result["epochs"], "wall_time_s": result["wall_time_s"]}
        )
        members.append({"checkpoint": _rel(str(d / result["best_checkpoint"]), run_dir), "fold": result["fold"], **s})
        oof_rows += rows
        all_probs.append(probs)
        all_labels += labels
    overall = scores(np.concatenate(all_probs), all_labels, classes)
    if len({r[0] for r in oof_rows}) != len(oof_rows):
        raise DatasetError(f"{run_dir}: an image appears in more than one fold's validation set")
    header = ("path", "label", "fold", *(f"p_{c}" for c in classes))
    atomic_write_text(run_dir / "oof.csv", csv_text(header, sorted(oof_rows)))
    table = [
        (r["fold"], r["images"], f"{r['acc']:.4f}", f"{r['logloss']:.4f}", r["epochs"], r["wall_time_s"])
        for r in fold_rows
    ]
    table.append(("oof", overall["images"], f"{overall['acc']:.4f}", f"{overall['logloss']:.4f}", "", ""))
    header = ("fold", "images", "acc", "logloss", "epochs", "wall_time_s")
    atomic_write_text(run_dir / "scores.csv", csv_text(header, table))
    atomic_write_text(run_dir / "scores.md", markdown_table(header, table))
    manifest = {"kind": MANIFEST_KIND, "classes": classes, "members": members, "oof": overall}
    atomic_write_text(run_dir / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")
    best = min(fold_rows, key=lambda r: r["logloss"])
    log.info(
        "k-fold: OOF log loss %.4f, acc %.4f over %d images (best single fold %s: %.4f)",
        overall["logloss"], overall["acc"], overall["images"], best["fold"], best["logloss"],
    )  # fmt: skip
    print(markdown_table(header, table))
    return {"oof": overall, "folds": fold_rows, "manifest": str(run_dir / MANIFEST_NAME)}


def markdown_table(header: Sequence, rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def resolve_members(ckpt, outputs: str | os.PathLike = "outputs") -> list[Path]:
    """Checkpoints to predict with: a list of files, a k-fold run folder (its manifest), a run folder, a file."""
    if isinstance(ckpt, (list, tuple, ListConfig)):
        members = [resolve_checkpoint(str(c), outputs) for c in ckpt]
        if not members:
            raise CheckpointError("ckpt=[] names no checkpoint")
        return members
    ckpt = str(ckpt)
    path = Path(ckpt).expanduser()
    if ckpt == "latest":
        best = resolve_checkpoint("latest", outputs)
        run = best.parent.parent.parent
        path = run if (run / MANIFEST_NAME).is_file() else best
    if path.is_dir() and (path / MANIFEST_NAME).is_file():
        manifest = json.loads((path / MANIFEST_NAME).read_text())
        if manifest.get("kind") != MANIFEST_KIND or not manifest.get("members"):
            raise CheckpointError(f"{path / MANIFEST_NAME} is not a catdog ensemble manifest")
        return [path / m["checkpoint"] for m in manifest["members"]]
    if (
        path.is_dir()
        and not (path / "checkpoints" / BEST_NAME).is_file()
        and list(path.glob(f"fold_*/checkpoints/{BEST_NAME}"))
    ):
        raise CheckpointError(
            f"{path} is a k-fold run without {MANIFEST_NAME}: not every fold has finished. "
            f"Finish it (run the same train command with hydra.run.dir={path}) or pass the fold checkpoints as a list"
        )
    return [resolve_checkpoint(str(path), outputs)]


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
