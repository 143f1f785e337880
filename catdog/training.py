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
import random
import time
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.accelerators import CPUAccelerator
from pytorch_lightning.callbacks import LearningRateMonitor, ModelSummary, ProgressBar, StochasticWeightAveraging

from catdog.averaging import check_averaging
from catdog.budget import PLAN_KEY, check_budget, fit_to_budget
from catdog.callbacks import interactive, progress_bar
from catdog.checkpoints import SWA_NAME, SafeCheckpointIO, read_checkpoint, save_calibration
from catdog.data.datamodule import check_data_config
from catdog.distributed import check_distributed, is_writer, shared_seed
from catdog.ensemble import RESULT_NAME, finalize_ensemble, split_text, write_oof
from catdog.errors import ConfigError
from catdog.fileio import atomic_write_text
from catdog.loggers import build_loggers, check_loggers
from catdog.models.calibration import calibrated_probs, calibration_record
from catdog.models.module import check_training_args
from catdog.models.networks import (
    check_arch,
    check_blocks,
    check_input_size,
    check_network_args,
    fixed_input_size,
)
from catdog.models.optim import plain
from catdog.models.precision import cpu_bf16_instructions, resolve_precision, uses_cuda
from catdog.models.weights import DEFAULT_PREPROCESSING, check_weights_available, eval_preprocessing
from catdog.report.build import safe_report, unfreeze_epoch, write_kfold_report, write_run_report
from catdog.resume import (
    check_init,
    check_init_split,
    check_resume,
    check_same_split,
    checkpoint_run,
    load_init,
    read_init,
    run_settings,
)
from catdog.run_folder import metrics_file, resume_command, save_config_record, trim_history
from catdog.run_lock import holding_output_folder

log = logging.getLogger(__name__)

KFOLD_SETTINGS = "kfold.json"


def check_train_config(cfg: DictConfig) -> None:
    """Fail on bad values before any data is read or model is built."""
    d, m, t = cfg.data, cfg.model, cfg.trainer
    check_data_config(
        image_size=d.image_size, batch_size=d.batch_size, val_fraction=d.val_fraction, folds=d.folds, fold=d.fold,
        on_bad_image=d.on_bad_image, verify=d.verify, eval_batch_size=d.get("eval_batch_size"),
        progressive=plain(d.get("progressive")), augment=plain(d.get("augment")), crop_pct=d.crop_pct,
        interpolation=d.get("interpolation", "bilinear"), pipeline=d.get("pipeline", "workers"),
    )  # fmt: skip
    check_network_args(m.arch, m.get("head", "small"), m.get("width", 1.0), m.get("weights"), m.get("dropout", 0.5))
    check_blocks(m.arch, (m.get("finetune") or {}).get("blocks", -1), d.image_size)
    if d.get("progressive") and fixed_input_size(m.arch):
        raise ConfigError(
            f"model.arch={m.arch} takes one input size (it is built for data.image_size={d.image_size}), so it "
            "cannot train with progressive resizing: set data.progressive=null"
        )
    check_training_args(
        m.get("optimizer"), m.get("finetune"), m.get("scheduler"), m.get("scheduler_interval"), m.get("mixing")
    )
    check_averaging(cfg)
    check_loggers(cfg)
    check_budget(cfg)
    if m.get("init"):
        check_init(cfg)
    else:
        check_weights_available(m.arch, m.get("weights"))
    max_epochs = t.get("max_epochs")
    if max_epochs is not None and (not isinstance(max_epochs, int) or max_epochs == 0 or max_epochs < -1):
        raise ConfigError(f"trainer.max_epochs must be a positive integer (or -1 for no limit), got {max_epochs!r}")


def build_datamodule(cfg: DictConfig):
    resolve_preprocessing(cfg)
    return hydra.utils.instantiate(cfg.data, _convert_="all")


def resolve_preprocessing(cfg: DictConfig) -> None:
    """``data.image_size``, ``data.crop_pct`` and ``data.interpolation`` left null take the values of the pretrained
    weights' own eval transforms (torchvision's ``weights.transforms()``: 384 px for EfficientNetV2-S, bicubic for
    EfficientNet-B0, ...), or torchvision's classic 224 px crop of a 256 px bilinear resize without weights."""
    d = cfg.data
    check_arch(cfg.model.arch)
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


