"""The LightningModule: a VGG16(-BN) classifier with staged fine-tuning and device-side normalization."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import hydra.utils
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.nn.modules.batchnorm import _BatchNorm

from catdog.errors import CatdogError, ConfigError
from catdog.metrics import accuracy, log_loss
from catdog.models import build_network
from catdog.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize
from catdog.tta import average_views, check_tta, make_views

log = logging.getLogger(__name__)

# Frozen blocks' BatchNorm layers are in eval mode on purpose (see ClassifierModule); Lightning warns about it.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")

DEFAULT_OPTIMIZER = {"_target_": "torch.optim.SGD", "lr": 1e-3, "momentum": 0.9, "weight_decay": 5e-4}
DEFAULT_FINETUNE = {"head_epochs": 1, "blocks": 1, "lr_factor": 0.1}
SCHEDULERS = (None, "none", "cosine")


def _plain(value: Any) -> Any:
    """OmegaConf containers -> plain Python, so checkpoints hold only primitives (loadable with weights_only)."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def check_training_args(optimizer: dict | None, finetune: dict | None, scheduler: str | None) -> tuple[dict, dict]:
    """Validate ``model.optimizer``, ``model.finetune`` and ``model.scheduler`` without building anything; return
    the optimizer and fine-tuning settings completed with their defaults."""
    optimizer = {**DEFAULT_OPTIMIZER, **(_plain(optimizer) or {})}
    finetune = {**DEFAULT_FINETUNE, **(_plain(finetune) or {})}
    if scheduler not in SCHEDULERS:
        raise ConfigError(f"model.scheduler must be one of {list(SCHEDULERS)}, got {scheduler!r}")
    lr = optimizer.get("lr")
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or lr <= 0:
        raise ConfigError(f"model.optimizer.lr must be a number > 0, got {lr!r}")
    if "_target_" not in optimizer:
        raise ConfigError("model.optimizer needs _target_ (e.g. torch.optim.SGD)")
    head_epochs, blocks, factor = finetune["head_epochs"], finetune["blocks"], finetune["lr_factor"]
    if not isinstance(head_epochs, int) or head_epochs < 0:
        raise ConfigError(f"model.finetune.head_epochs must be an integer >= 0, got {head_epochs!r}")
    if not isinstance(blocks, int) or not (0 <= blocks <= 5 or blocks == -1):
        raise ConfigError(f"model.finetune.blocks must be 0..5 or -1 (all), got {blocks!r}")
    if not isinstance(factor, (int, float)) or factor <= 0:
        raise ConfigError(f"model.finetune.lr_factor must be a number > 0, got {factor!r}")
    return optimizer, finetune


class NonFiniteLossError(CatdogError, FloatingPointError):
    """The training loss became NaN or infinite."""


