"""A run folder stays whole: one folder per run, its metric history kept across resumes, its configuration record
written only by a run that trains there, and the command that resumes it.

- ``csv/metrics.csv``: Lightning's ``CSVLogger`` deletes it when it finds the folder non-empty, so a resumed run
  would lose every row logged before the interruption. :class:`CSVLogger` keeps the file and appends to it;
  :func:`trim_history` first drops the rows that the resumed run is about to log again.
- ``.hydra/``: Hydra writes its record before the task starts (even for a run that is then refused); catdog's Hydra
  config turns that off (``hydra.output_subdir: null``) and :func:`save_config_record` writes it once the run has
  been accepted (predict and export: once the process holds the folder, see :mod:`catdog.run_lock`), keeping a
  replaced record beside the new one.
"""

from __future__ import annotations

import csv
import io
import shlex
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from lightning_fabric.loggers.logger import rank_zero_experiment
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import CSVLogger as _LightningCSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from catdog.fileio import atomic_write_text

RECORD_DIR = ".hydra"


class _KeepingWriter(ExperimentWriter):
    """Appends to an existing ``metrics.csv`` (continuing its header) instead of deleting it."""

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if path.is_file():
            with path.open(newline="") as f:
                self.metrics_keys = list(csv.DictReader(f).fieldnames or [])


class CSVLogger(_LightningCSVLogger):
    """Lightning's CSV logger, except that it never deletes the metrics a run folder already holds."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment


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


def task_overrides() -> list[str]:
    """The command-line overrides of this Hydra job ([] outside Hydra)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def resume_command(run_dir: Path, overrides: list[str] | None = None, seed: int | None = None) -> str:
    """The command that resumes the run in ``run_dir``: the same overrides, in the same folder, with the ``seed`` the
    run used in place of a ``seed=`` override (``seed=null`` draws a new one)."""
    keep = [o for o in (task_overrides() if overrides is None else overrides) if not o.startswith("hydra.run.dir=")]
    if seed is not None:
        keep = [f"seed={seed}" if o.startswith("seed=") else o for o in keep]
    args = [*keep, f"hydra.run.dir={run_dir}"]
    return " ".join(["python", "train.py", *(shlex.quote(a) for a in args)])


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