def build_model(cfg: DictConfig, classes: list[str]):
    """The configured model; with ``model.init=PATH``, holding that checkpoint's weights (no download)."""
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
        **({"weights": None, "pretrained": str(init)} if init else {}),
        _recursive_=False,
        _convert_="all",
    )
    if init:
        load_init(model, init, init_ckpt)
        log.info("model.init: weights of %s", init)
    return model


_described: set[str] = set()


def _check_network(cfg: DictConfig, model) -> None:
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


def _resume_path(cfg: DictConfig, out_dir: Path) -> str | None:
    """An explicit ``ckpt_path``, else this folder's own ``last.ckpt`` (a run restarted in its folder resumes)."""
    if cfg.get("ckpt_path"):
        path = Path(cfg.ckpt_path).expanduser()
        if cfg.model.get("init"):
            raise ConfigError(
                f"ckpt_path={path} resumes a run (its weights, optimizer and schedule) and model.init={cfg.model.init} "
                "starts a new one from a checkpoint's weights: set one of them"
            )
        if not path.is_file():
            raise ConfigError(f"ckpt_path={path}: no such checkpoint to resume from")
        return str(path)
    last = out_dir / "checkpoints" / "last.ckpt"
    return str(last) if last.is_file() else None


def _continue_history(trainer: pl.Trainer, out_dir: Path, run: Path | None, ckpt) -> None:
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


def _swa(trainer: pl.Trainer) -> StochasticWeightAveraging | None:
    return next((c for c in trainer.callbacks if isinstance(c, StochasticWeightAveraging)), None)


