"""Lightning callbacks: reproducible epochs, and progress a log file can hold."""

from __future__ import annotations

import logging
import random
import sys
import time

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar

log = logging.getLogger(__name__)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class EpochSeed(pl.Callback):
    """Reseed every RNG at each training epoch's start from (seed, epoch).

    Shuffling, worker seeds, augmentation and dropout of epoch ``e`` then depend only on ``seed`` and ``e``, so a run
    resumed from ``last.ckpt`` continues exactly as the uninterrupted run would have.
    """

    def __init__(self, seed: int = 42):
        self.seed = int(seed)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seed_all(self.seed * 10_007 + trainer.current_epoch)


def interactive(stream=None) -> bool:
    """Whether ``stream`` (default stderr, where progress bars draw) is a terminal."""
    stream = stream or sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress_bar(stream=None) -> ProgressBar:
    """The progress display for training: a bar in a terminal (rich when installed), log lines otherwise."""
    if not interactive(stream):
        return LogProgress()
    try:
        import rich  # noqa: F401
    except ImportError:
        return TQDMProgressBar()
    return RichProgressBar()


class LogProgress(ProgressBar):
    """Lightning's progress display as plain log lines: every ``every_s`` seconds during an epoch
    (``epoch 3/17: batch 120/250, 212 images/s, train/loss 0.4132``) and once at its end with the epoch's metrics."""

    def __init__(self, every_s: float = 30.0):
        super().__init__()
        self.every_s = float(every_s)
        self._enabled = True
        self._start = self._last = 0.0
        self._loss_sum, self._loss_n = 0.0, 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _epochs(self, trainer: pl.Trainer) -> str:
        total = trainer.max_epochs - 1 if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        return f"epoch {trainer.current_epoch}/{total}"

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = self._last = time.perf_counter()
        self._loss_sum, self._loss_n = 0.0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            # summed on the device: the value is read only when a line is printed
            self._loss_sum, self._loss_n = self._loss_sum + loss.detach(), self._loss_n + 1
        now = time.perf_counter()
        if not self._enabled or now - self._last < self.every_s:
            return
        self._last = now
        done = batch_idx + 1
        total = self.total_train_batches
        images = done * (len(batch[1]) if isinstance(batch, (list, tuple)) and len(batch) > 1 else 1)
        log.info(
            "%s: batch %d/%s, %.0f images/s%s", self._epochs(trainer), done,
            total if isinstance(total, int) else "?", images / max(now - self._start, 1e-9), self._train_loss(),
        )  # fmt: skip

    def _train_loss(self) -> str:
        """The mean training loss of this epoch so far (the validation of an epoch runs before Lightning's own
        epoch mean of ``train/loss`` exists)."""
        return f", train/loss {float(self._loss_sum) / self._loss_n:.4f}" if self._loss_n else ""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._enabled or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        metrics = trainer.callback_metrics
        shown = self._train_loss()
        shown += "".join(f", {k} {float(metrics[k]):.4f}" for k in ("val/logloss", "val/acc") if k in metrics)
        log.info("%s: %s (%.0f s)", self._epochs(trainer), shown[2:], time.perf_counter() - self._start)
