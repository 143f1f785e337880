"""``train(cfg)``: compose data, model, callbacks and trainer from the Hydra config, fit, return the metric.

One run writes into its output folder: ``checkpoints/best.ckpt`` and ``last.ckpt``, ``split.csv`` (which image was
used for what), ``oof.csv`` (the best checkpoint's predictions on its validation images) and ``result.json``. With
``data.folds=K`` and no ``data.fold``, every fold is trained in ``fold_<i>/`` and the ensemble is assembled
(:func:`catdog.ensemble.finalize_ensemble`).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from catdog.checkpoints import SafeCheckpointIO, read_checkpoint
from catdog.data import check_data_config
from catdog.ensemble import RESULT_NAME, finalize_ensemble, write_oof, write_split
from catdog.errors import CheckpointError, ConfigError
from catdog.fileio import atomic_write_text
from catdog.models import check_network_args, check_weights_available
from catdog.module import check_training_args

log = logging.getLogger(__name__)

KFOLD_SETTINGS = "kfold.json"


def resolve_precision(precision: str | None, accelerator: str = "auto") -> str:
    """``None`` -> bf16-mixed on a CUDA GPU that supports it, 16-mixed on other CUDA GPUs, 32-true elsewhere."""
    if precision is not None:
        return str(precision)
    use_cuda = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if not use_cuda:
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def check_train_config(cfg: DictConfig) -> None:
    """Fail on bad values before any data is read or model is built."""
    d, m, t = cfg.data, cfg.model, cfg.trainer
    check_data_config(
        image_size=d.image_size, batch_size=d.batch_size, val_fraction=d.val_fraction, folds=d.folds, fold=d.fold,
        on_bad_image=d.on_bad_image, verify=d.verify, eval_batch_size=d.get("eval_batch_size"),
    )  # fmt: skip
    check_network_args(m.arch, m.get("head", "small"), m.get("width", 1.0), m.get("weights"), m.get("dropout", 0.5))
    check_training_args(m.get("optimizer"), m.get("finetune"), m.get("scheduler"))
    check_weights_available(m.arch, m.get("weights"))
    max_epochs = t.get("max_epochs")
    if max_epochs is not None and (not isinstance(max_epochs, int) or max_epochs == 0 or max_epochs < -1):
        raise ConfigError(f"trainer.max_epochs must be a positive integer (or -1 for no limit), got {max_epochs!r}")


def build_datamodule(cfg: DictConfig):
    return hydra.utils.instantiate(cfg.data, _convert_="all")


def build_model(cfg: DictConfig, classes: list[str]):
    return hydra.utils.instantiate(
        cfg.model,
        classes=classes,
        image_size=cfg.data.image_size,
        crop_pct=cfg.data.crop_pct,
        _recursive_=False,
        _convert_="all",
    )


def build_trainer(cfg: DictConfig, **overrides) -> pl.Trainer:
    """The configured Trainer with its callbacks and logger; ``overrides`` replace any of its arguments."""
    kwargs = {
        "callbacks": [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None],
        "logger": hydra.utils.instantiate(cfg.logger) if cfg.get("logger") else False,
        "precision": resolve_precision(cfg.trainer.get("precision"), cfg.trainer.get("accelerator", "auto")),
        "plugins": [SafeCheckpointIO()],
    }
    return hydra.utils.instantiate(cfg.trainer, **{**kwargs, **overrides})


def _resume_path(cfg: DictConfig, out_dir: Path) -> str | None:
    """An explicit ``ckpt_path``, else this folder's own ``last.ckpt`` (a run restarted in its folder resumes)."""
    if cfg.get("ckpt_path"):
        path = Path(cfg.ckpt_path).expanduser()
        if not path.is_file():
            raise ConfigError(f"ckpt_path={path}: no such checkpoint to resume from")
        return str(path)
    last = out_dir / "checkpoints" / "last.ckpt"
    return str(last) if last.is_file() else None


RESUME_KEYS = ("arch", "classes", "head", "head_hidden", "width")


def check_resume_matches(path: str, model) -> None:
    """Refuse to resume from a checkpoint of another network or other classes, naming both sides."""
    saved = read_checkpoint(path)["hyper_parameters"]
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r} vs config {model.hparams[k]!r}"
        for k in RESUME_KEYS
        if saved.get(k) != model.hparams[k]
    ]
    if diffs:
        raise CheckpointError(f"cannot resume from {path}, it does not match this run: " + "; ".join(diffs))


