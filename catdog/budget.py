"""A time budget for one training run (``trainer.budget_minutes``): the number of epochs fitted to the machine at hand.

Before the schedule starts, :func:`measure` times a few real training steps at every image size that progressive
resizing will use, each in a short fit of a copy of the model by a Trainer built like the run's (its data pipeline,
optimizer and precision: the step Lightning will run), the global random state restored afterwards, and part of a
validation pass. :func:`plan_epochs` then picks the
largest number of epochs whose estimated wall time, with a validation pass per epoch, the final scoring and
calibration and the time already spent since the run started, fits in the budget. Progressive resizing keeps its share
of the run (``data.progressive.epochs`` scaled with the number of epochs), so the one-cycle schedule and the size
ramp keep their shape. The plan is logged and saved in the checkpoints (``run_settings``): a resumed run keeps it
instead of measuring again.

What the estimate counts: every training batch (with ``trainer.accumulate_grad_batches=k`` an optimizer step every
k batches, the batch timed as such), the first steps at each size that run slower than the rest (allocations, kernel
choice and, with ``model.compile=true``, compilation: the probe's warm-up steps' excess over the steady state), a
validation pass per epoch and the final scoring. It leaves out DDP's gradient all-reduce: the probe runs on one
process. A budget too short for one epoch trains one epoch, with a warning that gives the estimate.

The probe's few steps per size are not the whole story (a machine's sustained pace, a noisy neighbour during the
probe, the epoch's bookkeeping), so the plan is checked against the epochs themselves: after the second epoch at each
training size (the first pays the size's warm-up), :class:`PlanCheck` scales that size's estimated costs (and those
of the sizes still to come) by the epoch's measured time over its estimate and re-plans the remaining epochs from the
time really spent, keeping the progressive ramp and leaving the last :data:`SETTLED_EPOCHS` epochs alone; the
Trainer, the checkpoints' record and the learning-rate schedule (stretched or shrunk to the new length from the step
it reached) follow. The epochs are whole: a plan takes the number whose run ends nearest the budget, up to
:data:`OVERSHOOT` past it. As a backstop, the
Trainer stops at the end of the first epoch that ends :data:`BACKSTOP` past the budget (Lightning's ``Timer``),
unless ``trainer.max_time`` is set.

A k-fold run (``data.folds=K``) gives the budget to each fold: the first fold plans, every later fold (also in a
resumed run) trains the first fold's plan, so the K members share one schedule and the whole run takes about K times
the budget.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import statistics
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, open_dict
from pytorch_lightning.callbacks import Checkpoint, Timer

from catdog.builders import build_probe_trainer
from catdog.data.transforms import progressive_size
from catdog.distributed import externally_launched, secondary_rank, world_size
from catdog.errors import ConfigError
from catdog.runs.resume import RUN_SETTINGS_KEY, run_settings

log = logging.getLogger(__name__)

#: run_settings key of the plan (restored on resume).
PLAN_KEY = "budget_plan"
#: Where rank zero leaves its plan for the processes Lightning starts later (they inherit the environment).
PLAN_ENV = "CATDOG_BUDGET_PLAN"
#: Steps run at each size before timing: the first ones at a size are slower than the steady state (allocations,
#: kernel choice) by 10-20 % on a CPU even after a few.
WARMUP_STEPS = 10
TIMED_STEPS = 10
VAL_WARMUP = 2
VAL_BATCHES = 6
#: Seconds a run spends after its last epoch besides one validation pass (calibration, result files, report).
FINAL_OVERHEAD_S = 15.0
#: How far past the budget a plan may end when that is nearer the budget than one epoch fewer (a share of it).
OVERSHOOT = 0.02
#: The Trainer stops at the end of the first epoch that ends past this share of the budget (the estimate's error).
BACKSTOP = 1.05
#: Epochs at the end of a run whose number a check no longer changes: their learning rates are the schedule's last.
SETTLED_EPOCHS = 2


def check_budget(cfg: DictConfig) -> float | None:
    """``trainer.budget_minutes``: null (no budget) or a number of minutes > 0; a distributed run plans on rank zero
    and hands the plan to the processes Lightning starts, so neither processes started by a launcher (torchrun,
    SLURM) nor the folds of a distributed k-fold run (which would inherit the first fold's plan) can have one."""
    value = cfg.trainer.get("budget_minutes")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"trainer.budget_minutes must be a number of minutes > 0, or null for none; got {value!r}")
    if world_size(cfg) > 1 and (externally_launched() or cfg.data.get("folds")):
        raise ConfigError(
            "trainer.budget_minutes is planned by one process and handed to the others when Lightning starts them: "
            "it cannot plan processes started by torchrun / SLURM, or the folds of a multi-process k-fold run; "
            "set trainer.max_epochs (and trainer.budget_minutes=null) instead"
        )
    return float(value)