class ClassifierModule(pl.LightningModule):
    """Fine-tunes a VGG16(-BN) on ``classes``.

    Staged fine-tuning (``finetune``): for ``head_epochs`` epochs only the head trains on the frozen conv base; then the
    last ``blocks`` conv blocks are unfrozen and train at ``lr * lr_factor``. The optimizer holds every param group from
    the start (frozen parameters have no gradient, so they are not updated), so resuming mid-run needs no special case.
    BatchNorm layers of frozen blocks stay in eval mode: they keep the pretrained running statistics.
    """

    def __init__(
        self,
        classes: Sequence[str],
        arch: str = "vgg16_bn",
        weights: str | None = None,
        head: str = "small",
        head_hidden: int = 256,
        dropout: float = 0.5,
        width: float = 1.0,
        optimizer: dict | None = None,
        scheduler: str | None = None,
        finetune: dict | None = None,
        label_smoothing: float = 0.0,
        image_size: int = 224,
        crop_pct: float = 0.875,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        channels_last: bool = True,
        pretrained: str | None = None,
    ):
        super().__init__()
        optimizer, finetune = check_training_args(optimizer, finetune, scheduler)
        classes = list(_plain(classes))
        self.save_hyperparameters(
            {
                "classes": classes,
                "arch": arch,
                "weights": _plain(weights),
                "head": head,
                "head_hidden": int(head_hidden),
                "dropout": float(dropout),
                "width": float(width),
                "optimizer": optimizer,
                "scheduler": scheduler,
                "finetune": finetune,
                "label_smoothing": float(label_smoothing),
                "image_size": int(image_size),
                "crop_pct": float(crop_pct),
                "mean": [float(v) for v in _plain(mean)],
                "std": [float(v) for v in _plain(std)],
                "channels_last": bool(channels_last),
                # Where the initial weights came from (informational; set in saved checkpoints).
                "pretrained": _plain(pretrained) if pretrained is not None else _plain(weights),
            }
        )
        self.net = build_network(arch, len(classes), weights, head, head_hidden, dropout, width)
        self.register_buffer("mean", torch.tensor(self.hparams.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.hparams.std).view(1, -1, 1, 1), persistent=False)
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        # (probabilities, targets, dataset indices) of the last full validation pass, for out-of-fold files.
        self.last_validation: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    # ----- structure -----------------------------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return list(self.hparams.classes)

    @property
    def backbone(self) -> torch.nn.Module:
        return self.net.backbone

    @property
    def head(self) -> torch.nn.Module:
        return self.net.head

    def _finetune_blocks(self) -> list[torch.nn.Module]:
        n = int(self.hparams.finetune["blocks"])
        blocks = self.net.blocks()
        return blocks if n == -1 else blocks[len(blocks) - n :] if n else []

    def apply_stage(self, epoch: int) -> None:
        """Freeze or unfreeze the backbone for ``epoch``: a pure function of the epoch, so resume needs no state."""
        unfrozen = epoch >= int(self.hparams.finetune["head_epochs"])
        trainable = {id(p) for b in self._finetune_blocks() for p in b.parameters()} if unfrozen else set()
        for p in self.net.backbone.parameters():
            p.requires_grad_(id(p) in trainable)
        self._freeze_bn_stats()

    def _freeze_bn_stats(self) -> None:
        """BatchNorm of frozen blocks in eval mode (pretrained statistics), of trainable blocks as the module is."""
        for m in self.net.backbone.modules():
            if isinstance(m, _BatchNorm):
                frozen = m.weight is not None and not m.weight.requires_grad
                m.train(self.training and not frozen)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            self._freeze_bn_stats()
        return self

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Saved weights make the initial ones irrelevant: ``weights=None`` lets ``load_from_checkpoint`` rebuild
        the model offline, and ``pretrained`` keeps where training started."""
        checkpoint["hyper_parameters"] = {**checkpoint["hyper_parameters"], "weights": None}

    # ----- forward -------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = normalize(x, self.mean, self.std)
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def predict_proba(self, x: torch.Tensor, tta: int = 0) -> torch.Tensor:
        """Class probabilities, averaged over the plain pass and ``tta`` augmented views in one batched pass."""
        views = make_views(x, check_tta(tta))
        probs = F.softmax(self(views).float(), dim=1)
        return average_views(probs, tta + 1)

    # ----- training ------------------------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        ft = self.hparams.finetune
        if self.hparams.pretrained is None and (ft["head_epochs"] > 0 or ft["blocks"] != -1):
            log.warning(
                "model.weights=null with staged fine-tuning (head_epochs=%s, blocks=%s): random conv layers stay "
                "frozen for a while or for ever; to train from scratch set model.finetune.head_epochs=0 "
                "model.finetune.blocks=-1 (or use experiment=vgg16_bn_scratch)",
                ft["head_epochs"], ft["blocks"],
            )  # fmt: skip
        self.apply_stage(self.current_epoch)

    def on_train_epoch_start(self) -> None:
        self.apply_stage(self.current_epoch)
        head_epochs = int(self.hparams.finetune["head_epochs"])
        if self.current_epoch == head_epochs and head_epochs > 0 and self._finetune_blocks():
            log.info(
                "epoch %d: unfreezing the last %s conv block(s)", self.current_epoch, self.hparams.finetune["blocks"]
            )

    def training_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        if x.numel() == 0:  # every image of the batch was unreadable and skipped
            return None
        logits = self(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.hparams.label_smoothing)
        if not torch.isfinite(loss):
            lrs = ", ".join(f"{g['lr']:.3g}" for g in self.trainer.optimizers[0].param_groups) if self._trainer else "?"
            raise NonFiniteLossError(
                f"training loss is {loss.item()} at epoch {self.current_epoch}, step {self.global_step} "
                f"(learning rates {lrs}); the run stopped and its checkpoints are those of the last good epoch. "
                "Lower model.optimizer.lr, or use precision=32-true to rule out overflow."
            )
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(y))
        self.log("train/acc", (logits.argmax(1) == y).float().mean(), on_epoch=True, batch_size=len(y))
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        if x.numel() == 0:
            return
        probs = F.softmax(self(x).float(), dim=1)
        self._val_outputs.append((probs.detach().cpu(), y.detach().cpu(), batch[2].detach().cpu()))

    def on_validation_epoch_end(self) -> None:
        if not self._val_outputs:
            return
        probs, targets, indices = (torch.cat(t) for t in zip(*self._val_outputs))
        self._val_outputs = []
        if not self.trainer.sanity_checking:
            self.last_validation = (probs, targets, indices)
        self.log("val/logloss", log_loss(probs, targets), prog_bar=True)
        self.log("val/acc", accuracy(probs, targets), prog_bar=True)

    def configure_optimizers(self):
        opt_cfg = dict(self.hparams.optimizer)
        lr = float(opt_cfg["lr"])
        factor = float(self.hparams.finetune["lr_factor"])
        groups = [{"params": list(self.net.head.parameters()), "lr": lr, "name": "head"}]
        block_params = [p for b in self._finetune_blocks() for p in b.parameters()]
        if block_params:
            groups.append({"params": block_params, "lr": lr * factor, "name": "backbone"})
        optimizer = hydra.utils.get_class(opt_cfg.pop("_target_"))(groups, **opt_cfg)
        if self.hparams.scheduler == "cosine":
            max_epochs = (
                self.trainer.max_epochs
                if self.trainer and self.trainer.max_epochs and self.trainer.max_epochs > 0
                else 1
            )
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_epochs)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
        return optimizer