def fit_one(cfg: DictConfig) -> dict:
    """Train one model (one fold, or the single split) in ``cfg.paths.output_dir``; return its result record."""
    out_dir = Path(cfg.paths.output_dir)
    if (out_dir / RESULT_NAME).is_file():
        raise ConfigError(f"{out_dir} already holds a finished run ({RESULT_NAME}); use a new output folder")
    start = time.time()
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_split(out_dir / "split.csv", datamodule)
    model = build_model(cfg, datamodule.classes)
    trainer = build_trainer(cfg)
    resume = _resume_path(cfg, out_dir)
    if resume:
        check_resume_matches(resume, model)
    log.info("precision %s; %s", trainer.precision, f"resuming from {resume}" if resume else "fresh run")
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume)

    ckpt_cb = trainer.checkpoint_callback
    best = ckpt_cb.best_model_path if ckpt_cb is not None and ckpt_cb.best_model_path else None
    if trainer.interrupted:
        log.warning(
            "interrupted; to resume, run the same command with hydra.run.dir=%s (or ckpt_path=%s)",
            out_dir, out_dir / "checkpoints" / "last.ckpt",
        )  # fmt: skip
        raise KeyboardInterrupt
    if trainer.val_dataloaders is not None and not trainer.fast_dev_run:
        # Score the best checkpoint (not the last epoch) and keep its predictions as out-of-fold predictions.
        trainer.validate(model, datamodule=datamodule, ckpt_path=best, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    result = {
        "fold": cfg.data.get("fold"),
        "best_checkpoint": os.path.relpath(best, out_dir) if best else None,
        "val/logloss": metrics.get("val/logloss"),
        "val/acc": metrics.get("val/acc"),
        "epochs": int(trainer.current_epoch),
        "wall_time_s": round(time.time() - start, 1),
        "classes": datamodule.classes,
        "metrics": metrics,
    }
    if model.last_validation is not None:
        write_oof(out_dir / "oof.csv", datamodule, *model.last_validation, fold=cfg.data.get("fold"))
    atomic_write_text(out_dir / RESULT_NAME, json.dumps(result, indent=2) + "\n")
    if best:
        log.info("best checkpoint %s: val/logloss %.4f, val/acc %.4f", best, result["val/logloss"], result["val/acc"])
    return result


# Settings that do not change what a fold computes: a k-fold run may be resumed with other values.
_RESUME_FREE = {
    "data": {"num_workers", "eval_batch_size", "verify", "cache", "cache_dir", "demo"},
    "trainer": {"default_root_dir", "enable_progress_bar", "enable_model_summary", "log_every_n_steps"},
}


def _check_kfold_settings(cfg: DictConfig, run_dir: Path) -> None:
    """A k-fold folder restarted to resume must hold the same experiment (data, model, trainer, seed)."""

    def group(name: str, resolve: bool = True) -> dict:
        values = OmegaConf.to_container(cfg[name], resolve=resolve)
        return {k: v for k, v in values.items() if k not in _RESUME_FREE.get(name, ())}

    settings = {"data": group("data"), "model": group("model"), "trainer": group("trainer", False), "seed": cfg.seed}
    settings = json.loads(json.dumps(settings, default=str))
    path = run_dir / KFOLD_SETTINGS
    if path.is_file():
        before = json.loads(path.read_text())
        changed = sorted(
            f"{group}.{k}" for group in settings if isinstance(settings[group], dict)
            for k in set(settings[group]) | set(before.get(group, {}))
            if settings[group].get(k) != before.get(group, {}).get(k)
        ) + (["seed"] if before.get("seed") != settings["seed"] else [])  # fmt: skip
        if changed:
            raise ConfigError(
                f"{run_dir} holds a k-fold run of another configuration (differs in {', '.join(changed)}); "
                "resume it with the same settings or use a new output folder"
            )
    else:
        atomic_write_text(path, json.dumps(settings, indent=2) + "\n")


def train_kfold(cfg: DictConfig) -> dict:
    """Train every fold in ``fold_<i>/`` (skipping finished folds, resuming an interrupted one), then assemble."""
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _check_kfold_settings(cfg, run_dir)
    for fold in range(cfg.data.folds):
        fold_dir = run_dir / f"fold_{fold}"
        if (fold_dir / RESULT_NAME).is_file():
            log.info("fold %d already finished in %s; skipping it", fold, fold_dir)
            continue
        fold_cfg = copy.deepcopy(cfg)
        with open_dict(fold_cfg):
            fold_cfg.data.fold = fold
            fold_cfg.paths.output_dir = str(fold_dir)
            fold_cfg.ckpt_path = None
        log.info("training fold %d of %d in %s", fold + 1, cfg.data.folds, fold_dir)
        fit_one(fold_cfg)
    return finalize_ensemble(run_dir, expected_folds=cfg.data.folds)


def train(cfg: DictConfig) -> float | None:
    """Fit as configured (one model, or all folds); returns ``cfg.optimized_metric`` for sweepers."""
    check_train_config(cfg)
    if cfg.data.folds and cfg.data.fold is None:
        summary = train_kfold(cfg)
        metrics = {f"val/{k}": v for k, v in summary["oof"].items()}
    else:
        metrics = fit_one(cfg)
    name = cfg.get("optimized_metric")
    if not name:
        return None
    value = metrics.get(name)
    if value is None:
        raise ConfigError(f"optimized_metric={name!r} was not measured; available: {sorted(metrics)}")
    return float(value)
