"""What a run folder holds, by name, and the readers and writers of its record files.

A training run's folder (``paths.output_dir``)::

    .hydra/              config.yaml, overrides.yaml, hydra.yaml (written once the run is accepted)
    .lock                held by the process that writes here (catdog.runs.lock)
    train.log            the run log (catdog.cli.run_log)
    checkpoints/         best.ckpt (temperature inside), last.ckpt; swa.ckpt with weight averaging
    csv/metrics.csv      the metric history, kept whole across resumes (catdog.runs.history)
    split.csv            path,label,split (train/val), or path,label,fold for k-fold
    oof.csv              the best checkpoint's predictions on its validation images
    pseudo.csv           the pseudo-labelled images that joined training (data.pseudo), with their targets
    lr_find.json, .png   tune=lr_find's range test (the run then trains nothing)
    result.json          the run's result (written last: a folder with it is finished)
    report.html, report/ the run's report (catdog.report)

A k-fold run adds ``fold_<i>/`` (one run folder each), ``kfold.json`` (the settings a resume must keep), and once
every fold is done ``oof.csv``, ``scores.csv`` / ``scores.md``, ``manifest.json`` (the ensemble's members) and
``label_issues.csv`` (every image ranked by how unlikely its out-of-fold prediction makes its label). A
multirun sweep folder holds Hydra's ``multirun.yaml``, one folder per job and ``summary.csv`` / ``summary.md`` /
``summary.png``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from catdog.data.layouts import LabelledImages
from catdog.errors import DatasetError
from catdog.fileio import atomic_write_text
from catdog.metrics import scores

RECORD_DIR = ".hydra"
LOCK_NAME = ".lock"
CHECKPOINT_DIR = "checkpoints"
BEST_NAME = "best.ckpt"
LAST_NAME = "last.ckpt"
SWA_NAME = "swa.ckpt"
SPLIT_NAME = "split.csv"
OOF_NAME = "oof.csv"
RESULT_NAME = "result.json"
KFOLD_SETTINGS = "kfold.json"
MANIFEST_NAME = "manifest.json"
MANIFEST_KIND = "catdog-ensemble"
LABEL_ISSUES_NAME = "label_issues.csv"
PSEUDO_NAME = "pseudo.csv"
LR_FIND_JSON = "lr_find.json"
LR_FIND_PNG = "lr_find.png"
#: Written beside the submission by predict.py blend=oof.
BLEND_NAME = "blend.json"
SCORES_CSV = "scores.csv"
SCORES_MD = "scores.md"
REPORT_DIR = "report"
REPORT_HTML = "report.html"
#: Hydra writes this into every multirun's sweep folder.
SWEEP_RECORD = "multirun.yaml"
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
SUMMARY_PNG = "summary.png"
FOLD_PREFIX = "fold_"


def fold_dir(run_dir: Path, fold: int) -> Path:
    """The folder of fold ``fold`` of a k-fold run."""
    return run_dir / f"{FOLD_PREFIX}{fold}"


def fold_number(folder: Path) -> int | None:
    """The fold whose folder ``folder`` is (``fold_<i>``), else None."""
    digits = folder.name.removeprefix(FOLD_PREFIX)
    return int(digits) if folder.name.startswith(FOLD_PREFIX) and digits.isdigit() else None


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``; None when there is no such file."""
    return json.loads(path.read_text()) if path.is_file() else None


