"""Hydra callbacks of a multirun (conf/hydra/default.yaml): the sweep folder's lock, and the summary of every job
(with a sweep over ``data.fold``, the folds assembled into one ensemble and its report)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from catdog.data.hf_data import data_root
from catdog.ensemble import finalize_ensemble
from catdog.report.build import safe_report, write_kfold_report, write_sweep_report
from catdog.runs.layout import FOLD_PREFIX, RESULT_NAME
from catdog.runs.lock import FolderInUseError, claim, release
from catdog.runs.sweep import write_sweep_summary

log = logging.getLogger(__name__)


class SweepFolderLock(Callback):
    """Holds the lock of a multirun's sweep folder from before Hydra writes there (``multirun.yaml``) until the
    sweep's summary is written (conf/hydra/default.yaml lists it before :class:`SweepSummary`: Hydra calls the end
    hooks in reverse order). Each job holds its own folder's lock as well."""

    def on_multirun_start(self, config, **kwargs) -> None:
        try:
            claim(config.hydra.sweep.dir)
        except FolderInUseError as exc:
            logging.getLogger("catdog").error("%s", exc)
            sys.exit(2)  # Hydra turns an exception raised in a callback into a warning and goes on

    def on_multirun_end(self, config, **kwargs) -> None:
        release(config.hydra.sweep.dir)


class SweepSummary(Callback):
    """At the end of ``train.py -m ...``: ``summary.csv``/``summary.md`` in the sweep folder; with a sweep over
    ``data.fold`` the folds are assembled into an ensemble there, as a single k-fold run would be."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        folds = OmegaConf.select(config, "data.folds")
        fold_runs = list(sweep_dir.glob(f"{FOLD_PREFIX}*/{RESULT_NAME}"))
        if folds and fold_runs:
            try:
                finalize_ensemble(sweep_dir, expected_folds=int(folds))
            except Exception as exc:  # noqa: BLE001 - a summary must not hide the sweep's results
                log.warning("could not assemble the k-fold ensemble in %s: %s", sweep_dir, exc)
            else:
                if OmegaConf.select(config, "report", default=True):
                    # with data.hf the images lie where the dataset was written out (data_root finds that folder)
                    safe_report("k-fold", lambda: write_kfold_report(sweep_dir, data_root(config.data)))
        if write_sweep_summary(sweep_dir) is not None:
            metric = OmegaConf.select(config, "optimized_metric") or "val/logloss"
            safe_report("sweep", write_sweep_report, sweep_dir, metric)
