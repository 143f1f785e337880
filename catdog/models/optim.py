"""Optimizer and learning-rate scheduler from Hydra ``_partial_`` targets, with timm-style weight-decay groups.

``model.optimizer`` is any ``torch.optim`` optimizer (``conf/model/optimizer/*.yaml``: sgd, adamw, adam; or a
``_target_`` of your own), ``model.scheduler`` any schedule of :mod:`catdog.models.schedules` or
``torch.optim.lr_scheduler`` (``conf/model/scheduler/*.yaml``), or null for a constant learning rate. Both are checked
against the target's signature before any data is read, so a setting the optimizer does not take fails at once,
naming it.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Iterable
from typing import Any

import hydra.utils
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from catdog.errors import ConfigError
from catdog.models.schedules import CONTEXT_ARGS, check_schedule_args, is_catdog_schedule

SCHEDULER_INTERVALS = (None, "step", "epoch")
log = logging.getLogger(__name__)


def fused_on_cuda(factory: functools.partial, device: torch.device) -> dict:
    """``{"fused": True}`` for a torch optimizer that has a fused CUDA kernel, on CUDA, when the configuration sets
    neither ``fused`` nor ``foreach`` (one kernel launch per step for all parameters); else nothing."""
    if device.type != "cuda" or {"fused", "foreach"} & set(factory.keywords):
        return {}
    try:
        accepts = "fused" in inspect.signature(factory.func).parameters
    except (TypeError, ValueError):
        return {}
    return {"fused": True} if accepts and factory.func.__module__.startswith("torch.optim") else {}


def compile_network(net: torch.nn.Module, shapes: int):
    """``torch.compile(net)`` (default mode, static shapes) with room for ``shapes`` compiled graphs, so that the
    progressive sizes, train and eval mode and a last partial batch each compile once and never fall back to eager."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(int(getattr(config, name)), shapes))
    log.info("model.compile: torch.compile of %s (up to %d input shapes)", type(net).__name__, shapes)
    return torch.compile(net, dynamic=False)


def plain(value: Any) -> Any:
    """OmegaConf containers -> plain Python (resolved), so configs can be checked, bound to signatures and stored in
    checkpoints that load with ``weights_only``; anything else unchanged."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _factory(cfg: Any, key: str) -> functools.partial:
    """``cfg`` (a dict with ``_target_``) as a partial of its target; errors name ``key``."""
    cfg = plain(cfg)
    if not isinstance(cfg, dict) or "_target_" not in cfg:
        raise ConfigError(
            f"{key} must be a config with _target_ (e.g. {key}._target_=torch.optim.SGD, or pick a file with "
            f"{key.replace('.', '/')}=NAME), got {cfg!r}"
        )
    target = cfg["_target_"]
    try:
        factory = hydra.utils.instantiate({**cfg, "_partial_": True})
    except Exception as exc:  # noqa: BLE001 - Hydra wraps import errors and bad arguments alike
        cause = exc.__cause__ or exc
        raise ConfigError(f"{key}._target_={target}: cannot be used ({type(cause).__name__}: {cause})") from None
    if not isinstance(factory, functools.partial):
        raise ConfigError(f"{key}._target_={target} is not a class or function")
    return factory


def _check_arguments(factory: functools.partial, key: str, first: dict, hint: str = "") -> None:
    """The configured keywords (plus ``first``, what catdog passes) must bind to the target's signature."""
    try:
        inspect.signature(factory.func).bind(**first, **factory.keywords)
    except TypeError as exc:
        name = f"{factory.func.__module__}.{factory.func.__qualname__}"
        raise ConfigError(f"{key}: {name} does not accept these settings ({exc}){hint}") from None


def optimizer_factory(cfg: Any) -> functools.partial:
    """``model.optimizer`` -> a factory ``optimizer(param_groups)`` (its values checked by :func:`check_optimizer`)."""
    if cfg is None:
        raise ConfigError("model.optimizer is not set: pick one with model/optimizer=sgd (or adamw, adam)")
    return _factory(cfg, "model.optimizer")


