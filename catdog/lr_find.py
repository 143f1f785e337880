"""``train.py tune=lr_find``: a learning-rate range test (Smith 2015; fastai's ``lr_find``) for the stage that trains
first, instead of training.

The model, data and optimizer are built as the run would build them (one process; fold 0 of a k-fold run), without
the schedule: for ``lr_find.steps`` steps the learning rate grows exponentially from ``min_lr`` to ``max_lr`` (every
parameter group keeps its ratio to ``model.optimizer.lr``, so staged fine-tuning's ``lr_factor`` holds) and the
training loss is recorded, smoothed, until it exceeds ``stop_factor`` times its minimum. Only the first stage trains
(with ``model.finetune.head_epochs`` > 0: the head alone, for at most those epochs), the stage the range test is about;
Lightning's own finder is not used because it breaks with staged fine-tuning callbacks and under DDP.

The suggestion is fastai's "valley" (a point half-way down the longest fall of the smoothed loss, leaving out the
first tenth of the curve and its last 5 points); the steepest fall and the lowest loss are recorded beside it. Where
the loss never falls there is no suggestion, and no command: ``no_suggestion`` says why. Writes ``lr_find.json`` (the
curve, the suggestions and the command line that uses the first) and ``lr_find.png`` into the run folder; no
checkpoint, no logger output, no ``result.json`` (so ``ckpt=latest`` never picks it).
"""

from __future__ import annotations

import copy
import logging
import math
import shlex
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from catdog.builders import build_datamodule, build_model, build_probe_trainer
from catdog.distributed import externally_launched
from catdog.errors import ConfigError, check_known_keys
from catdog.fileio import atomic_open
from catdog.report.figures import plot_lr_find
from catdog.runs.layout import LR_FIND_JSON, LR_FIND_PNG, write_json

log = logging.getLogger(__name__)

TUNE_MODES = (None, "lr_find")
LR_FIND_DEFAULTS = {"min_lr": 1e-6, "max_lr": 1.0, "steps": 100, "stop_factor": 4.0}
#: Exponential smoothing of the loss (fastai's and Lightning's 0.98).
BETA = 0.98
#: Points at the end of the curve the valley leaves out, where the loss blows up (fastai's 5).
SKIP_END = 5
#: The fewest points the valley is looked for in.
MIN_POINTS = 10


def check_tune(cfg: DictConfig) -> None:
    """``tune`` and ``lr_find``'s keys."""
    mode = cfg.get("tune")
    if mode not in TUNE_MODES:
        raise ConfigError(f"tune must be null or 'lr_find', got {mode!r}")
    if mode == "lr_find" and externally_launched():
        raise ConfigError(
            "tune=lr_find runs on one process: start it with python train.py, not with torchrun or srun (the "
            "suggested learning rate holds for the run's own batch size; scale it for more processes)"
        )
    settings = {**LR_FIND_DEFAULTS, **dict(cfg.get("lr_find") or {})}
    check_known_keys(settings, sorted(LR_FIND_DEFAULTS), "lr_find")
    lo, hi = settings["min_lr"], settings["max_lr"]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in (lo, hi)) or lo >= hi:
        raise ConfigError(f"lr_find.min_lr and lr_find.max_lr must be numbers with 0 < min_lr < max_lr, got {lo}, {hi}")
    steps = settings["steps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 10:
        raise ConfigError(f"lr_find.steps must be an integer >= 10, got {steps!r}")
    factor = settings["stop_factor"]
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor <= 1:
        raise ConfigError(f"lr_find.stop_factor must be a number > 1, got {factor!r}")


def lr_schedule(min_lr: float, max_lr: float, steps: int) -> np.ndarray:
    """The learning rate of each step: exponential from ``min_lr`` to ``max_lr``."""
    return min_lr * (max_lr / min_lr) ** (np.arange(steps) / max(1, steps - 1))


def smooth(losses: list[float], beta: float = BETA) -> list[float]:
    """Bias-corrected exponential moving average (as fastai and Lightning smooth the range test)."""
    avg, out = 0.0, []
    for i, loss in enumerate(losses, start=1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta**i))
    return out


