"""Weight averaging (``averaging=ema | swa``, ``conf/averaging/``): Lightning's callbacks with what staged,
regularized training needs.

- :class:`EMAWeightAveraging`: an exponential moving average whose decay warms up with the number of updates (timm's
  ``ModelEmaV3``: ``min(decay, 1 - (1 + n) ** -warmup_power)``), so the average forgets the random or pretrained start
  within the first epochs instead of after ``1 / (1 - decay)`` steps; validation follows training from the start.
- :class:`StochasticWeightAveraging`: ``swa_lrs`` is the head's SWA learning rate and every parameter group keeps its
  ratio to it (the backbone trains at ``model.finetune.lr_factor`` x), and the extra pass that re-estimates the
  BatchNorm statistics of the averaged weights sees plain batches (no MixUp / CutMix).
"""

from __future__ import annotations

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.callbacks import EMAWeightAveraging as LightningEMA
from pytorch_lightning.callbacks import StochasticWeightAveraging as LightningSWA

from catdog.errors import ConfigError
from catdog.models.stages import uses_batchnorm


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_ema(decay, warmup_power) -> None:
    """``callbacks.averaging.decay`` in [0, 1), ``warmup_power`` in (0, 1] or null."""
    if not _number(decay) or not 0.0 <= decay < 1.0:
        raise ConfigError(f"callbacks.averaging.decay must be a number in [0, 1), got {decay!r}")
    if warmup_power is not None and not (_number(warmup_power) and 0 < warmup_power <= 1):
        raise ConfigError(f"callbacks.averaging.warmup_power must be a number in (0, 1] or null, got {warmup_power!r}")


def ema_decay(decay: float, updates: int, warmup_power: float | None) -> float:
    """The decay of the EMA update that follows ``updates`` earlier ones: ``decay``, or with a warm-up
    ``min(decay, 1 - (1 + updates) ** -warmup_power)`` (0 before the first, which copies the weights)."""
    if warmup_power is None:
        return decay
    return min(decay, 1.0 - (1.0 + updates) ** -warmup_power)


class EMAWeightAveraging(LightningEMA):
    """Lightning's EMA of the weights (and BatchNorm statistics) with a decay warm-up (``warmup_power``, null: the
    constant ``decay`` from the first step). Validation, ``best.ckpt`` and predictions use the average."""

    def __init__(self, decay: float = 0.999, warmup_power: float | None = 0.75, **kwargs):
        super().__init__(decay=decay, **kwargs)
        self.decay = float(decay)
        self.warmup_power = None if warmup_power is None else float(warmup_power)
        # Updates so far (the AveragedModel's n_averaged, counted here so that no step waits for the device).
        self.updates = 0
        self._kwargs.pop("avg_fn", None)
        self._kwargs["multi_avg_fn"] = self._update

    @torch.no_grad()
    def _update(self, averaged: list[torch.Tensor], current: list[torch.Tensor], _n_averaged) -> None:
        if not (torch.is_floating_point(averaged[0]) or torch.is_complex(averaged[0])):
            for a, c in zip(averaged, current):  # counters (BatchNorm's num_batches_tracked) follow the model
                a.copy_(c)
            return
        torch._foreach_lerp_(averaged, current, 1.0 - ema_decay(self.decay, self.updates, self.warmup_power))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        before = self._latest_update_step
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self.updates += self._latest_update_step != before

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        before = self._latest_update_epoch
        super().on_train_epoch_end(trainer, pl_module)
        self.updates += self._latest_update_epoch != before

    def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        super().on_load_checkpoint(trainer, pl_module, checkpoint)
        if self._average_model is not None:
            self.updates = int(self._average_model.n_averaged)


class StochasticWeightAveraging(LightningSWA):
    """Lightning's SWA with one SWA learning rate per parameter group (``swa_lrs`` x the group's ``lr_scale``, which
    :class:`catdog.models.module.ClassifierModule` sets: 1 for the head, ``model.finetune.lr_factor`` for the
    backbone), and a BatchNorm statistics pass without MixUp / CutMix (the module's ``statistics_pass``)."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._initialized and isinstance(self._swa_lrs, float):
            groups = trainer.optimizers[0].param_groups
            self._swa_lrs = [self._swa_lrs * float(g.get("lr_scale", 1.0)) for g in groups]
        super().on_train_epoch_start(trainer, pl_module)
        pl_module.statistics_pass = bool(
            self._model_contains_batch_norm and self._max_epochs != -1 and trainer.current_epoch == self.swa_end + 1
        )

    def on_train_epoch_end(self, trainer: pl.Trainer, *args) -> None:
        super().on_train_epoch_end(trainer, *args)
        trainer.lightning_module.statistics_pass = False


def check_averaging(cfg: DictConfig) -> None:
    """The averaging callback must exist in the installed Lightning; SWA recomputes every BatchNorm layer's
    statistics, which would wipe those of frozen (pretrained) blocks."""
    averaging = (cfg.get("callbacks") or {}).get("averaging")
    if averaging is None:
        return
    target = str(averaging.get("_target_", ""))
    try:
        hydra.utils.get_class(target)
    except Exception:  # noqa: BLE001 - any import failure gets the same message
        raise ConfigError(
            f"callbacks.averaging._target_={target} cannot be imported: weight averaging needs pytorch-lightning "
            f">= 2.6 (installed {pl.__version__}); pip install -U 'pytorch-lightning>=2.6'"
        ) from None
    if target.endswith("EMAWeightAveraging"):
        check_ema(averaging.get("decay", 0.999), averaging.get("warmup_power"))
    if not target.endswith("StochasticWeightAveraging"):
        return
    finetune = cfg.model.get("finetune") or {}
    if uses_batchnorm(cfg.model.arch) and finetune.get("blocks", -1) != -1:
        raise ConfigError(
            f"averaging=swa resets the BatchNorm statistics of every layer, but model.finetune.blocks="
            f"{finetune.get('blocks')} keeps some blocks frozen (their ImageNet statistics would be lost); "
            "use averaging=ema, or model.finetune.blocks=-1"
        )
