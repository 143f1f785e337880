"""The LightningModule: a torchvision classifier with staged fine-tuning and device-side normalization."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from catdog.checkpoints import upgrade_state_dict
from catdog.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_mixer,
    check_mixing,
    complete_mixing,
    normalize,
    progressive_size,
)
from catdog.distributed import check_replicas, gather_predictions, note_ddp_parameters, rewrap_ddp
from catdog.errors import CatdogError, ConfigError, check_known_keys
from catdog.metrics import accuracy, log_loss
from catdog.models.calibration import checkpoint_temperature
from catdog.models.class_weights import weighted_cross_entropy
from catdog.models.distillation import distillation_loss, split_targets
from catdog.models.networks import Classifier, build_network, format_count
from catdog.models.optim import (
    build_scheduler,
    check_optimizer,
    check_scheduler,
    compile_network,
    fused_on_cuda,
    optimizer_factory,
    param_groups,
    plain,
    scheduler_factory,
)
from catdog.models.schedules import is_catdog_schedule
from catdog.models.tta import predict_views
from catdog.runs.resume import RUN_SETTINGS_KEY, check_schedule_length

log = logging.getLogger(__name__)

# Frozen blocks' BatchNorm layers are in eval mode on purpose (see ClassifierModule); Lightning warns about it.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")

#: Neutral fine-tuning when none is configured: every layer trains from the first epoch at the optimizer's lr.
NO_STAGES = {"head_epochs": 0, "blocks": -1, "lr_factor": 1.0}


def complete_finetune(finetune: dict | None) -> dict:
    """``model.finetune`` completed with the neutral values of :data:`NO_STAGES` for keys it leaves out."""
    return {**NO_STAGES, **(plain(finetune) or {})}


def check_finetune(finetune: dict | None) -> None:
    """``model.finetune``: known keys, ``head_epochs`` >= 0, ``blocks`` >= -1, ``lr_factor`` > 0."""
    finetune = complete_finetune(finetune)
    check_known_keys(finetune, sorted(NO_STAGES), "model.finetune")
    head_epochs, blocks, factor = finetune["head_epochs"], finetune["blocks"], finetune["lr_factor"]
    if not isinstance(head_epochs, int) or head_epochs < 0:
        raise ConfigError(f"model.finetune.head_epochs must be an integer >= 0, got {head_epochs!r}")
    if not isinstance(blocks, int) or isinstance(blocks, bool) or blocks < -1:
        raise ConfigError(f"model.finetune.blocks must be an integer >= 0 (last stages) or -1 (all), got {blocks!r}")
    if not isinstance(factor, (int, float)) or factor <= 0:
        raise ConfigError(f"model.finetune.lr_factor must be a number > 0, got {factor!r}")


def check_training_args(
    optimizer: Any, finetune: Any, scheduler: Any = None, scheduler_interval: str | None = None, mixing: Any = None
) -> None:
    """Validate ``model.optimizer``, ``model.scheduler``, ``model.finetune`` and ``model.mixing`` without building
    anything (before any data is read)."""
    check_optimizer(optimizer)
    check_scheduler(scheduler, scheduler_interval)
    check_finetune(finetune)
    check_mixing(plain(mixing))


class _Unshared:
    """A slot that copies and pickles as empty: a deep copy of the module (weight averaging's copy) compiles its own
    network instead of sharing, or copying, the original's compiled one."""

    def __init__(self):
        self.value = None

    def __deepcopy__(self, memo):
        return _Unshared()

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.value = None


class NonFiniteLossError(CatdogError, FloatingPointError):
    """The training loss became NaN or infinite."""


class ClassifierModule(pl.LightningModule):
    """Fine-tunes a torchvision classifier (``arch``, :mod:`catdog.models.networks`) on ``classes``.

    Staged fine-tuning (``finetune``): for ``head_epochs`` epochs only the head trains on the frozen backbone; then the
    last ``blocks`` stages are unfrozen and train at ``lr * lr_factor``. The optimizer holds every param group from
    the start (frozen parameters have no gradient, so they are not updated), so resuming mid-run needs no special case.
    Every frozen part of the backbone runs in eval mode: BatchNorm keeps its pretrained running statistics, dropout
    and stochastic depth are off. LayerNorm has no statistics: frozen, its scale and shift just stay as they are.

    ``optimizer`` and ``scheduler`` are Hydra ``_partial_`` configs (:mod:`catdog.models.optim`); ``mixing`` turns on
    per-batch MixUp / CutMix. ``distill`` (alpha, temperature) trains on a teacher's probabilities besides the labels
    (:mod:`catdog.models.distillation`; the datamodule then gives every image a ``2K`` target). ``temperature`` (set
    after training by :mod:`catdog.models.calibration`) divides the logits of :meth:`predict_proba` when given.
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
        interpolation: str = "bilinear",
        optimizer: dict | None = None,
        scheduler: dict | None = None,
        scheduler_interval: str | None = None,
        decay_bias_and_norm: bool = False,
        finetune: dict | None = None,
        label_smoothing: float = 0.0,
        class_weights: Sequence[float] | None = None,
        mixing: dict | None = None,
        image_size: int = 224,
        crop_pct: float = 0.875,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        channels_last: bool = True,
        pretrained: str | None = None,
        compile: bool = False,
        distill: dict | None = None,
    ):
        super().__init__()
        finetune = complete_finetune(finetune)
        mixing = complete_mixing(plain(mixing))
        if not isinstance(compile, bool):
            raise ConfigError(f"model.compile must be true or false, got {compile!r}")
        classes = list(plain(classes))
        self.save_hyperparameters(
            {
                "classes": classes,
                "arch": arch,
                "weights": plain(weights),
                "head": head,
                "head_hidden": int(head_hidden),
                "dropout": float(dropout),
                "width": float(width),
                "optimizer": plain(optimizer),
                "scheduler": plain(scheduler),
                "scheduler_interval": scheduler_interval,
                "decay_bias_and_norm": bool(decay_bias_and_norm),
                "finetune": finetune,
                "label_smoothing": float(label_smoothing),
                "class_weights": [float(v) for v in class_weights] if class_weights is not None else None,
                "mixing": mixing,
                "image_size": int(image_size),
                "crop_pct": float(crop_pct),
                "interpolation": str(interpolation),
                "mean": [float(v) for v in plain(mean)],
                "std": [float(v) for v in plain(std)],
                "channels_last": bool(channels_last),
                "compile": compile,
                # distillation's loss (alpha, temperature; catdog.models.distillation), None without a teacher
                "distill": {"alpha": float(distill["alpha"]), "temperature": float(distill["temperature"])}
                if distill
                else None,
                # Where the initial weights came from (informational; set in saved checkpoints).
                "pretrained": plain(pretrained) if pretrained is not None else plain(weights),
            }
        )
        self.net: Classifier = build_network(
            arch, len(classes), weights, head, head_hidden, dropout, width, image_size=int(image_size)
        )
        stages = len(self.net.stages())
        if finetune["blocks"] > stages:
            raise ConfigError(
                f"model.finetune.blocks={finetune['blocks']}, but {arch} has {stages} stages "
                f"(-1 trains all): {self.net.describe()}"
            )
        self.register_buffer("mean", torch.tensor(self.hparams.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.hparams.std).view(1, -1, 1, 1), persistent=False)
        weights = self.hparams.class_weights
        self.register_buffer("class_weight", torch.tensor(weights) if weights else None, persistent=False)
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        # with a teacher every target is 2K wide (the label's distribution, then the teacher's): mixed alike
        self.mixer = build_mixer(mixing, len(classes) * (2 if distill else 1))
        self.temperature: float | None = None
        # True during the pass that re-estimates BatchNorm statistics for averaged weights (catdog.averaging): batches
        # are then not mixed.
        self.statistics_pass = False
        # Saved in every checkpoint and checked on resume (catdog.runs.resume): settings outside the model that the run
        # depends on (set by catdog.training), and the schedule's step counts (set by configure_optimizers).
        self.run_settings: dict = {}
        self._schedule: dict = {}
        self._restored_settings: dict | None = None
        self._epoch_clock = [0.0, 0.0, 0]
        # The first non-finite training loss (its step, -1 for none, and its value), kept on the device and read
        # every log_every_n_steps steps and before each validation: no step waits for the device to check it.
        self._nonfinite: tuple[torch.Tensor, torch.Tensor] | None = None
        # torch.compile'd network (model.compile), kept out of the module's children so checkpoints are unchanged
        self._compiled = _Unshared()
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        # (log-probabilities, targets, dataset indices) of the last full validation pass, for out-of-fold files and
        # temperature fitting.
        self.last_validation: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    # ----- structure -----------------------------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return list(self.hparams.classes)

    @property
    def head(self) -> torch.nn.Module:
        return self.net.head

    def _finetune_params(self) -> list[torch.nn.Parameter]:
        """The backbone parameters staged fine-tuning trains: those of the last ``blocks`` stages."""
        return self.net.stage_parameters(int(self.hparams.finetune["blocks"]))

    def apply_stage(self, epoch: int) -> None:
        """Freeze or unfreeze the backbone for ``epoch``: a pure function of the epoch, so resume needs no state.
        Under DDP the wrapper is rebuilt when this changes what trains, so that every trainable parameter's gradient
        is averaged over the processes (:func:`catdog.distributed.rewrap_ddp`)."""
        unfrozen = epoch >= int(self.hparams.finetune["head_epochs"])
        trainable = {id(p) for p in self._finetune_params()} if unfrozen else set()
        for _, p in self.net.backbone_named_parameters():
            p.requires_grad_(id(p) in trainable)
        self._freeze_modes()
        rewrap_ddp(self._trainer)

    def _freeze_modes(self) -> None:
        """Frozen parts in eval mode (BatchNorm statistics kept, no dropout / stochastic depth), the rest as the
        module is: top-down, every sub-tree whose parameters are all frozen is put in eval mode."""

        def visit(module: torch.nn.Module) -> None:
            params = list(module.parameters())
            if params and not any(p.requires_grad for p in params):
                module.train(False)
                return
            module.training = self.training
            for child in module.children():
                visit(child)

        visit(self.net)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            self._freeze_modes()
        return self

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = upgrade_state_dict(checkpoint["state_dict"])
        self.temperature = checkpoint_temperature(checkpoint)
        self._restored_settings = checkpoint.get(RUN_SETTINGS_KEY)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Saved weights make the initial ones irrelevant: ``weights=None`` lets ``load_from_checkpoint`` rebuild
        the model offline (uncompiled: ``model.compile`` is a training setting), and ``pretrained`` keeps where
        training started. The run's settings and schedule length go with them, for resume to check."""
        checkpoint["hyper_parameters"] = {**checkpoint["hyper_parameters"], "weights": None, "compile": False}
        checkpoint[RUN_SETTINGS_KEY] = {**self.run_settings, **self._schedule}

    # ----- forward -------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = normalize(x, self.mean, self.std)
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self._network()(x)

    def _network(self):
        """The network, or its compiled version with ``model.compile`` (compiled at the first call)."""
        if not self.hparams.get("compile"):
            return self.net
        if self._compiled.value is None:
            self._compiled.value = compile_network(self.net, self._input_shapes())
        return self._compiled.value

    def _input_shapes(self) -> int:
        """How many input shapes one fit can show the network (training sizes of progressive resizing, the eval
        size; train and eval mode; a last partial batch), for torch.compile's recompile limit."""
        trainer = self._trainer
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        progressive = getattr(datamodule, "hparams", {}).get("progressive") if datamodule is not None else None
        sizes = {self.hparams.image_size}
        if progressive:
            sizes |= {progressive_size(e, self.hparams.image_size, progressive) for e in range(progressive["epochs"])}
        return 2 * 2 * (len(sizes) + 1)

    def predict_proba(self, x: torch.Tensor, tta: int = 0, temperature: float | None = None) -> torch.Tensor:
        """Class probabilities, averaged over the plain pass and ``tta`` augmented views in one batched pass; each
        view's logits are divided by ``temperature`` first when it is given."""
        return predict_views(self, x, tta, temperature, self.hparams.image_size)

    # ----- training ------------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        # Before Lightning's model summary, which then counts the first stage's frozen parameters as non-trainable.
        if stage == "fit":
            self.apply_stage(0)

    def stage_summary(self) -> str:
        """What trains now, e.g. "head only: 33.0 K of 14.7 M parameters trainable"."""
        trainable = sum(p.numel() for p in self.net.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.net.parameters())
        frozen_backbone = not any(p.requires_grad for _, p in self.net.backbone_named_parameters())
        blocks = int(self.hparams.finetune["blocks"])
        what = "head only" if frozen_backbone else (
            "all layers" if trainable == total else f"head + last {blocks} stage(s)"
        )  # fmt: skip
        return f"{what}: {format_count(trainable)} of {format_count(total)} parameters trainable"

    def on_fit_start(self) -> None:
        ft = self.hparams.finetune
        if self.hparams.pretrained is None and (ft["head_epochs"] > 0 or ft["blocks"] != -1):
            log.warning(
                "model.weights=null with staged fine-tuning (head_epochs=%s, blocks=%s): random conv layers stay "
                "frozen for a while or for ever; to train from scratch set model.finetune.head_epochs=0 "
                "model.finetune.blocks=-1 (or use experiment=vgg16_bn_scratch)",
                ft["head_epochs"], ft["blocks"],
            )  # fmt: skip
        note_ddp_parameters(self._trainer)  # what Lightning's DDP wrapper registered, before anything changes it
        self.apply_stage(self.current_epoch)
        log.info("epoch %d: %s", self.current_epoch, self.stage_summary())

    def on_train_epoch_start(self) -> None:
        now = time.perf_counter()
        self._epoch_clock = [now, now, 0]  # start, end of the last training batch, images seen
        self.apply_stage(self.current_epoch)
        head_epochs = int(self.hparams.finetune["head_epochs"])
        if self.current_epoch == head_epochs and head_epochs > 0 and self._finetune_params():
            log.info("epoch %d: unfreezing, %s", self.current_epoch, self.stage_summary())

    def training_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        if x.numel() == 0:  # every image of the batch was unreadable and skipped
            return self._empty_step()
        distill, k = self.hparams.get("distill"), len(self.classes)
        target = split_targets(y, k, distill["temperature"]) if distill else y
        x = normalize(x, self.mean, self.std)
        if self.mixer is not None and not self.statistics_pass:
            x, target = self.mixer(x, target)  # soft targets: (B, K) class probabilities (2K with a teacher)
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = self._network()(x).float()
        smoothing = self.hparams.label_smoothing
        if distill:
            loss = distillation_loss(
                logits, target[:, :k], target[:, k:], distill["alpha"], distill["temperature"], self.class_weight,
                smoothing,
            )  # fmt: skip
            target = target[:, :k]
        else:
            loss = weighted_cross_entropy(logits, target, weight=self.class_weight, label_smoothing=smoothing)
        self._note_nonfinite(loss.detach())
        self._epoch_clock[2] += len(y)
        hard = target.argmax(1) if target.ndim == 2 else target
        self._log_step(loss, (logits.argmax(1) == hard).float().mean(), len(y))
        return loss

    def _log_step(self, loss: torch.Tensor, acc: torch.Tensor, images: int) -> None:
        # sync_dist: under DDP, the mean over every process's images (a no-op in one process)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=images, sync_dist=True)
        self.log("train/acc", acc, on_epoch=True, batch_size=images, sync_dist=True)

    def _empty_step(self) -> torch.Tensor | None:
        """The step of a batch with no readable image: skipped in one process. Under DDP every process must take part
        in the step's gradient all-reduce and logging (a process that skipped them would hang the others), so it
        returns a zero loss tied to every trainable parameter (zero gradients) and logs with weight 0."""
        if self.trainer.world_size <= 1:
            return None
        params = [p for p in self.parameters() if p.requires_grad]
        loss = torch.stack([p.sum() for p in params]).sum() * 0.0
        self._log_step(loss.detach(), loss.detach(), 0)
        return loss

    def _note_nonfinite(self, loss: torch.Tensor) -> None:
        """Remember the first non-finite loss of the run on the device (no host synchronization)."""
        if self._nonfinite is None or self._nonfinite[0].device != loss.device:
            self._nonfinite = (torch.full((), -1, dtype=torch.long, device=loss.device), torch.zeros_like(loss))
        step, value = self._nonfinite
        first = ~torch.isfinite(loss) & (step < 0)
        step.copy_(torch.where(first, torch.full_like(step, self.global_step), step))
        value.copy_(torch.where(first, loss, value))

    def check_finite(self) -> None:
        """Stop the run if a training loss was NaN or infinite: before any checkpoint holds such weights."""
        if self._nonfinite is None or int(self._nonfinite[0]) < 0:
            return
        step, value = int(self._nonfinite[0]), float(self._nonfinite[1])
        lrs = ", ".join(f"{g['lr']:.3g}" for g in self.trainer.optimizers[0].param_groups) if self._trainer else "?"
        raise NonFiniteLossError(
            f"training loss is {value} at epoch {self.current_epoch}, step {step} (learning rates {lrs}); the run "
            "stopped and its checkpoints are those of the last good epoch. Lower model.optimizer.lr, or use "
            "precision=32-true to rule out overflow."
        )

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self._epoch_clock[1] = time.perf_counter()
        trainer = self._trainer
        every = max(1, int(getattr(trainer, "log_every_n_steps", 1) or 1)) if trainer is not None else 1
        last = trainer is not None and batch_idx + 1 >= trainer.num_training_batches
        if (batch_idx + 1) % every == 0 or last:
            self.check_finite()

    def on_validation_start(self) -> None:
        if self.trainer.state.fn == "fit":  # a fit's validation, not a scoring pass
            self.check_finite()

    def on_train_epoch_end(self) -> None:
        """Training speed of the epoch, from its start to its last training batch (validation excluded); under DDP,
        the check that every process holds the same parameters (before the epoch's checkpoints are written)."""
        start, end, images = self._epoch_clock
        distributed = self.trainer.world_size > 1
        if (end > start and images) or distributed:  # under DDP every process logs (a synced value is a collective)
            seconds = max(end - start, 0.0)
            self.log("train/epoch_s", seconds, sync_dist=True)
            # under DDP: the images of every process per second
            self.log("train/images_per_s", images / seconds if seconds else 0.0, sync_dist=True, reduce_fx="sum")
        if distributed:
            check_replicas(self, self.current_epoch)

    def validation_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        if x.numel() == 0:
            return
        logp = F.log_softmax(self(x).float(), dim=1)
        self._val_outputs.append((logp.detach().cpu(), y.detach().cpu(), batch[2].detach().cpu()))

    def on_validation_epoch_end(self) -> None:
        outputs, self._val_outputs = self._val_outputs, []
        empty = (torch.zeros(0, len(self.hparams.classes)), torch.zeros(0, dtype=torch.long))
        logp, targets, indices = (torch.cat(t) for t in zip(*outputs)) if outputs else (*empty, empty[1])
        if self.trainer.world_size > 1:
            # Every rank scores the whole validation set: the same metrics, checkpoint choice and oof.csv as one
            # process (a rank whose share was all unreadable images still takes part in the gather).
            logp, targets, indices = gather_predictions(self, logp, targets, indices)
        if len(indices) == 0:
            return
        if not self.trainer.sanity_checking:
            self.last_validation = (logp, targets, indices)
        probs = logp.exp()
        # The same value on every rank (gathered predictions): sync_dist averages equal numbers.
        self.log("val/logloss", log_loss(probs, targets), prog_bar=True, sync_dist=True)
        self.log("val/acc", accuracy(probs, targets), prog_bar=True, sync_dist=True)

    def configure_optimizers(self):
        factory = optimizer_factory(self.hparams.optimizer)
        lr = float(factory.keywords["lr"])
        factor = float(self.hparams.finetune["lr_factor"])
        blocks = self._finetune_params()
        block_ids = {id(p) for p in blocks}
        backbone = [(n, p) for n, p in self.net.backbone_named_parameters() if id(p) in block_ids]
        groups = param_groups(
            [("head", lr, self.net.head_named_parameters()), ("backbone", lr * factor, backbone)],
            weight_decay=float(factory.keywords.get("weight_decay", 0.0)),
            decay_bias_and_norm=self.hparams.decay_bias_and_norm,
        )
        for group in groups:  # each group's learning rate relative to the head's (SWA keeps it: catdog.averaging)
            group["lr_scale"] = group["lr"] / lr
        optimizer = factory(groups, **fused_on_cuda(factory, self.device))
        scheduler = scheduler_factory(self.hparams.scheduler)
        if scheduler is None:
            return optimizer
        # A resumed run continues its checkpoint's schedule: the same number of steps (catdog.runs.resume).
        check_schedule_length(self._restored_settings, *self._steps())
        return {"optimizer": optimizer, "lr_scheduler": self._schedule_config(scheduler, optimizer)}

    def _schedule_config(self, factory, optimizer) -> dict:
        """Lightning's ``lr_scheduler`` dict of ``factory`` on ``optimizer`` for the Trainer's run length (noted in
        the checkpoints' record)."""
        total, per_epoch = self._steps()
        self._schedule = {"total_steps": total, "steps_per_epoch": per_epoch}
        head_epochs = int(self.hparams.finetune["head_epochs"])
        unfreeze = head_epochs * per_epoch if head_epochs > 0 and self._finetune_params() else None
        return build_scheduler(
            factory, optimizer, total_steps=total, steps_per_epoch=per_epoch, unfreeze_step=unfreeze,
            interval=self.hparams.scheduler_interval,
        )  # fmt: skip

    def retarget_schedule(self) -> None:
        """Stretch or shrink a per-step learning-rate schedule to the Trainer's ``max_epochs`` as it is now (the time
        budget's correction, :class:`catdog.budget.PlanCheck`): the same shape over the new number of steps, continued
        from the step it has reached. Schedules stepped per epoch by ``torch.optim.lr_scheduler`` are left as they
        are (their length is their own setting)."""
        factory = scheduler_factory(self.hparams.scheduler)
        if factory is None or not self._schedule or not is_catdog_schedule(factory):
            return
        (config,) = self.trainer.lr_scheduler_configs
        scheduler = config.scheduler
        # the new multipliers, built on a stand-in optimizer (building a LambdaLR sets its optimizer's learning rates)
        stand_in = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        fresh = self._schedule_config(factory, stand_in)["scheduler"]
        scheduler.lr_lambdas = [fresh.lr_lambdas[0]] * len(scheduler.optimizer.param_groups)
        for group, base, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * factor(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]

    def _steps(self) -> tuple[int, int]:
        """(total optimizer steps, steps per epoch) of this fit, from the Trainer."""
        trainer = self._trainer
        if trainer is None:
            raise ConfigError("a learning-rate schedule needs the Trainer (total steps); attach the module first")
        max_epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        total = trainer.estimated_stepping_batches
        if max_epochs is None or total == float("inf"):
            raise ConfigError(
                "model.scheduler needs a known run length: set trainer.max_epochs (or model.scheduler=null)"
            )
        total = max(1, int(total))
        return total, max(1, total // max_epochs)
