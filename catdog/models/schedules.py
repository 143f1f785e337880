"""Per-step learning-rate schedules that know about staged fine-tuning.

Each schedule here is a factory for :class:`torch.optim.lr_scheduler.LambdaLR` whose multiplier is a pure function of
the optimizer step, so a resumed run continues on exactly the same curve. Configs select one with a ``_partial_``
target (``conf/model/scheduler/*.yaml``); :class:`catdog.models.module.ClassifierModule` adds what only the Trainer
knows: ``total_steps``, ``steps_per_epoch`` and ``unfreeze_step`` (the first step after the head-only epochs).

With ``restart_on_unfreeze`` (the default) the run is split into phases at ``unfreeze_step`` and every phase gets the
whole shape again: warmup, then the decay. This is fastai's ``fine_tune``: one cycle for the head on the frozen base,
then a fresh cycle once the backbone stages are unfrozen, so they start at a high, warmed-up learning rate instead of
wherever the first cycle had decayed to.

Any ``torch.optim.lr_scheduler`` class can be used instead (``_target_: torch.optim.lr_scheduler.StepLR``); those are
stepped once per epoch unless ``model.scheduler_interval=step``.

The settings have no defaults here: ``conf/model/scheduler/*.yaml`` is their one source.
"""

from __future__ import annotations

import bisect
import functools
import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from catdog.errors import ConfigError

#: Arguments the module fills in; the config must not set them.
CONTEXT_ARGS = ("total_steps", "steps_per_epoch", "unfreeze_step")


def catdog_schedule(fn):
    """Mark ``fn`` as a schedule factory that takes the :data:`CONTEXT_ARGS` and is stepped every optimizer step."""
    fn.catdog_schedule = True
    return fn


def is_catdog_schedule(factory) -> bool:
    fn = factory.func if isinstance(factory, functools.partial) else factory
    return bool(getattr(fn, "catdog_schedule", False))


def phase_bounds(total_steps: int, unfreeze_step: int | None, restart: bool) -> list[int]:
    """Phase start steps: ``[0]``, or ``[0, unfreeze_step]`` when a restart at the unfreeze falls inside the run."""
    if restart and unfreeze_step is not None and 0 < unfreeze_step < total_steps:
        return [0, int(unfreeze_step)]
    return [0]


def _phase(step: int, starts: list[int], total_steps: int) -> tuple[int, int]:
    """(position within the phase, length of the phase) of ``step``."""
    i = bisect.bisect_right(starts, step) - 1
    end = starts[i + 1] if i + 1 < len(starts) else total_steps
    return step - starts[i], max(1, end - starts[i])


def _cos(start: float, end: float, frac: float) -> float:
    """Cosine interpolation from ``start`` (frac 0) to ``end`` (frac 1)."""
    frac = min(max(frac, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * frac))


def warmup_cosine_factor(
    step: int,
    *,
    starts: list[int],
    total_steps: int,
    warmup_steps: int,
    warmup_start: float,
    min_lr_ratio: float,
    decay: bool,
) -> float:
    """Linear warmup from ``warmup_start`` to 1 over ``warmup_steps``, then cosine to ``min_lr_ratio`` at the phase
    end (or flat at 1 when ``decay`` is false)."""
    pos, length = _phase(step, starts, total_steps)
    warm = min(warmup_steps, length - 1)
    if pos < warm:
        return warmup_start + (1.0 - warmup_start) * pos / warm
    if not decay:
        return 1.0
    return _cos(1.0, min_lr_ratio, (pos - warm) / max(1, length - warm))


def one_cycle_factor(
    step: int, *, starts: list[int], total_steps: int, pct_start: float, div_factor: float, final_div_factor: float
) -> float:
    """``torch.optim.lr_scheduler.OneCycleLR``'s cosine shape as a multiplier of each group's own learning rate:
    from ``1/div_factor`` up to 1 over ``pct_start`` of the phase, then down to ``1/(div_factor*final_div_factor)``
    at its last step."""
    pos, length = _phase(step, starts, total_steps)
    up = max(1, int(round(pct_start * length)))
    low, final = 1.0 / div_factor, 1.0 / (div_factor * final_div_factor)
    if pos < up:
        return _cos(low, 1.0, pos / up)
    return _cos(1.0, final, (pos - up) / max(1, length - 1 - up))  # the final value at the phase's last step