def score_checkpoint(cfg: DictConfig, model, datamodule, ckpt_path: str | None) -> None:
    """Validate ``ckpt_path`` (or the model's current weights) with a bare Trainer: no callback may swap weights in
    (weight averaging does during validation) or write files. Leaves the predictions in ``model.last_validation``."""
    scorer = build_trainer(
        cfg, callbacks=[], logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    scorer.validate(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)


def fit_one(cfg: DictConfig, record: DictConfig | None = None, resume_dir: Path | None = None) -> dict:
    """Train one model (one fold, or the single split) in ``cfg.paths.output_dir``; return its result record.
    ``record``: the configuration to save as the folder's ``.hydra`` record once the run is accepted; ``resume_dir``:
    the folder a resume command names (a k-fold run's root; default the output folder)."""
    out_dir = Path(cfg.paths.output_dir)
    if (out_dir / RESULT_NAME).is_file():
        raise ConfigError(f"{out_dir} already holds a finished run ({RESULT_NAME}); use a new output folder")
    start = time.time()
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    out_dir.mkdir(parents=True, exist_ok=True)
    split = split_text(datamodule)
    model = build_model(cfg, datamodule.classes)
    _check_network(cfg, model)
    trainer = build_trainer(cfg)
    resume = _resume_path(cfg, out_dir)
    ckpt = read_checkpoint(resume) if resume else None
    source = checkpoint_run(resume) if resume else None
    plan = fit_to_budget(cfg, trainer, model, datamodule, ckpt, start)  # before the checks: it sets max_epochs
    if resume:
        check_resume(resume, ckpt, model, cfg)
        check_same_split(resume, source, out_dir, split)
    elif cfg.model.get("init"):
        check_init_split(cfg.model.init, [os.path.relpath(p, datamodule.root) for p in datamodule.val_set.paths])
    model.run_settings = {**run_settings(cfg), **({PLAN_KEY: plan} if plan else {})}
    if is_writer(cfg):  # the other processes of a distributed run compute the same things and write nothing
        atomic_write_text(out_dir / "split.csv", split)
        _continue_history(trainer, out_dir, source, ckpt)
        if record is not None:
            save_config_record(record, out_dir)
    on_cpu = isinstance(trainer.accelerator, CPUAccelerator)
    log.info(
        "precision %s%s; %s", trainer.precision, f" (CPU bf16: {cpu_bf16_instructions()})" if on_cpu else "",
        f"resuming from {resume}" if resume else "fresh run",
    )  # fmt: skip
    fit_start = time.time()
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume)
    except (KeyboardInterrupt, SystemExit):
        # Lightning turns Ctrl-C into sys.exit(1) after its own shutdown; say how to go on before leaving.
        if trainer.interrupted:
            log.warning("interrupted; to resume, run:\n  %s", resume_command(resume_dir or out_dir, seed=cfg.seed))
        raise
    fit_time = time.time() - fit_start

    ckpt_cb = next((c for c in trainer.checkpoint_callbacks if c.monitor), None)  # the best one (not last.ckpt's)
    best = ckpt_cb.best_model_path if ckpt_cb is not None and ckpt_cb.best_model_path else None
    best = trainer.strategy.broadcast(best, 0)  # rank zero's choice, which wrote it
    writer = trainer.is_global_zero
    if _swa(trainer) is not None and not trainer.fast_dev_run:
        # The averaged weights exist only now, after training: they are the result, in a checkpoint of their own.
        best = str(out_dir / "checkpoints" / SWA_NAME)
        trainer.save_checkpoint(best)
        log.info("stochastic weight averaging: the averaged model is %s", best)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    result = {
        "fold": cfg.data.get("fold"),
        "best_checkpoint": os.path.relpath(best, out_dir) if best else None,
        "val/logloss": metrics.get("val/logloss"),
        "val/acc": metrics.get("val/acc"),
    }
    if trainer.val_dataloaders is not None and not trainer.fast_dev_run:
        # Score the best checkpoint (not the last epoch) and keep its predictions as out-of-fold predictions.
        model.last_validation = None
        score_checkpoint(cfg, model, datamodule, best)
    if model.last_validation is not None:
        logp, targets, indices = model.last_validation
        # Scores of the rows oof.csv holds (double precision, written exactly), not the logger's float32 copy.
        probs = calibrated_probs(logp, None)
        oof = write_oof(out_dir / "oof.csv" if writer else None, datamodule, probs, targets, indices, cfg.data.fold)
        result["val/logloss"], result["val/acc"] = oof["logloss"], oof["acc"]
        if cfg.get("calibrate", True):
            result["calibration"] = calibration_record(logp, targets)
            # T fitted on other parts of the validation set than those it scores, and on the very images it scores
            result["val/logloss_cross_fitted"] = result["calibration"]["logloss_cross_fitted"]
            result["val/logloss_calibrated_in_sample"] = result["calibration"]["logloss_after"]
            if best and writer:
                save_calibration(best, result["calibration"])
    result.update(
        {
            "epochs": int(trainer.current_epoch),
            "train_images": len(datamodule.train_set),
            # trainer.fit alone (training and per-epoch validation; a resumed run: this session's part)
            "fit_time_s": round(fit_time, 1),
            **({"budget_plan": plan} if plan else {}),
            "wall_time_s": round(time.time() - start, 1),
            "classes": datamodule.classes,
            "metrics": metrics,
        }
    )
    if not writer:
        return result
    atomic_write_text(out_dir / RESULT_NAME, json.dumps(result, indent=2) + "\n")
    if model.last_validation is not None and cfg.get("report", True):
        safe_report("run", write_run_report, out_dir, datamodule.root, unfreeze_epoch(model.hparams.finetune))
    if best:
        log.info(
            "best checkpoint %s: val/logloss %.4f, val/acc %.4f (its epoch chosen on these validation images)",
            best, result["val/logloss"], result["val/acc"],
        )  # fmt: skip
    if "calibration" in result:
        c = result["calibration"]
        if c["errors"] == 0:
            log.warning(
                "temperature not fitted: no errors on the %d validation images, so any T < 1 looks better there "
                "(kept T = 1; a larger validation set gives a usable fit)", c["images"],
            )  # fmt: skip
        else:
            log.info(
                "temperature %.3f fitted on %d validation images: val/logloss %.4f -> %.4f cross-fitted (each of %d "
                "parts scored with a T fitted on the others), %.4f in-sample (T fitted on the images it scores)",
                c["temperature"], c["images"], c["logloss_before"], c["logloss_cross_fitted"], c["cross_fit_parts"],
                c["logloss_after"],
            )  # fmt: skip
    return result