def scaled_progressive(progressive: dict | None, epochs: int, base_epochs: int | None) -> dict | None:
    """``progressive`` with its ramp (``epochs``) scaled from a ``base_epochs`` run to an ``epochs`` run (as
    configured without a base)."""
    if not progressive or not base_epochs:
        return progressive
    ramp = max(1, round(progressive["epochs"] * epochs / base_epochs))
    return {**progressive, "epochs": min(ramp, epochs)}


@dataclass(frozen=True)
class Timings:
    """What a run of any length costs on this machine: seconds per training step at each image size (``step_s``), the
    steps of an epoch, one validation pass (``val_s``), and the run's sizes (``image_size``, ``progressive`` ramp as
    configured for ``base_epochs`` epochs, or as is without a base)."""

    step_s: dict[int, float]
    steps_per_epoch: int
    val_s: float
    image_size: int
    progressive: dict | None
    base_epochs: int | None
    #: the one-time extra cost of the first steps at each size (warm-up, compilation), seconds
    first_s: dict[int, float] | None = None
    #: seconds an epoch spends outside its training and validation passes (checkpoints, loggers, epoch hooks)
    epoch_s: float = 0.0

    def ramp(self, epochs: int) -> dict | None:
        return scaled_progressive(self.progressive, epochs, self.base_epochs)

    def sizes(self, epochs: int) -> list[int]:
        """The training size of each epoch of an ``epochs`` run."""
        ramp = self.ramp(epochs)
        return [progressive_size(e, self.image_size, ramp) for e in range(epochs)]

    def estimate_s(self, epochs: int, done: int = 0) -> float:
        """Seconds an ``epochs`` run takes after its first ``done`` epochs: every further epoch's steps at its size,
        the first steps' extra cost once per size not trained yet, a validation pass and the epoch's own overhead per
        epoch, and the final scoring (one more validation pass and :data:`FINAL_OVERHEAD_S`)."""
        sizes = self.sizes(epochs)
        steps = sum(self.step_s[size] for size in sizes[done:])
        first = sum((self.first_s or {}).get(size, 0.0) for size in set(sizes[done:]) - set(sizes[:done]))
        rest = epochs - done
        return self.steps_per_epoch * steps + first + rest * self.epoch_s + (rest + 1) * self.val_s + FINAL_OVERHEAD_S

    def scaled(self, train: dict[int, float], val: float) -> Timings:
        """These timings with each size's training costs times its ``train`` ratio and the validation pass times
        ``val``."""
        return dataclasses.replace(
            self,
            step_s={k: v * train[k] for k, v in self.step_s.items()},
            first_s={k: v * train[k] for k, v in (self.first_s or {}).items()},
            val_s=self.val_s * val,
        )


def plan_epochs(
    budget_s: float, spent_s: float, timings: Timings, max_epochs: int = 10_000, done: int = 0, least: int = 1
) -> dict:
    """The number of epochs (at least ``least`` and the ``done`` ones already trained) whose run, ``spent_s`` plus
    :meth:`Timings.estimate_s` after the ``done`` epochs, ends nearest the budget, at most :data:`OVERSHOOT` past it
    (the epochs are whole: the last one can be several percent of the budget); the least, with a warning giving its
    estimate for a fresh plan, when not even that fits."""
    limit = (1 + OVERSHOOT) * budget_s - spent_s
    least = max(1, done, least)
    best, best_s = least, timings.estimate_s(least, done)
    if best_s > limit and not done:
        log.warning(
            "trainer.budget_minutes=%g is too short for one epoch: it is estimated at %.1f min (%.1f min already "
            "spent): training 1 epoch", budget_s / 60, best_s / 60, spent_s / 60,
        )  # fmt: skip
    for epochs in range(least + 1, max_epochs + 1):
        estimate = timings.estimate_s(epochs, done)
        if estimate > limit:
            break
        if abs(spent_s + estimate - budget_s) <= abs(spent_s + best_s - budget_s):
            best, best_s = epochs, estimate
    return {
        "max_epochs": best,
        "progressive_epochs": (timings.ramp(best) or {}).get("epochs"),
        "estimate_s": round(spent_s + best_s, 1),
        "budget_s": round(budget_s, 1),
        "step_s": {str(k): round(v, 4) for k, v in sorted(timings.step_s.items())},  # as JSON and checkpoints keep it
        "first_s": {str(k): round(v, 2) for k, v in sorted((timings.first_s or {}).items())},
        "val_s": round(timings.val_s, 2),
        "batches": timings.steps_per_epoch,
    }


