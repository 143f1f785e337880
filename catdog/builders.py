"""What a training run is built from, composed from the Hydra config: the datamodule, the model (pretrained weights,
or a ``model.init`` checkpoint's), and the Trainer with its callbacks, loggers and precision. The preprocessing left
null in the config is filled in from the starting weights first (:func:`resolve_preprocessing`)."""

from __future__ import annotations

import logging

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, open_dict
from pytorch_lightning.callbacks import LearningRateMonitor, ModelSummary, ProgressBar

from catdog.callbacks import interactive, progress_bar
from catdog.checkpoints import SafeCheckpointIO
from catdog.loggers import build_loggers
from catdog.models.class_weights import resolve_class_weights
from catdog.models.distillation import active_distill
from catdog.models.networks import check_input_size
from catdog.models.optim import plain
from catdog.models.precision import resolve_precision, uses_cuda
from catdog.models.weights import DEFAULT_PREPROCESSING, eval_preprocessing
from catdog.runs.resume import load_init, read_init

log = logging.getLogger(__name__)


def build_datamodule(cfg: DictConfig):
    resolve_preprocessing(cfg)
    return hydra.utils.instantiate(cfg.data, _convert_="all")


def resolve_preprocessing(cfg: DictConfig) -> None:
    """``data.image_size``, ``data.crop_pct`` and ``data.interpolation`` left null take the values of the pretrained
    weights' own eval transforms (torchvision's ``weights.transforms()``: 384 px for EfficientNetV2-S, bicubic for
    EfficientNet-B0, ...), or torchvision's classic 224 px crop of a 256 px bilinear resize without weights."""
    d = cfg.data
    missing = [k for k in ("image_size", "crop_pct", "interpolation") if d.get(k) is None]
    if not missing:
        return
    preset = _preprocessing(cfg)
    with open_dict(cfg):
        for key in missing:
            d[key] = preset[key]
    log.info(
        "preprocessing of %s: %s", cfg.model.arch, ", ".join(f"data.{k}={d[k]}" for k in missing)
    )  # fmt: skip


def _preprocessing(cfg: DictConfig, init: dict | None = None) -> dict:
    """What the starting weights expect: a ``model.init`` checkpoint's own preprocessing (``init``: that checkpoint,
    if already read), else that of the pretrained weights (:func:`catdog.models.weights.eval_preprocessing`)."""
    if cfg.model.get("init"):
        hp = (init or read_init(cfg.model.init))["hyper_parameters"]
        return {k: hp.get(k, DEFAULT_PREPROCESSING[k]) for k in DEFAULT_PREPROCESSING}
    return eval_preprocessing(cfg.model.arch, pretrained=cfg.model.get("weights") is not None)


def build_model(cfg: DictConfig, classes: list[str], train_labels: list[int] | None = None):
    """The configured model; with ``model.init=PATH``, holding that checkpoint's weights (no download).
    ``train_labels``: the training split's labels, which ``model.class_weights=auto`` is computed from."""
    resolve_preprocessing(cfg)
    init = cfg.model.get("init")
    init_ckpt = read_init(init) if init else None
    preset = _preprocessing(cfg, init_ckpt)
    model = hydra.utils.instantiate(
        {k: v for k, v in plain(cfg.model).items() if k != "init"},
        classes=classes,
        image_size=cfg.data.image_size,
        crop_pct=cfg.data.crop_pct,
        interpolation=cfg.data.get("interpolation") or "bilinear",
        mean=preset["mean"],
        std=preset["std"],
        class_weights=resolve_class_weights(cfg.model.get("class_weights"), train_labels, classes),
        distill=active_distill(plain(cfg.get("distill"))),
        **({"weights": None, "pretrained": str(init)} if init else {}),
        _recursive_=False,
        _convert_="all",
    )
    if init:
        load_init(model, init, init_ckpt)
        log.info("model.init: weights of %s", init)
    return model


_described: set[str] = set()


def check_network(cfg: DictConfig, model) -> None:
    """Print the stage list once per architecture; make sure the network takes the configured image sizes."""
    if model.net.arch not in _described:
        _described.add(model.net.arch)
        log.info("%s", model.net.describe())
    progressive = cfg.data.get("progressive")
    sizes = [cfg.data.image_size] + ([progressive["start_size"]] if progressive else [])
    check_input_size(model.net, sizes)


def build_trainer(cfg: DictConfig, **overrides) -> pl.Trainer:
    """The configured Trainer with its callbacks and loggers (``conf/logger/``: any number of them, or none);
    ``overrides`` replace any of its arguments. Without a logger, the learning-rate monitor (which has nowhere to
    write) is left out. Progress is a bar in a terminal and plain log lines otherwise; so is the model summary."""
    if "logger" not in overrides:
        overrides["logger"] = build_loggers(cfg) or False
    if "callbacks" not in overrides:
        callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
        if not overrides["logger"]:
            callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
        if cfg.trainer.get("enable_progress_bar", True) and not any(isinstance(c, ProgressBar) for c in callbacks):
            callbacks.append(progress_bar())
        summary = cfg.trainer.get("enable_model_summary", True) and not interactive()
        if summary and not any(isinstance(c, ModelSummary) for c in callbacks):
            callbacks.append(ModelSummary())  # a plain table: rich's box drawing is for terminals
        overrides["callbacks"] = callbacks
    on_gpu = uses_cuda(str(cfg.trainer.get("accelerator") or "auto"))
    if cfg.trainer.get("sync_batchnorm") and "sync_batchnorm" not in overrides and not on_gpu:
        overrides["sync_batchnorm"] = False  # torch's SyncBatchNorm runs on GPUs only
    kwargs = {
        "precision": resolve_precision(cfg.trainer.get("precision"), cfg.trainer.get("accelerator", "auto")),
        "plugins": [SafeCheckpointIO()],
        # The datamodule shards its own samplers across processes (Lightning's wrapper would reshuffle the epoch
        # order with a seed of its own): N processes then step through the one-process order of N x the batch.
        "use_distributed_sampler": False,
    }
    # trainer.budget_minutes is catdog's (catdog.budget), not a Trainer argument
    trainer_cfg = {k: v for k, v in plain(cfg.trainer).items() if k != "budget_minutes"}
    return hydra.utils.instantiate(trainer_cfg, **{**kwargs, **overrides})


def build_probe_trainer(cfg: DictConfig, callback: pl.Callback, **overrides) -> pl.Trainer:
    """A Trainer like the run's for a short probe inside this process (the budget's step timing, the range test):
    one process of the run's device, ``callback`` its only callback, no logger, checkpoint, progress bar, model
    summary or sanity check; ``overrides`` set the rest (its length, validation batches)."""
    return build_trainer(
        cfg, callbacks=[callback], logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, devices=1, num_nodes=1, strategy="auto", **overrides,
    )  # fmt: skip