def _check_context(total_steps: int, steps_per_epoch: int) -> None:
    if not isinstance(total_steps, int) or total_steps < 1 or math.isinf(total_steps):
        raise ConfigError(
            f"a per-step learning-rate schedule needs a finite number of steps (trainer.max_epochs), got {total_steps}"
        )
    if steps_per_epoch < 1:
        raise ConfigError(f"a per-step learning-rate schedule needs at least one step per epoch, got {steps_per_epoch}")


def _lambda_lr(
    optimizer, factor, *, total_steps: int, steps_per_epoch: int, unfreeze_step: int | None, restart: bool, **settings
) -> LambdaLR:
    """``LambdaLR`` with the multiplier ``factor(step, starts=..., total_steps=..., **settings)``, after checks."""
    _check_context(total_steps, steps_per_epoch)
    check_schedule_args(restart_on_unfreeze=restart, **settings)
    if "warmup_epochs" in settings:
        settings["warmup_steps"] = int(round(settings.pop("warmup_epochs") * steps_per_epoch))
    starts = phase_bounds(total_steps, unfreeze_step, restart)
    return LambdaLR(optimizer, functools.partial(factor, starts=starts, total_steps=total_steps, **settings))


@catdog_schedule
def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    steps_per_epoch: int,
    unfreeze_step: int | None = None,
    warmup_epochs: float,
    warmup_start: float,
    min_lr_ratio: float,
    restart_on_unfreeze: bool,
) -> LambdaLR:
    """Warmup for ``warmup_epochs`` (fractions allowed), then per-step cosine decay to ``min_lr_ratio`` x lr."""
    return _lambda_lr(
        optimizer, warmup_cosine_factor, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
        unfreeze_step=unfreeze_step, restart=restart_on_unfreeze, warmup_epochs=warmup_epochs,
        warmup_start=warmup_start, min_lr_ratio=min_lr_ratio, decay=True,
    )  # fmt: skip


@catdog_schedule
def warmup_constant(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    steps_per_epoch: int,
    unfreeze_step: int | None = None,
    warmup_epochs: float,
    warmup_start: float,
    restart_on_unfreeze: bool,
) -> LambdaLR:
    """Warmup for ``warmup_epochs``, then the configured learning rate unchanged."""
    return _lambda_lr(
        optimizer, warmup_cosine_factor, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
        unfreeze_step=unfreeze_step, restart=restart_on_unfreeze, warmup_epochs=warmup_epochs,
        warmup_start=warmup_start, min_lr_ratio=1.0, decay=False,
    )  # fmt: skip


@catdog_schedule
def one_cycle(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    steps_per_epoch: int,
    unfreeze_step: int | None = None,
    pct_start: float,
    div_factor: float,
    final_div_factor: float,
    restart_on_unfreeze: bool,
) -> LambdaLR:
    """The one-cycle policy (Smith; fastai's ``fit_one_cycle``): up, then down, once per phase. The configured
    ``lr`` is the peak."""
    return _lambda_lr(
        optimizer, one_cycle_factor, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
        unfreeze_step=unfreeze_step, restart=restart_on_unfreeze, pct_start=pct_start, div_factor=div_factor,
        final_div_factor=final_div_factor,
    )  # fmt: skip


def check_schedule_args(**values) -> None:
    """Range checks for the schedule settings given (``model.scheduler.<name>``); unknown names are ignored."""
    rules = {
        "warmup_epochs": (lambda v: v >= 0, ">= 0"),
        "warmup_start": (lambda v: 0 <= v <= 1, "in [0, 1]"),
        "min_lr_ratio": (lambda v: 0 <= v <= 1, "in [0, 1]"),
        "pct_start": (lambda v: 0 < v < 1, "in (0, 1)"),
        "div_factor": (lambda v: v >= 1, ">= 1"),
        "final_div_factor": (lambda v: v >= 1, ">= 1"),
    }
    for name, value in values.items():
        if name == "restart_on_unfreeze" and not isinstance(value, bool):
            raise ConfigError(f"model.scheduler.restart_on_unfreeze must be true or false, got {value!r}")
        if name not in rules:
            continue
        ok, allowed = rules[name]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not ok(value):
            raise ConfigError(f"model.scheduler.{name} must be a number {allowed}, got {value!r}")
