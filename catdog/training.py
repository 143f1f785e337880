"""``train(cfg)``: compose data, model, callbacks and trainer from the Hydra config, fit, return the metric."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from catdog.data import check_data_config
from catdog.errors import ConfigError
from catdog.models import check_arch

log = logging.getLogger(__name__)


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
    check_arch(m.arch)
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
    }
    return hydra.utils.instantiate(cfg.trainer, **{**kwargs, **overrides})


def train(cfg: DictConfig) -> float | None:
    """Fit one model as configured; returns ``cfg.optimized_metric`` (for sweepers)."""
    check_train_config(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    model = build_model(cfg, datamodule.classes)
    trainer = build_trainer(cfg)
    log.info("precision %s, %s", trainer.precision, "resuming from " + cfg.ckpt_path if cfg.ckpt_path else "fresh run")
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    ckpt_cb = trainer.checkpoint_callback
    if ckpt_cb is not None and ckpt_cb.best_model_path:
        log.info(
            "best checkpoint: %s (%s %.4f)", ckpt_cb.best_model_path, ckpt_cb.monitor, float(ckpt_cb.best_model_score)
        )
        metrics["best/" + ckpt_cb.monitor] = float(ckpt_cb.best_model_score)
    out = Path(cfg.paths.output_dir)
    OmegaConf.save(OmegaConf.create(metrics), out / "metrics.yaml")
    name = cfg.get("optimized_metric")
    if not name:
        return None
    value = metrics.get("best/" + name, metrics.get(name))
    if value is None:
        raise ConfigError(f"optimized_metric={name!r} was not logged; logged metrics: {sorted(metrics)}")
    return value