# Settings added to catdog after a k-fold run may have been started, with the value such runs used.
_ADDED_LATER = {
    "data.interpolation": "bilinear",
    "data.pipeline": "workers",
    "trainer.num_nodes": 1,
    "trainer.strategy": "auto",
    "trainer.sync_batchnorm": False,
}
# Settings that do not change what a fold computes: a k-fold run may be resumed with other values.
_RESUME_FREE = {
    "data": {"num_workers", "eval_batch_size", "verify", "cache", "cache_dir", "demo"},
    "trainer": {"default_root_dir", "enable_progress_bar", "enable_model_summary", "log_every_n_steps"},
}


def _check_kfold_settings(cfg: DictConfig, run_dir: Path, write: bool = True) -> None:
    """A k-fold folder restarted to resume must hold the same experiment (data, model, trainer, seed); a new one
    records it (``write``)."""

    def group(name: str, resolve: bool = True) -> dict:
        values = OmegaConf.to_container(cfg[name], resolve=resolve)
        return {k: v for k, v in values.items() if k not in _RESUME_FREE.get(name, ())}

    averaging = (cfg.get("callbacks") or {}).get("averaging")
    settings = {
        "data": group("data"),
        "model": group("model"),
        "trainer": group("trainer", False),
        "averaging": OmegaConf.to_container(averaging, resolve=True) if averaging is not None else {},
        "seed": cfg.seed,
    }
    settings = json.loads(json.dumps(settings, default=str))
    path = run_dir / KFOLD_SETTINGS
    if path.is_file():
        before = json.loads(path.read_text())
        changed = sorted(
            f"{group}.{k}" for group in settings if isinstance(settings[group], dict)
            for k in set(settings[group]) | set(before.get(group, {}))
            if settings[group].get(k) != before.get(group, {}).get(k, _ADDED_LATER.get(f"{group}.{k}"))
        ) + (["seed"] if before.get("seed") != settings["seed"] else [])  # fmt: skip
        if changed:
            raise ConfigError(
                f"{run_dir} holds a k-fold run of another configuration (differs in {', '.join(changed)}); "
                "resume it with the same settings or use a new output folder"
            )
    elif write:
        atomic_write_text(path, json.dumps(settings, indent=2) + "\n")


def train_kfold(cfg: DictConfig) -> dict:
    """Train every fold in ``fold_<i>/`` (skipping finished folds, resuming an interrupted one), then assemble."""
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    writer = is_writer(cfg)
    _check_kfold_settings(cfg, run_dir, write=writer)
    if writer:
        save_config_record(cfg, run_dir)
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
        fit_one(fold_cfg, resume_dir=run_dir)
    if not writer:
        return None
    summary = finalize_ensemble(run_dir, expected_folds=cfg.data.folds)
    if cfg.get("report", True):
        safe_report("k-fold", write_kfold_report, run_dir, cfg.data.dir)
    return summary


def resolve_seed(cfg: DictConfig) -> int:
    """``cfg.seed``; ``seed=null`` draws one (logged, and saved with the run's configuration)."""
    seed = cfg.get("seed")
    if seed is None:
        seed = shared_seed(lambda: random.SystemRandom().randrange(2**31))  # one for all processes of a run
        with open_dict(cfg):
            cfg.seed = seed
        log.info("seed=null: drew seed %d (saved in .hydra/config.yaml; seed=%d repeats this run)", seed, seed)
    elif isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, or null for a random one; got {seed!r}")
    return seed


@holding_output_folder  # one process per run folder (catdog.run_lock; held already when started by train.py)
def train(cfg: DictConfig) -> float | None:
    """Fit as configured (one model, or all folds); returns ``cfg.optimized_metric`` for sweepers."""
    if not is_writer(cfg):  # another process of a distributed run: its info lines would repeat rank zero's
        logging.getLogger("catdog").setLevel(logging.WARNING)
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    check_distributed(
        cfg,
        multirun=hydra_cfg is not None and hydra_cfg.mode == RunMode.MULTIRUN,
        run_dir_given=hydra_cfg is None or any(o.startswith("hydra.run.dir=") for o in hydra_cfg.overrides.hydra),
    )
    resolve_seed(cfg)
    resolve_preprocessing(cfg)
    check_train_config(cfg)
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