@dataclass(frozen=True)
class Measured:
    """What :func:`measure` found: seconds per training batch and the warm-up's extra seconds at each size, seconds
    of one validation pass, and the training batches of an epoch (this process's share)."""

    step_s: dict[int, float]
    first_s: dict[int, float]
    val_s: float
    batches: int


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _BatchClock(pl.Callback):
    """When each training (validation) batch starts, and when the loop ends: the gaps are whole steps as Lightning
    runs them (fetching and moving the batch, the datamodule's batch hooks, forward, backward, optimizer)."""

    def __init__(self, device: torch.device):
        self.device, self.marks, self.val_marks = device, [], []

    def _mark(self, marks: list[float]) -> None:
        _sync(self.device)
        marks.append(time.perf_counter())

    def on_train_batch_start(self, *args) -> None:
        self._mark(self.marks)

    def on_train_epoch_end(self, *args) -> None:
        self._mark(self.marks)

    def on_validation_batch_start(self, *args) -> None:
        self._mark(self.val_marks)

    def on_validation_epoch_end(self, *args) -> None:
        self._mark(self.val_marks)


def _step_seconds(marks: list[float], warmup: int) -> tuple[float, float]:
    """(the median time per step after ``warmup`` steps, the warm-up steps' excess over that median): the first
    steps at a size allocate, pick kernels and, with ``model.compile``, compile; a real run pays that once per
    size."""
    gaps = [b - a for a, b in zip(marks, marks[1:])]
    start = min(warmup, len(gaps) - 1)  # a loader shorter than the warm-up: its last step
    if start < 0:
        return float("nan"), 0.0
    median = statistics.median(gaps[start:])
    return median, max(0.0, sum(gaps[:start]) - start * median)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The probe fits' own console lines (Lightning's device summary, the stage log) left out."""
    loggers = [logging.getLogger(n) for n in ("pytorch_lightning", "lightning", "lightning.pytorch", "catdog.models")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def measure(cfg: DictConfig, trainer, model, datamodule, sizes: list[int]) -> Measured:
    """What a step, its warm-up and a validation pass cost at each of ``sizes``, and the training batches of an
    epoch. Each size is timed in a short fit of a copy of ``model`` by a Trainer built like the run's (its data
    pipeline, optimizer, gradient accumulation and precision on one process of the run's device), so that the step
    is the one Lightning will run; the global random state and the datamodule's sizes are restored."""
    device = trainer.strategy.root_device
    datamodule.trainer = trainer  # the loaders take the device, rank and epoch from it
    steps_per_epoch = len(datamodule.train_dataloader())
    val_batches = len(datamodule.val_dataloader())
    hp = datamodule.hparams
    configured = (hp.image_size, hp.progressive)
    step_s, first_s, val_s = {}, {}, 0.0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), _quiet():
        try:
            for size in sizes:
                validate = size == configured[0] and val_batches > 0  # validation runs at the configured size
                hp.image_size, hp.progressive = size, None
                clock = _BatchClock(device)
                probe_trainer = build_probe_trainer(
                    cfg,
                    clock,
                    max_epochs=1,
                    limit_train_batches=WARMUP_STEPS + TIMED_STEPS,
                    limit_val_batches=min(val_batches, VAL_WARMUP + VAL_BATCHES) if validate else 0,
                )
                probe = copy.deepcopy(model)
                probe_trainer.fit(probe, datamodule=datamodule)
                step_s[size], first_s[size] = _step_seconds(clock.marks, WARMUP_STEPS)
                if validate:
                    per_batch = _step_seconds(clock.val_marks, VAL_WARMUP)[0]
                    val_s = per_batch * val_batches if math.isfinite(per_batch) else 0.0
                del probe, probe_trainer
        finally:
            hp.image_size, hp.progressive = configured
            datamodule.trainer = trainer
    return Measured(step_s, first_s, val_s, steps_per_epoch)


