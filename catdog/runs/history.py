"""A run's metric history stays whole across resumes.

``csv/metrics.csv``: Lightning's ``CSVLogger`` deletes it when it finds the folder non-empty, so a resumed run would
lose every row logged before the interruption. :class:`catdog.loggers.CSVLogger` keeps the file and appends to it;
:func:`trim_history` first drops the rows that the resumed run is about to log again, and a run continued from
another run's checkpoint copies that run's rows (:func:`continue_history`).
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from catdog.fileio import atomic_write_text
from catdog.loggers import CSVLogger

log = logging.getLogger(__name__)


def csv_logger(loggers) -> CSVLogger | None:
    """catdog's CSV logger among ``loggers`` (a Trainer's ``loggers`` list, one logger, or False), if any."""
    candidates = loggers if isinstance(loggers, (list, tuple)) else [loggers]
    return next((logger for logger in candidates if isinstance(logger, CSVLogger)), None)


def metrics_file(loggers) -> Path | None:
    """The ``metrics.csv`` that catdog's CSV logger among ``loggers`` (see :func:`csv_logger`) writes; None without
    one."""
    logger = csv_logger(loggers)
    return Path(logger.log_dir) / ExperimentWriter.NAME_METRICS_FILE if logger is not None else None


def _row_kept(row: dict[str, str], epoch: int, step: int) -> bool:
    """Whether a row was logged before a checkpoint saved in ``epoch`` after ``step`` optimizer steps (an end-of-epoch
    checkpoint follows its epoch's rows, logged at step ``step - 1``)."""
    if row.get("epoch"):
        return int(float(row["epoch"])) <= epoch and int(float(row.get("step") or 0)) < step
    return int(float(row.get("step") or 0)) < step  # rows without an epoch (learning rates) are logged at step start


def read_history(path: Path, epoch: int | None, step: int | None) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of ``path`` logged up to a checkpoint at (``epoch``, ``step``); no checkpoint: no rows."""
    if not path.is_file():
        return [], []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        header = list(reader.fieldnames or [])
    if epoch is None or step is None:
        return header, []
    return header, [r for r in rows if _row_kept(r, epoch, step)]


def _write_history(path: Path, header: list[str], rows: list[dict[str, str]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def trim_history(path: Path | None, ckpt: dict | None, source: Path | None = None) -> int:
    """Make ``path`` hold exactly the history up to checkpoint ``ckpt`` (None: a fresh start, no rows): rows logged
    after it (an interrupted epoch) are dropped, since the resumed run logs them again. With ``source`` (the
    ``metrics.csv`` of the run the checkpoint came from), that history is copied in. Returns the rows kept."""
    if path is None:
        return 0
    epoch = int(ckpt["epoch"]) if ckpt is not None else None
    step = int(ckpt["global_step"]) if ckpt is not None else None
    header, rows = read_history(source if source is not None else path, epoch, step)
    if rows or path.exists():
        _write_history(path, header, rows)
    return len(rows)


def continue_history(trainer: pl.Trainer, out_dir: Path, run: Path | None, ckpt) -> None:
    """Keep ``metrics.csv`` whole across a resume: this folder's rows up to the checkpoint ``ckpt``; resuming from
    another run's checkpoint (``run``, on the same split), that run's rows, so the new folder holds the whole
    history. Only catdog's CSV logger (among any others) keeps such a history; without one, nothing is trimmed."""
    source = None if run == out_dir.resolve() else run
    path = metrics_file(trainer.loggers)
    if path is None:
        if source is not None:
            log.info("continuing %s in %s", source, out_dir)
        if ckpt is not None:
            log.info(
                "no CSV logger in this run (logger.csv): the metric history is not trimmed to the checkpoint%s",
                f" nor copied from {source}" if source is not None else "",
            )  # fmt: skip
        return
    if source is not None:
        log.info("continuing %s in %s (its metric history copied)", source, out_dir)
    theirs = None
    if source is not None and path.is_relative_to(out_dir):
        theirs = source / path.relative_to(out_dir)
    trim_history(path, ckpt, source=theirs)