def valley(lrs: list[float], losses: list[float]) -> float | None:
    """fastai's "valley" suggestion: the longest decreasing subsequence of the smoothed loss and a point half-way down
    it (robust to a noisy start and to a minimum that is only noise), on the curve without its first tenth
    (:func:`_skip`) and its last ``SKIP_END`` points, cut at its first loss that is not finite. None for fewer than
    ``MIN_POINTS`` points, and when no point there is lower than an earlier one (no falling stretch)."""
    if len(losses) < MIN_POINTS:
        return None
    skip = _skip(losses)
    kept = [float(v) for v in losses[skip : len(losses) - SKIP_END]]
    kept = kept[: next((i for i, v in enumerate(kept) if not math.isfinite(v)), len(kept))]
    longest = [1] * len(kept)  # longest[i]: the longest decreasing subsequence that ends at point i
    end = 0
    for i in range(1, len(kept)):
        for j in range(i):
            if kept[i] < kept[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
        if longest[end] < longest[i]:
            end = i
    if not kept or longest[end] < 2:
        return None
    start = end - longest[end] + 1  # as many points back as the subsequence holds
    third = (end - start) / 3
    return float(lrs[skip + start + int(third) + int(third / 2)])


def no_suggestion(losses: list[float]) -> str:
    """Why :func:`valley` suggests nothing for this curve."""
    if len(losses) < MIN_POINTS:
        return f"{len(losses)} steps are too few to tell (the valley needs {MIN_POINTS})"
    return (
        f"the smoothed loss never falls (after the first tenth of the curve, before its last {SKIP_END} points): "
        "every learning rate tested may be too large; try a lower lr_find.min_lr"
    )


def _skip(losses) -> int:
    """Points at the start of the curve left out: the first tenth, where the moving average is still settling."""
    return max(1, len(losses) // 10)


def _lowest_index(losses: np.ndarray) -> int | None:
    """Index of the lowest finite loss after :func:`_skip`'s points; None when there is none."""
    tail = losses[_skip(losses) :]
    if not np.isfinite(tail).any():
        return None
    return _skip(losses) + int(np.nanargmin(np.where(np.isfinite(tail), tail, np.nan)))


def lowest(lrs: list[float], losses: list[float]) -> float | None:
    """The learning rate of the lowest smoothed loss after the first tenth of the curve (fastai's ``minimum``, of
    which it suggests a tenth)."""
    i = _lowest_index(np.asarray(losses, dtype=np.float64))
    return None if i is None else float(lrs[i])


def steepest(lrs: list[float], losses: list[float]) -> float | None:
    """Where the smoothed loss falls fastest per decade of learning rate before its lowest point (Lightning's
    suggestion), skipping the first tenth of the curve, where the average is still settling; None if too short."""
    losses = np.asarray(losses, dtype=np.float64)
    skip, low = _skip(losses), _lowest_index(losses)
    if np.isfinite(losses).sum() < 10 or low is None or low + 1 - skip < 3:
        return None
    end = low + 1
    slope = np.gradient(losses[skip:end], np.log10(np.asarray(lrs[skip:end])))
    return float(lrs[skip + int(np.argmin(slope))])


class LRRangeTest(pl.Callback):
    """Sets each step's learning rate (per group: ``lr * lr_scale``) and records the training loss; stops once the
    smoothed loss passes ``stop_factor`` x its minimum or is no longer finite."""

    def __init__(self, lrs: np.ndarray, stop_factor: float):
        self.lrs, self.stop_factor = [float(v) for v in lrs], float(stop_factor)
        self.raw: list[float] = []
        self.smoothed: list[float] = []  # smooth(self.raw), kept up step by step
        self._average = 0.0
        self.diverged = False
        self.stage = ""

    def on_train_start(self, trainer, pl_module) -> None:
        self.stage = pl_module.stage_summary()  # what the first epoch trains (the module has applied its stage)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = min(len(self.raw), len(self.lrs) - 1)
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = self.lrs[step] * group.get("lr_scale", 1.0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:  # a batch of unreadable images only
            return
        self.raw.append(float(loss))
        self._average = BETA * self._average + (1 - BETA) * self.raw[-1]
        last = self._average / (1 - BETA ** len(self.raw))
        self.smoothed.append(last)
        if not math.isfinite(last) or last > self.stop_factor * min(self.smoothed):
            self.diverged = trainer.should_stop = True
        if len(self.raw) >= len(self.lrs):
            trainer.should_stop = True


def _lr(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _command(suggestion: float) -> str:
    """The train command of this run with the suggested learning rate (and without ``tune``)."""
    given = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    kept = [
        o for o in given if not o.split("=", 1)[0].lstrip("+~").startswith(("tune", "lr_find", "model.optimizer.lr"))
    ]
    return " ".join(["python train.py", *map(shlex.quote, kept), f"model.optimizer.lr={suggestion:.3g}"])


def lr_find(cfg: DictConfig) -> dict:
    """Run the range test described in the module docstring; returns the record written to ``lr_find.json``."""
    settings = {**LR_FIND_DEFAULTS, **dict(cfg.get("lr_find") or {})}
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_cfg = copy.deepcopy(cfg)
    with open_dict(run_cfg):
        run_cfg.model.scheduler = None  # the test sets every step's learning rate itself
        # on the labels alone: distillation's loss keeps its gradients on that scale (T^2), and the teacher's
        # targets need not be made for a range test
        run_cfg.distill = None
        if run_cfg.data.folds and run_cfg.data.fold is None:
            run_cfg.data.fold = 0
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(run_cfg)
    datamodule.setup("fit")
    model = build_model(run_cfg, datamodule.classes, datamodule.train_set.labels)
    lrs = lr_schedule(settings["min_lr"], settings["max_lr"], settings["steps"])
    probe = LRRangeTest(lrs, settings["stop_factor"])
    # Epochs of the first stage only: the head's epochs with staged fine-tuning, else as many as the steps need.
    head_epochs = int((run_cfg.model.get("finetune") or {}).get("head_epochs") or 0)
    trainer = build_probe_trainer(
        run_cfg,
        probe,
        max_epochs=head_epochs if head_epochs > 0 else -1,
        max_steps=settings["steps"],
        limit_val_batches=0,
        default_root_dir=str(out_dir),
    )
    trainer.fit(model, datamodule=datamodule)
    steps = len(probe.raw)
    if probe.diverged:
        stopped = "the loss diverged"
    elif steps < settings["steps"]:
        stopped = "the first stage ended (model.finetune.head_epochs epochs hold fewer batches than lr_find.steps)"
    else:
        stopped = "all steps ran"
    tested = [float(v) for v in lrs[:steps]]
    suggestion = valley(tested, probe.smoothed)
    record = {
        "stage": probe.stage, "steps_run": steps, "stopped": stopped, "lrs": tested, "losses": probe.smoothed,
        "raw_losses": probe.raw, "suggestion": suggestion,
        "no_suggestion": no_suggestion(probe.smoothed) if suggestion is None else None,
        "steepest": steepest(tested, probe.smoothed),
        "min_loss_lr": lowest(tested, probe.smoothed),
        "configured_lr": float(cfg.model.optimizer.lr), **{k: settings[k] for k in LR_FIND_DEFAULTS},
        "command": _command(suggestion) if suggestion is not None else None,
    }  # fmt: skip
    write_json(out_dir / LR_FIND_JSON, record)
    with atomic_open(out_dir / LR_FIND_PNG, "wb") as f:
        f.write(plot_lr_find(tested, probe.smoothed, probe.raw, suggestion))
    log.info("lr_find: %d steps (%s) of %s; curve in %s", steps, stopped, probe.stage, out_dir / LR_FIND_PNG)
    if suggestion is None:
        log.warning("lr_find: no suggestion: %s", record["no_suggestion"])
    print(summary(record, out_dir / LR_FIND_PNG))
    return record


def summary(record: dict, png: Path | str) -> str:
    """What ``lr_find`` prints of its record: the suggestion and the train command that uses it, or why there is
    none (and then no command)."""
    if record["suggestion"] is None:
        return f"lr_find: no suggestion ({record['no_suggestion']}); see the curve in {png}"
    return (
        f"lr_find: suggested model.optimizer.lr={record['suggestion']:.3g} (fastai's valley; steepest fall at "
        f"{_lr(record['steepest'])}, lowest loss at {_lr(record['min_loss_lr'])}; configured "
        f"{record['configured_lr']:.3g}). To train with it:\n"
        f"  {record['command']}"
    )
