"""One model trained in one run folder (:func:`fit_one`): built, resumed or started from ``model.init``, fitted to its
time budget, trained, its best checkpoint scored again on the validation images and calibrated, and its record files
written (``split.csv``, ``oof.csv``, ``result.json``, the report)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.accelerators import CPUAccelerator
from pytorch_lightning.callbacks import StochasticWeightAveraging

from catdog.budget import PLAN_KEY, fit_to_budget
from catdog.builders import build_datamodule, build_model, build_trainer, check_network
from catdog.checkpoints import read_checkpoint, save_calibration
from catdog.data.pseudo import pseudo_record, pseudo_text
from catdog.distill import TARGETS_NAME, attach_teacher
from catdog.distributed import is_writer
from catdog.errors import ConfigError
from catdog.fileio import atomic_write_text
from catdog.metrics import class_report
from catdog.models.calibration import calibrated_probs, calibration_record
from catdog.models.precision import cpu_bf16_instructions
from catdog.report.build import safe_report, unfreeze_epoch, write_run_report
from catdog.runs.history import continue_history
from catdog.runs.layout import (
    CHECKPOINT_DIR,
    OOF_NAME,
    PSEUDO_NAME,
    RESULT_NAME,
    SPLIT_NAME,
    SWA_NAME,
    save_config_record,
    split_text,
    write_json,
    write_oof,
)
from catdog.runs.resume import (
    DISTILL_KEY,
    check_init_split,
    check_resume,
    check_same_split,
    check_same_teacher,
    checkpoint_run,
    resume_command,
    resume_path,
    run_settings,
)

log = logging.getLogger(__name__)


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


def data_record(datamodule) -> dict:
    """What ``result.json`` says of the data beyond the split: the pseudo-labels used (``pseudo``, with the count per
    class) and how many labelled images ``data.exclude`` left out (``excluded``)."""
    record = {}
    pseudo = pseudo_record(datamodule.pseudo, datamodule.classes)
    if pseudo is not None:
        record["pseudo"] = pseudo
    if datamodule.excluded:
        record["excluded"] = len(datamodule.excluded)
    return record


def fit_one(
    cfg: DictConfig, record: DictConfig | None = None, resume_dir: Path | None = None, plan: dict | None = None
) -> dict:
    """Train one model (one fold, or the single split) in ``cfg.paths.output_dir``; return its result record.
    ``record``: the configuration to save as the folder's ``.hydra`` record once the run is accepted; ``resume_dir``:
    the folder a resume command names (a k-fold run's root; default the output folder); ``plan``: the time budget's
    plan to train (a k-fold run's first fold's) instead of measuring one."""
    out_dir = Path(cfg.paths.output_dir)
    if (out_dir / RESULT_NAME).is_file():
        raise ConfigError(f"{out_dir} already holds a finished run ({RESULT_NAME}); use a new output folder")
    start = time.time()
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    student = attach_teacher(cfg, datamodule)
    out_dir.mkdir(parents=True, exist_ok=True)
    split = split_text(datamodule)
    model = build_model(cfg, datamodule.classes, datamodule.train_set.labels)
    check_network(cfg, model)
    trainer = build_trainer(cfg)
    resume = resume_path(cfg, out_dir)
    ckpt = read_checkpoint(resume) if resume else None
    source = checkpoint_run(resume) if resume else None
    plan = fit_to_budget(cfg, trainer, model, datamodule, ckpt, start, plan)  # before the checks: sets max_epochs
    if resume:
        check_resume(resume, ckpt, model, cfg)
        check_same_split(resume, source, out_dir, split)
        check_same_teacher(resume, ckpt, student.digest if student else None)
    elif cfg.model.get("init"):
        check_init_split(cfg.model.init, [os.path.relpath(p, datamodule.root) for p in datamodule.val_set.paths])
    model.run_settings = {
        **run_settings(cfg), **({PLAN_KEY: plan} if plan else {}), **({DISTILL_KEY: student.digest} if student else {}),
    }  # fmt: skip
    if is_writer(cfg):  # the other processes of a distributed run compute the same things and write nothing
        atomic_write_text(out_dir / SPLIT_NAME, split)
        if student is not None:
            atomic_write_text(out_dir / TARGETS_NAME, student.text, overwrite=True)
        if datamodule.pseudo is not None:
            atomic_write_text(
                out_dir / PSEUDO_NAME, pseudo_text(datamodule.pseudo, datamodule.root, datamodule.classes)
            )
        continue_history(trainer, out_dir, source, ckpt)
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
    if plan:  # as corrected while training (catdog.budget.PlanCheck)
        plan = model.run_settings.get(PLAN_KEY, plan)
    if plan and not trainer.interrupted and trainer.current_epoch < plan["max_epochs"]:
        log.warning(
            "the time budget's backstop stopped training after %d of the %d planned epochs: the plan underestimated "
            "this machine's epochs", trainer.current_epoch, plan["max_epochs"],
        )  # fmt: skip

    ckpt_cb = next((c for c in trainer.checkpoint_callbacks if c.monitor), None)  # the best one (not last.ckpt's)
    best = ckpt_cb.best_model_path if ckpt_cb is not None and ckpt_cb.best_model_path else None
    best = trainer.strategy.broadcast(best, 0)  # rank zero's choice, which wrote it
    writer = trainer.is_global_zero
    if _swa(trainer) is not None and not trainer.fast_dev_run:
        # The averaged weights exist only now, after training: they are the result, in a checkpoint of their own.
        best = str(out_dir / CHECKPOINT_DIR / SWA_NAME)
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
        oof = write_oof(out_dir / OOF_NAME if writer else None, datamodule, probs, targets, indices, cfg.data.fold)
        result["val/logloss"], result["val/acc"] = oof["logloss"], oof["acc"]
        per_class = class_report(probs.numpy(), targets.numpy(), datamodule.classes)
        result["val/balanced_acc"] = per_class.pop("balanced_acc")
        result.update(per_class)  # per_class (precision, recall, F1, support) and confusion
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
            **data_record(datamodule),
            # trainer.fit alone (training and per-epoch validation; a resumed run: this session's part)
            "fit_time_s": round(fit_time, 1),
            **({"budget_plan": plan} if plan else {}),
            **({"distill": student.record} if student else {}),
            "wall_time_s": round(time.time() - start, 1),
            "classes": datamodule.classes,
            "metrics": metrics,
        }
    )
    if not writer:
        return result
    write_json(out_dir / RESULT_NAME, result)
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