def check_optimizer(cfg: Any) -> None:
    """``model.optimizer``: a known optimizer taking the given arguments, ``lr`` > 0, ``weight_decay`` >= 0."""
    factory = optimizer_factory(cfg)
    hint = (
        ". To switch optimizers pick the group, model/optimizer=adamw (or sgd, adam), which brings that optimizer's "
        "own settings; remove one setting with ~model.optimizer.<name>"
    )
    _check_arguments(factory, "model.optimizer", {"params": []}, hint)
    lr = factory.keywords.get("lr")
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or lr <= 0:
        raise ConfigError(f"model.optimizer.lr must be a number > 0, got {lr!r}")
    wd = factory.keywords.get("weight_decay", 0.0)
    if not isinstance(wd, (int, float)) or isinstance(wd, bool) or wd < 0:
        raise ConfigError(f"model.optimizer.weight_decay must be a number >= 0, got {wd!r}")


def scheduler_factory(cfg: Any) -> functools.partial | None:
    """``model.scheduler`` -> a factory ``scheduler(optimizer, ...)``, or None for a constant learning rate (its values
    checked by :func:`check_scheduler`)."""
    if cfg is None or cfg in ("none", "null"):
        return None
    return _factory(cfg, "model.scheduler")


def check_scheduler(cfg: Any, interval: str | None = None) -> None:
    """``model.scheduler`` and ``model.scheduler_interval``: a known schedule taking the given arguments (catdog's
    own schedules: stepped per optimizer step, their step counts left to catdog)."""
    if interval not in SCHEDULER_INTERVALS:
        raise ConfigError(f"model.scheduler_interval must be one of {list(SCHEDULER_INTERVALS)}, got {interval!r}")
    factory = scheduler_factory(cfg)
    if factory is None:
        return
    first: dict[str, Any] = {"optimizer": torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)}
    if is_catdog_schedule(factory):
        given = sorted(set(CONTEXT_ARGS) & set(factory.keywords))
        if given:
            raise ConfigError(f"model.scheduler sets {given}, which catdog fills in from the trainer; remove them")
        if interval == "epoch":
            raise ConfigError(
                "model.scheduler_interval=epoch: catdog.models.schedules are stepped every optimizer step"
            )
        first.update({name: 1 for name in CONTEXT_ARGS})
        _check_arguments(factory, "model.scheduler", first)
        check_schedule_args(**factory.keywords)
        return
    _check_arguments(factory, "model.scheduler", first)


def param_groups(
    named_groups: Iterable[tuple[str, float, Iterable[tuple[str, torch.nn.Parameter]]]],
    weight_decay: float,
    decay_bias_and_norm: bool = False,
) -> list[dict]:
    """Optimizer groups for ``(name, lr, named parameters)`` triples.

    Unless ``decay_bias_and_norm``, each group is split as timm's ``param_groups_weight_decay`` does: biases and
    normalization weights (every parameter with fewer than two dimensions) go to ``<name>_no_decay`` with weight decay
    0, the rest keep ``weight_decay``. Empty groups are left out.
    """
    groups = []
    for name, lr, named in named_groups:
        named = list(named)
        if decay_bias_and_norm:
            split = [(name, [p for _, p in named], weight_decay)]
        else:
            decay = [p for n, p in named if p.ndim > 1 and not n.endswith(".bias")]
            no_decay = [p for n, p in named if p.ndim <= 1 or n.endswith(".bias")]
            split = [(name, decay, weight_decay), (f"{name}_no_decay", no_decay, 0.0)]
        groups += [{"params": ps, "lr": lr, "weight_decay": wd, "name": n} for n, ps, wd in split if ps]
    return groups


def build_scheduler(
    factory: functools.partial,
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    steps_per_epoch: int,
    unfreeze_step: int | None,
    interval: str | None,
    monitor: str = "val/logloss",
) -> dict:
    """Lightning's ``lr_scheduler`` dict: catdog schedules per step with the run's context, others per ``interval``
    (default epoch); ``ReduceLROnPlateau`` watches ``monitor``."""
    if is_catdog_schedule(factory):
        scheduler = factory(
            optimizer, total_steps=total_steps, steps_per_epoch=steps_per_epoch, unfreeze_step=unfreeze_step
        )
        return {"scheduler": scheduler, "interval": "step"}
    scheduler = factory(optimizer)
    config = {"scheduler": scheduler, "interval": interval or "epoch"}
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        config["monitor"] = monitor
    return config