def apply_plan(cfg, trainer, datamodule, plan: dict) -> None:
    """Set the planned number of epochs (and progressive ramp) on the config, the Trainer and the datamodule."""
    with open_dict(cfg):
        cfg.trainer.max_epochs = int(plan["max_epochs"])
        if plan.get("progressive_epochs") and cfg.data.get("progressive"):
            cfg.data.progressive.epochs = int(plan["progressive_epochs"])
    trainer.fit_loop.max_epochs = int(plan["max_epochs"])
    if plan.get("progressive_epochs") and datamodule.hparams.progressive:
        datamodule.hparams.progressive["epochs"] = int(plan["progressive_epochs"])


def describe(plan: dict) -> str:
    ramp = f", progressive resizing over {plan['progressive_epochs']} epochs" if plan.get("progressive_epochs") else ""
    steps = ", ".join(f"{size} px {s * 1000:.0f} ms" for size, s in plan["step_s"].items())
    return (
        f"time budget {plan['budget_s'] / 60:.1f} min: {plan['max_epochs']} epochs{ramp}; estimated "
        f"{plan['estimate_s'] / 60:.1f} min (training step {steps}; validation pass {plan['val_s']:.1f} s)"
    )


def candidate_sizes(image_size: int, progressive: dict | None) -> list[int]:
    """Every training size a run of any length can use: the ramp's start, its multiples and ``image_size``."""
    if not progressive:
        return [image_size]
    start, multiple = progressive["start_size"], progressive.get("multiple", 16)
    inner = range((start // multiple + 1) * multiple, image_size, multiple)
    return sorted({start, image_size, *inner})


def fit_to_budget(
    cfg: DictConfig, trainer, model, datamodule, ckpt: dict | None, started: float, given: dict | None = None
) -> dict | None:
    """With ``trainer.budget_minutes``: the plan of this run (a resumed run's own, from its checkpoint ``ckpt``;
    ``given``, a k-fold run's first fold's plan for a later fold; rank zero's, in the other processes of a distributed
    run; else measured now), applied to ``cfg``, ``trainer`` and ``datamodule``, with the backstop
    (:func:`add_backstop`). ``started``: when the run started (``time.time()``), counted against the budget."""
    budget = cfg.trainer.get("budget_minutes")  # checked by check_budget
    if budget is None:
        return None
    budget = float(budget)
    plan = ((ckpt or {}).get(RUN_SETTINGS_KEY) or {}).get(PLAN_KEY)
    if plan is not None:
        log.info("resuming with the run's own plan: %s", describe(plan))
    elif given is not None:
        plan = given
        log.info("the k-fold run's first fold's plan: %s", describe(plan))
    elif secondary_rank():
        raw = os.environ.get(PLAN_ENV)
        if raw is None:
            raise ConfigError(
                "trainer.budget_minutes in a process of a distributed run that did not inherit rank zero's plan: "
                "set trainer.max_epochs instead"
            )
        plan = json.loads(raw)
    else:
        plan = _measured_plan(cfg, trainer, model, datamodule, budget * 60, started)
    apply_plan(cfg, trainer, datamodule, plan)
    fresh = (ckpt or {}).get(RUN_SETTINGS_KEY) is None and given is None
    if fresh and "corrected" not in plan:
        add_callback(trainer, PlanCheck(cfg, datamodule, plan, started))
    add_backstop(cfg, trainer, plan, time.time() - started)
    return plan


def add_callback(trainer, callback: pl.Callback) -> None:
    """``callback`` on ``trainer`` ahead of its checkpoint callbacks (Lightning runs those last), so that what it
    changes at the end of validation is in the checkpoints saved then."""
    at = next((i for i, c in enumerate(trainer.callbacks) if isinstance(c, Checkpoint)), len(trainer.callbacks))
    trainer.callbacks.insert(at, callback)


def check_epochs(sizes: list[int], settled: int = SETTLED_EPOCHS) -> list[int]:
    """The epochs after which the plan is checked, for a run whose epochs train at ``sizes``: the second epoch at
    each size (the first pays that size's warm-up), while ``settled`` epochs or more are still to come after it."""
    return [
        e for e in range(1, len(sizes) - settled)
        if sizes[e] == sizes[e - 1] and (e == 1 or sizes[e - 2] != sizes[e - 1])
    ]  # fmt: skip


def correct_plan(
    plan: dict,
    timings: Timings,
    ratios: dict[int, float],
    val_ratio: float,
    epoch_s: float,
    elapsed_s: float,
    done: int,
) -> dict:
    """The plan after its first ``done`` epochs, ``elapsed_s`` seconds after the run started: the remaining epochs
    re-planned with each size's training costs times its measured ``ratios`` (actual over estimated; a size not
    trained yet: the ratio measured last), the validation pass times ``val_ratio`` and ``epoch_s`` seconds per epoch
    outside both (measured too). The progressive ramp stays as planned (``timings``' own: DataLoader workers hold a
    copy of it), and the run keeps the epochs at full size it was planned to have, up to one. ``corrected`` records
    every check."""
    latest = ratios[next(reversed(ratios))]
    train = {size: ratios.get(size, latest) for size in timings.step_s}
    ramp = (timings.progressive or {}).get("epochs", 0)
    least = min(plan["max_epochs"], ramp + 1)
    measured = dataclasses.replace(timings.scaled(train, val_ratio), epoch_s=epoch_s)
    new = plan_epochs(plan["budget_s"], elapsed_s, measured, done=done, least=least)
    before = plan.get("corrected") or {"planned_epochs": plan["max_epochs"], "planned_estimate_s": plan["estimate_s"]}
    check = {
        "after_epoch": done - 1, "train_ratio": {str(k): round(v, 3) for k, v in ratios.items()},
        "val_ratio": round(val_ratio, 3), "epoch_s": round(epoch_s, 2), "max_epochs": new["max_epochs"],
        "estimate_s": new["estimate_s"],
    }  # fmt: skip
    return {
        **plan, "max_epochs": new["max_epochs"], "estimate_s": new["estimate_s"],
        "corrected": {**before, "checks": [*before.get("checks", []), check]},
    }  # fmt: skip


class PlanCheck(pl.Callback):
    """Corrects the plan from the wall time of the epochs themselves: after the second epoch at each training size
    (:func:`check_epochs`; the first pays the size's warm-up), on rank zero, broadcast to the other processes
    (:func:`correct_plan`). A changed number of epochs goes to the Trainer, the config, the checkpoints' record and the
    learning-rate schedule (the same shape over the new length, from the step it has reached)."""

    def __init__(self, cfg: DictConfig, datamodule, plan: dict, started: float):
        self.cfg, self.datamodule, self.plan, self.started = cfg, datamodule, plan, started
        hp = datamodule.hparams  # its ramp: the plan's (apply_plan)
        self.timings = Timings(
            {int(k): v for k, v in plan["step_s"].items()}, int(plan["batches"]), float(plan["val_s"]),
            hp.image_size, dict(hp.progressive) if hp.progressive else None, None,
            {int(k): v for k, v in plan.get("first_s", {}).items()},
        )  # fmt: skip
        self.ratios: dict[int, float] = {}
        self.val_ratio, self.epoch_s = 1.0, 0.0
        # this epoch's start, training and validation seconds; the last epoch's start and the seconds it spent
        # training and validating
        self.epoch_start = self.val_start = self.train_s = None
        self.last: tuple[float, float] | None = None
        self.checked: set[int] = set()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        now = time.perf_counter()
        if self.last is not None:  # the last epoch's time outside its training and validation passes
            self.epoch_s = max(0.0, now - self.last[0] - self.last[1])
        self.epoch_start, self.val_start, self.train_s = now, None, None

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and self.epoch_start is not None:
            self.val_start = time.perf_counter()
            self.train_s = self.val_start - self.epoch_start

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and self.val_start is not None:
            val_s = time.perf_counter() - self.val_start
            self.last = (self.epoch_start, self.train_s + val_s)
            self._check(trainer, pl_module, self.train_s, val_s)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.val_start is None and self.epoch_start is not None:  # the epoch did not validate
            train_s = time.perf_counter() - self.epoch_start
            self.last = (self.epoch_start, train_s)
            self._check(trainer, pl_module, train_s, None)

    def _check(self, trainer, pl_module, train_s: float, val_s: float | None) -> None:
        epoch, plan = trainer.current_epoch, self.plan
        sizes = self.timings.sizes(plan["max_epochs"])
        if epoch in self.checked or epoch not in check_epochs(sizes):
            return
        self.checked.add(epoch)
        size = sizes[epoch]
        self.ratios[size] = train_s / max(1e-9, self.timings.steps_per_epoch * self.timings.step_s[size])
        if val_s is not None and self.timings.val_s > 0:
            self.val_ratio = val_s / self.timings.val_s
        elapsed = time.time() - self.started
        plan = correct_plan(plan, self.timings, self.ratios, self.val_ratio, self.epoch_s, elapsed, epoch + 1)
        self.plan = plan = trainer.strategy.broadcast(plan, src=0)
        log.info(
            "time budget checked after epoch %d (%d px: training %.2fx, validation %.2fx the estimate): %d epochs, "
            "estimated %.1f min (planned %d)", epoch, size, self.ratios[size], self.val_ratio, plan["max_epochs"],
            plan["estimate_s"] / 60, plan["corrected"]["planned_epochs"],
        )  # fmt: skip
        if plan["max_epochs"] == trainer.fit_loop.max_epochs:
            pl_module.run_settings = {**pl_module.run_settings, PLAN_KEY: plan}
            return
        apply_plan(self.cfg, trainer, self.datamodule, plan)
        pl_module.run_settings = {
            **pl_module.run_settings, PLAN_KEY: plan, **run_settings(self.cfg),
        }  # fmt: skip
        pl_module.retarget_schedule()


def _measured_plan(cfg: DictConfig, trainer, model, datamodule, budget_s: float, started: float) -> dict:
    hp = datamodule.hparams
    measured = measure(cfg, trainer, model, datamodule, candidate_sizes(hp.image_size, hp.progressive))
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the measured copy of the model is gone
    if not all(math.isfinite(v) for v in measured.step_s.values()):
        raise ConfigError(
            f"trainer.budget_minutes: too few training batches to time a step ({measured.step_s}); set "
            "trainer.max_epochs"
        )
    base = cfg.trainer.get("max_epochs")
    timings = Timings(
        measured.step_s, max(1, measured.batches), measured.val_s, hp.image_size, hp.progressive,
        base if isinstance(base, int) and base > 0 else None, measured.first_s,
    )  # fmt: skip
    plan = plan_epochs(budget_s, time.time() - started, timings)
    os.environ[PLAN_ENV] = json.dumps(plan)
    log.info("%s", describe(plan))
    if world_size(cfg) > 1:
        log.info("the estimate leaves out the gradient all-reduce between the %d processes", world_size(cfg))
    return plan


def backstop_s(plan: dict, spent_s: float) -> float:
    """Seconds of training (Lightning's ``Timer`` counts from the fit's start) after which the run stops at the end
    of the epoch: :data:`BACKSTOP` x the budget, less the time spent before the fit and the final scoring (one
    validation pass and :data:`FINAL_OVERHEAD_S`)."""
    final_s = float(plan.get("val_s", 0.0)) + FINAL_OVERHEAD_S
    return max(1.0, BACKSTOP * float(plan["budget_s"]) - spent_s - final_s)


def add_backstop(cfg: DictConfig, trainer, plan: dict, spent_s: float) -> Timer | None:
    """A ``Timer`` callback on ``trainer`` that ends the fit at the end of the first epoch that ends past
    :func:`backstop_s` (none when ``trainer.max_time`` is set: the user's limit holds). A resumed run's Timer
    continues from the training time its checkpoint recorded."""
    if cfg.trainer.get("max_time") is not None:
        return None
    seconds = backstop_s(plan, spent_s)
    timer = Timer(duration=timedelta(seconds=seconds), interval="epoch", verbose=True)
    trainer.callbacks.append(timer)
    log.info(
        "backstop: the fit stops at the end of the first epoch that ends %.1f min into training (%.0f %% of the "
        "budget, less the time spent before it and the final scoring)", seconds / 60, BACKSTOP * 100,
    )  # fmt: skip
    return timer
