"""``train(cfg)``, what ``train.py`` runs: check the config (:mod:`catdog.validation`), train one model
(:mod:`catdog.fit`) or every fold (:mod:`catdog.kfold`), and return the metric a sweeper optimizes.

One run writes into its output folder: ``checkpoints/best.ckpt`` and ``last.ckpt``, ``split.csv`` (which image was
used for what), ``oof.csv`` (the best checkpoint's predictions on its validation images) and ``result.json``. With
``data.folds=K`` and no ``data.fold``, every fold is trained in ``fold_<i>/`` and the ensemble is assembled
(:func:`catdog.ensemble.finalize_ensemble`). ``tune=lr_find`` runs a learning-rate range test instead
(:mod:`catdog.lr_find`).
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from catdog.distributed import is_writer
from catdog.errors import ConfigError
from catdog.fit import fit_one
from catdog.kfold import train_kfold
from catdog.lr_find import lr_find
from catdog.runs.lock import holding_output_folder
from catdog.validation import check_train_config

log = logging.getLogger(__name__)


@holding_output_folder  # one process per run folder (catdog.runs.lock; held already when started by train.py)
def train(cfg: DictConfig) -> float | None:
    """Fit as configured (one model, or all folds); returns ``cfg.optimized_metric`` for sweepers."""
    if not is_writer(cfg):  # another process of a distributed run: its info lines would repeat rank zero's
        logging.getLogger("catdog").setLevel(logging.WARNING)
    check_train_config(cfg)
    if cfg.get("tune") == "lr_find":
        lr_find(cfg)
        return None
    if cfg.data.folds and cfg.data.fold is None:
        summary = train_kfold(cfg)
        if summary is None:  # another process of a distributed run: rank zero assembled the ensemble
            return None
        metrics = {f"val/{k}": v for k, v in summary["oof"].items()}
    else:
        metrics = fit_one(cfg, record=cfg)
    name = cfg.get("optimized_metric")
    if not name:
        return None
    value = metrics.get(name)
    if value is None:
        raise ConfigError(f"optimized_metric={name!r} was not measured; available: {sorted(metrics)}")
    return float(value)
