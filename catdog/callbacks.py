"""Lightning callbacks that make runs reproducible and stop them cleanly."""

from __future__ import annotations

import random

import numpy as np
import pytorch_lightning as pl
import torch


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
