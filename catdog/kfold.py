"""``data.folds=K`` without ``data.fold``: every fold trained in ``fold_<i>/`` of one run folder (finished
folds skipped, an interrupted one resumed, the folder's settings kept in ``kfold.json``), then assembled into one
ensemble (:func:`catdog.ensemble.finalize_ensemble`) and its report."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from omegaconf import DictConfig, open_dict

from catdog.data.hf_data import data_root
from catdog.distributed import is_writer
from catdog.ensemble import finalize_ensemble
from catdog.fit import fit_one
from catdog.report.build import safe_report, write_kfold_report
from catdog.runs.layout import RESULT_NAME, fold_dir, read_json, save_config_record
from catdog.runs.resume import check_kfold_settings

log = logging.getLogger(__name__)


def train_kfold(cfg: DictConfig) -> dict:
    """Train every fold in ``fold_<i>/`` (skipping finished folds, resuming an interrupted one), then assemble."""
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    writer = is_writer(cfg)
    check_kfold_settings(cfg, run_dir, write=writer)
    if writer:
        save_config_record(cfg, run_dir)
    if cfg.trainer.get("budget_minutes") is not None:
        log.info(
            "trainer.budget_minutes=%g is each fold's budget (%d folds: about %g min in all); the first fold plans "
            "the epochs and every fold trains that plan", cfg.trainer.budget_minutes, cfg.data.folds,
            cfg.trainer.budget_minutes * cfg.data.folds,
        )  # fmt: skip
    for fold in range(cfg.data.folds):
        folder = fold_dir(run_dir, fold)
        if (folder / RESULT_NAME).is_file():
            log.info("fold %d already finished in %s; skipping it", fold, folder)
            continue
        fold_cfg = copy.deepcopy(cfg)
        with open_dict(fold_cfg):
            fold_cfg.data.fold = fold
            fold_cfg.paths.output_dir = str(folder)
            fold_cfg.ckpt_path = None
        log.info("training fold %d of %d in %s", fold + 1, cfg.data.folds, folder)
        fit_one(fold_cfg, resume_dir=run_dir, plan=first_fold_plan(run_dir) if fold > 0 else None)
    if not writer:
        return None
    summary = finalize_ensemble(run_dir, expected_folds=cfg.data.folds)
    if cfg.get("report", True):
        safe_report("k-fold", write_kfold_report, run_dir, data_root(cfg.data))
    return summary


def first_fold_plan(run_dir: Path) -> dict | None:
    """The time budget's plan the first fold trained (its ``result.json``), for the later folds; None without."""
    return (read_json(fold_dir(run_dir, 0) / RESULT_NAME) or {}).get("budget_plan")