def trained_images(run: Path) -> set[str]:
    """The labelled images (paths relative to the data folder) that trained the checkpoints of the run folder
    ``run``, from its ``split.csv``: the ``train`` rows, or for a k-fold fold every fold but its own (``result.json``'s
    ``fold``, else the folder's name ``fold_<i>``)."""
    with open(run / SPLIT_NAME, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        header = reader.fieldnames or []
    if "fold" not in header:
        return {r["path"] for r in rows if r.get("split") == "train"}
    fold = (read_json(run / RESULT_NAME) or {}).get("fold")
    fold = fold_number(run) if fold is None else fold
    return {r["path"] for r in rows if fold is None or r["fold"] != str(fold)}


def write_json(path: Path, record: dict) -> None:
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")


def save_config_record(cfg: DictConfig, run_dir: Path) -> None:
    """Write ``.hydra/config.yaml``, ``overrides.yaml`` and ``hydra.yaml`` as Hydra does, once the run in ``run_dir``
    has been accepted. A record it replaces with different content is kept as ``<name>.<time>.yaml``."""
    record = run_dir / RECORD_DIR
    files = {"config.yaml": OmegaConf.to_yaml(cfg)}
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        files["overrides.yaml"] = OmegaConf.to_yaml(OmegaConf.create(list(hydra_cfg.overrides.task)))
        files["hydra.yaml"] = OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg}))
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    for name, text in files.items():
        path = record / name
        if name != "hydra.yaml" and path.is_file() and path.read_text() != text:
            path.rename(path.with_name(f"{path.stem}.{stamp}{path.suffix}"))
        atomic_write_text(path, text)


def rel_path(path: str, root: Path) -> str:
    return os.path.relpath(path, root)


def csv_text(header: Sequence[str], rows) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return out.getvalue()


def split_text(datamodule) -> str:
    """Which image was used for what, as ``split.csv`` holds it: ``path,label,split`` (train/val, and pseudo for
    pseudo-labelled images with their predicted class), or ``path,label,fold`` for k-fold (labelled images only)."""
    root = Path(datamodule.root)
    classes = datamodule.classes
    if datamodule.fold_assignment is not None:
        images = datamodule.all_labelled
        rows = [
            (rel_path(p, root), classes[y], f)
            for p, y, f in zip(images.paths, images.labels, datamodule.fold_assignment)
        ]
        header = ("path", "label", "fold")
    else:
        pseudo = set(datamodule.pseudo.paths) if datamodule.pseudo is not None else set()
        rows = [
            (rel_path(p, root), classes[y], "pseudo" if p in pseudo else "train")
            for p, y in zip(datamodule.train_set.paths, datamodule.train_set.labels)
        ]
        rows += [
            (rel_path(p, root), classes[y], "val") for p, y in zip(datamodule.val_set.paths, datamodule.val_set.labels)
        ]
        header = ("path", "label", "split")
    return csv_text(header, sorted(rows))


SPLIT_HEADERS = (["path", "label", "split"], ["path", "label", "fold"])


def is_split_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a catdog ``split.csv`` (by its header)."""
    with open(path, newline="") as f:
        return next(csv.reader(f), None) in SPLIT_HEADERS


def read_split(path: str | os.PathLike, data_root: str | os.PathLike, classes: Sequence[str]):
    """The validation images of a run, from its ``split.csv``: :class:`~catdog.data.layouts.LabelledImages` with paths
    under ``data_root`` (the dataset the run was trained on). A k-fold fold's file gives the images of that fold
    (``fold_<i>/split.csv``)."""
    path = Path(path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows, header = list(reader), reader.fieldnames or []
    if header not in SPLIT_HEADERS:
        raise DatasetError(f"{path} is not a catdog split.csv (path,label,split or path,label,fold), header {header}")
    if "split" in header:
        val = [r for r in rows if r["split"] == "val"]
    else:
        fold = fold_number(path.parent)
        if fold is None:
            raise DatasetError(
                f"{path} lists every fold of a k-fold run; pass one fold's file (fold_<i>/split.csv) to score the "
                "images that fold did not train on"
            )
        val = [r for r in rows if r["fold"] == str(fold)]
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
                rel_path(val.paths[i], root),
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


def exact_number(v) -> str:
    """CSV cell: floats in full (``repr``) so files agree with the figures computed in memory; None as empty."""
    return "" if v is None else repr(v) if isinstance(v, float) else str(v)


def short_number(v, digits: int = 4) -> str:
    """Markdown cell: floats to ``digits`` decimals; None as empty."""
    return "" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def markdown_table(header: Sequence, rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
