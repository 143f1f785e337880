"""What ``predict.py ckpt=...`` predicts with: a checkpoint file, a run folder, a k-fold ensemble (its manifest), a
sweep folder (its best job), a Hub model folder or ``hf://NAME`` (:mod:`catdog.hub`), a list of any of these, or
``latest``.

``latest`` is the most recently finished training under the outputs folder, whatever its kind: a single run (its
``result.json``), a k-fold ensemble (its ``manifest.json``; the folds of an unfinished one are not candidates), or a
multirun sweep (its best job). What it picked is logged.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from pathlib import Path

from omegaconf import ListConfig, OmegaConf

from catdog.errors import CheckpointError
from catdog.hub import download, is_hub_folder, is_hub_ref
from catdog.runs.layout import (
    BEST_NAME,
    CHECKPOINT_DIR,
    FOLD_PREFIX,
    MANIFEST_KIND,
    MANIFEST_NAME,
    RECORD_DIR,
    RESULT_NAME,
    SWEEP_RECORD,
    read_json,
)

log = logging.getLogger(__name__)

DEFAULT_METRIC = "val/logloss"


def _is_sweep(folder: Path) -> bool:
    return (folder / SWEEP_RECORD).is_file()


def finished_runs(outputs: Path) -> list[tuple[float, Path, str]]:
    """``(finish time, folder, kind)`` of every finished training under ``outputs``, oldest first."""
    found: dict[Path, tuple[float, str]] = {}

    def add(folder: Path, when: float, kind: str) -> None:
        if _is_sweep(folder.parent):  # a job of a sweep: the sweep is the candidate (its best job is used)
            folder, kind = folder.parent, "sweep"
        if folder not in found or when > found[folder][0]:
            found[folder] = (when, kind)

    for marker in outputs.glob(f"**/{MANIFEST_NAME}"):
        add(marker.parent, marker.stat().st_mtime, "k-fold ensemble")
    for marker in outputs.glob(f"**/{RESULT_NAME}"):
        try:
            fold = json.loads(marker.read_text()).get("fold")
        except (OSError, ValueError):
            continue
        if fold is None:  # a fold is a member of its ensemble, never a result of its own
            add(marker.parent, marker.stat().st_mtime, "run")
    return sorted(((when, folder, kind) for folder, (when, kind) in found.items()), key=lambda r: r[0])


def find_latest(outputs: str | os.PathLike) -> Path:
    outputs = Path(outputs)
    runs = finished_runs(outputs) if outputs.is_dir() else []
    if not runs:
        raise CheckpointError(
            f"ckpt=latest: no finished training under {outputs.resolve()} (a run's result.json, a k-fold "
            f"{MANIFEST_NAME}); train first or pass ckpt=PATH"
        )
    when, folder, kind = runs[-1]
    log.info(
        "ckpt=latest: %s (%s, finished %s)", folder, kind, dt.datetime.fromtimestamp(when).strftime("%Y-%m-%d %H:%M")
    )
    return folder


def _job_score(job: Path, metric: str) -> float | None:
    if (job / RESULT_NAME).is_file():
        value = read_json(job / RESULT_NAME).get(metric)
    elif (job / MANIFEST_NAME).is_file():
        value = read_json(job / MANIFEST_NAME).get("oof", {}).get(metric.removeprefix("val/"))
    else:
        return None
    return float(value) if isinstance(value, (int, float)) else None


def best_sweep_job(sweep: Path) -> Path:
    """The job of a multirun sweep with the lowest value of the sweep's ``optimized_metric``."""
    metric = OmegaConf.select(OmegaConf.load(sweep / SWEEP_RECORD), "optimized_metric") or DEFAULT_METRIC
    scored = [(s, job) for job in sweep.iterdir() if job.is_dir() and (s := _job_score(job, metric)) is not None]
    if not scored:
        raise CheckpointError(f"ckpt={sweep} is a sweep folder with no finished job ({metric} not found in any)")
    score, job = min(scored, key=lambda r: r[0])
    overrides = job / RECORD_DIR / "overrides.yaml"
    what = " ".join(OmegaConf.load(overrides)) if overrides.is_file() else ""
    log.info("sweep %s: best job %s (%s) by %s %.4f of %d", sweep, job.name, what, metric, score, len(scored))
    return job


def run_checkpoint(run: Path) -> Path:
    """A run folder's result: the checkpoint its ``result.json`` names (SWA's ``swa.ckpt``), else ``best.ckpt``."""
    result = run / RESULT_NAME
    if result.is_file():
        name = json.loads(result.read_text()).get("best_checkpoint")
        if name and (run / name).is_file():
            return run / name
    candidate = run / CHECKPOINT_DIR / BEST_NAME
    if candidate.is_file():
        return candidate
    raise CheckpointError(f"ckpt={run} is a folder without checkpoints/{BEST_NAME}")


def resolve_runs(ckpt, outputs: str | os.PathLike = "outputs") -> list[Path]:
    """The run folders ``ckpt`` names, one per entry (``latest`` resolved), for ``blend=oof``, which blends whole
    k-fold runs rather than their checkpoints."""
    items = list(ckpt) if isinstance(ckpt, (list, tuple, ListConfig)) else [ckpt]
    return [find_latest(outputs) if str(c) == "latest" else Path(str(c)).expanduser() for c in items]


def resolve_members(ckpt, outputs: str | os.PathLike = "outputs") -> list[Path]:
    """Checkpoints to predict with, for any ``ckpt=`` value (see the module docstring)."""
    if isinstance(ckpt, (list, tuple, ListConfig)):
        members = [m for c in ckpt for m in resolve_members(str(c), outputs)]
        if not members:
            raise CheckpointError("ckpt=[] names no checkpoint")
        return members
    if is_hub_ref(str(ckpt)):
        return [download(str(ckpt))]
    path = find_latest(outputs) if str(ckpt) == "latest" else Path(str(ckpt)).expanduser()
    if is_hub_folder(path):
        return [path]
    if path.is_dir() and not (path / MANIFEST_NAME).is_file() and _is_sweep(path):
        path = best_sweep_job(path)
    if path.is_dir() and (path / MANIFEST_NAME).is_file():
        manifest = read_json(path / MANIFEST_NAME)
        if manifest.get("kind") != MANIFEST_KIND or not manifest.get("members"):
            raise CheckpointError(f"{path / MANIFEST_NAME} is not a catdog ensemble manifest")
        return [path / m["checkpoint"] for m in manifest["members"]]
    if path.is_dir():
        if not (path / CHECKPOINT_DIR / BEST_NAME).is_file() and list(
            path.glob(f"{FOLD_PREFIX}*/{CHECKPOINT_DIR}/{BEST_NAME}")
        ):
            raise CheckpointError(
                f"{path} is a k-fold run without {MANIFEST_NAME}: not every fold has finished. Finish it (run the "
                f"same train command with hydra.run.dir={path}) or pass the fold checkpoints as a list"
            )
        return [run_checkpoint(path)]
    if not path.is_file():
        raise CheckpointError(f"ckpt={path}: no such file")
    return [path]
