"""Callbacks that inject faults into a training run (imported by subprocesses through Hydra ``_target_``)."""

import os
import signal

import pytorch_lightning as pl
import torch


class KillAt(pl.Callback):
    """SIGKILL this very process at the start of batch ``batch`` of epoch ``epoch``: no cleanup, no final save."""

    def __init__(self, epoch: int, batch: int):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)


class PoisonAt(pl.Callback):
    """Fill the head's weights with NaN at the start of epoch ``epoch``: the next loss is NaN."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            with torch.no_grad():
                for p in pl_module.net.head.parameters():
                    p.fill_(float("nan"))


class InterruptAt(pl.Callback):
    """Raise KeyboardInterrupt (as Ctrl-C does) at the start of batch ``batch`` of epoch ``epoch``."""

    def __init__(self, epoch: int, batch: int = 0):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise KeyboardInterrupt


class WorseEachEpoch(pl.Callback):
    """Report a validation log loss that grows every epoch (checkpoint callbacks run after this one): the best
    epoch is then the first."""

    def on_validation_end(self, trainer, pl_module):
        trainer.callback_metrics["val/logloss"] = torch.tensor(1.0 + trainer.current_epoch)


class NudgeRank(pl.Callback):
    """Shift one parameter of process ``rank`` at the start of epoch ``epoch``: the replicas then differ."""

    def __init__(self, rank: int = 1, epoch: int = 0):
        self.rank, self.epoch = rank, epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.global_rank == self.rank and trainer.current_epoch == self.epoch:
            with torch.no_grad():
                next(pl_module.parameters()).add_(1e-3)


class SaveStartWeights(pl.Callback):
    """Save the weights training starts from to ``path`` (rank zero)."""

    def __init__(self, path: str):
        self.path = path

    def on_train_start(self, trainer, pl_module):
        if trainer.global_rank == 0:
            torch.save({k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}, self.path)
