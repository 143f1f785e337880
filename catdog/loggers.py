"""Experiment loggers, laid out as lightning-hydra-template does: each file of ``conf/logger/`` holds one or more
named loggers (``tensorboard: {_target_: ...}``), ``logger=many_loggers`` composes several, and ``logger=[csv,wandb]``
picks any set on the command line. Each one writes locally and needs no network:

- ``csv``: catdog's :class:`~catdog.loggers.CSVLogger`, ``csv/metrics.csv`` in the run folder (kept whole across
  resumes);
- ``tensorboard``: event files in the run folder's ``tensorboard/``;
- ``mlflow``: a SQLite tracking store shared by every run under ``paths.log_dir`` (``mlflow.db``);
- ``wandb``: an offline W&B run in the run folder's ``wandb/offline-run-*/`` (``wandb sync`` uploads it, if wanted).

The packages a chosen logger needs are checked (:func:`check_loggers`) before any data is read.
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import hydra
from lightning_fabric.loggers.logger import rank_zero_experiment
from omegaconf import DictConfig
from pytorch_lightning.loggers import CSVLogger as _LightningCSVLogger
from pytorch_lightning.loggers import Logger
from pytorch_lightning.loggers import MLFlowLogger as _LightningMLFlowLogger
from pytorch_lightning.loggers import TensorBoardLogger as _LightningTensorBoardLogger
from pytorch_lightning.loggers import WandbLogger as _LightningWandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from catdog.errors import ConfigError

LOGGERS_EXTRA = 'pip install -e ".[loggers]"'
WANDB_EXTRA = 'pip install -e ".[wandb]"'
SQLITE_PREFIX = "sqlite:///"


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def logger_configs(cfg: DictConfig) -> dict[str, DictConfig]:
    """The loggers of ``cfg.logger`` by config key (``logger.csv``, ``logger.tensorboard``, ...); a single logger given
    directly (``logger: {_target_: ...}``) is ``logger``; none (``~logger``) or entries set to null are left out."""
    conf = cfg.get("logger")
    if not conf:
        return {}
    if "_target_" in conf:
        return {"logger": conf}
    found = {}
    for name, entry in conf.items():
        if entry is None:
            continue
        if not isinstance(entry, DictConfig) or "_target_" not in entry:
            raise ConfigError(
                f"logger.{name} must be a logger config with a _target_ (see conf/logger/), got {entry!r}"
            )
        found[f"logger.{name}"] = entry
    return found


def _needs(cls: type, conf: DictConfig) -> tuple[list[tuple[str, ...]], str]:
    """The modules ``cls`` needs (each as alternatives, any one will do) and the command that installs them."""
    kinds = {c.__name__ for c in cls.__mro__}
    if "TensorBoardLogger" in kinds:
        return [("tensorboard", "tensorboardX")], LOGGERS_EXTRA
    if "MLFlowLogger" in kinds:
        needs = [("mlflow",)]
        if str(conf.get("tracking_uri") or "").startswith("sqlite:"):
            needs += [("sqlalchemy",), ("alembic",)]  # MLflow's database store; mlflow-skinny leaves them out
        return needs, LOGGERS_EXTRA
    if "WandbLogger" in kinds:
        return [("wandb",)], WANDB_EXTRA
    return [], ""


def check_loggers(cfg: DictConfig) -> None:
    """Every configured logger can be imported and has the packages it needs; otherwise a one-line error naming the
    logger and the pip command."""
    for key, conf in logger_configs(cfg).items():
        target = str(conf.get("_target_"))
        try:
            cls = hydra.utils.get_class(target)
        except Exception:  # noqa: BLE001 - any import failure gets the same message
            raise ConfigError(f"{key}._target_={target} cannot be imported (see conf/logger/)") from None
        needs, pip = _needs(cls, conf)
        missing = [alternatives[0] for alternatives in needs if not any(map(_installed, alternatives))]
        if missing:
            raise ConfigError(f"{key} ({cls.__name__}) needs {' and '.join(missing)}: {pip} (or leave it out: ~{key})")


def build_loggers(cfg: DictConfig) -> list[Logger]:
    """The configured loggers, in the order of the config (the first is the Trainer's ``logger``)."""
    return [hydra.utils.instantiate(conf, _convert_="all") for conf in logger_configs(cfg).values()]


class TensorBoardLogger(_LightningTensorBoardLogger):
    """Lightning's TensorBoard logger (``logger=tensorboard``), named here so that every logger target of
    ``conf/logger/`` is one of catdog's."""


class MLFlowLogger(_LightningMLFlowLogger):
    """Lightning's MLflow logger; the folder of a SQLite tracking store (``sqlite:///PATH``) is made first, as SQLite
    does not make it."""

    def __init__(self, **kwargs):
        uri = str(kwargs.get("tracking_uri") or "")
        if uri.startswith(SQLITE_PREFIX) and uri != SQLITE_PREFIX + ":memory:":
            Path(uri[len(SQLITE_PREFIX) :]).parent.mkdir(parents=True, exist_ok=True)
        super().__init__(**kwargs)


class WandbLogger(_LightningWandbLogger):
    """Lightning's W&B logger, except that each fit is a W&B run of its own: the run is finished when the fit ends
    (k-fold folds and sweep jobs share one process, and Lightning would log them all into the first run). An unset
    ``anonymous``, which wandb now only warns about, is not passed on."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)

    def finalize(self, status: str) -> None:
        super().finalize(status)
        if self._experiment is not None:
            self._experiment.finish(exit_code=0 if status == "success" else 1)


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
