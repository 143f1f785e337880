"""Optimizers and learning-rate schedules from Hydra targets; weight-decay groups."""

import functools
import json

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import open_dict

from catdog.builders import build_datamodule, build_model, build_trainer
from catdog.errors import ConfigError
from catdog.models.optim import check_scheduler
from catdog.models.schedules import one_cycle_factor, warmup_cosine_factor
from catdog.training import train
from tests.conftest import make_flat, tiny_train_cfg


def _fit_steps(cfg, max_epochs=1, callbacks=()):
    dm = build_datamodule(cfg)
    dm.setup("fit")
    model = build_model(cfg, dm.classes)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = build_trainer(
        cfg, max_epochs=max_epochs, logger=False, enable_checkpointing=False, callbacks=[*callbacks]
    )
    trainer.fit(model, datamodule=dm)
    return model, trainer, before


@pytest.mark.parametrize(
    ("choice", "cls"), [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam)]
)
def test_each_optimizer_trains_a_step(choice, cls, flat_data, tmp_path):
    cfg = tiny_train_cfg(flat_data, tmp_path, f"model/optimizer={choice}", "trainer.limit_train_batches=1")
    model, trainer, before = _fit_steps(cfg)
    assert type(trainer.optimizers[0]) is cls
    assert trainer.global_step == 1
    moved = [k for k, v in model.state_dict().items() if k.startswith("net.") and not torch.equal(v, before[k])]
    assert any(k.endswith("weight") and "features" in k for k in moved)


def test_any_torch_scheduler_target(flat_data, tmp_path):
    cfg = tiny_train_cfg(
        flat_data, tmp_path, "model/scheduler=step", "model.scheduler.step_size=1", "model.scheduler.gamma=0.5"
    )
    lrs = []

    class Record(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    _fit_steps(cfg, max_epochs=3, callbacks=[Record()])
    lr = cfg.model.optimizer.lr
    assert lrs == pytest.approx([lr, lr / 2, lr / 4])  # stepped once per epoch
    with pytest.raises(ConfigError, match="StepLR does not accept"):
        check_scheduler({"_target_": "torch.optim.lr_scheduler.StepLR", "step_size": 1, "warmup_epochs": 2})


def test_plateau_scheduler_watches_the_validation_log_loss(flat_data, tmp_path):
    cfg = tiny_train_cfg(flat_data, tmp_path, "model/scheduler=plateau")
    _, trainer, _ = _fit_steps(cfg)
    config = trainer.lr_scheduler_configs[0]
    assert isinstance(config.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert config.monitor == "val/logloss" and config.interval == "epoch"


class RecordLR(pl.Callback):
    """Appends ``[epoch, step, lr of every group by name]`` before each training batch to a JSON-lines file."""

    def __init__(self, path: str):
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        groups = {g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups}
        with open(self.path, "a") as f:
            f.write(json.dumps([trainer.current_epoch, trainer.global_step, groups]) + "\n")


class CrashAt(pl.Callback):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


def _lrs(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _with_callbacks(cfg, **callbacks):
    with open_dict(cfg):
        for name, c in callbacks.items():
            cfg.callbacks[name] = c
    return cfg


SCHEDULES = {
    "onecycle": (
        ("model/scheduler=onecycle", "model.scheduler.pct_start=0.5"),
        functools.partial(one_cycle_factor, pct_start=0.5, div_factor=25, final_div_factor=1e4),
    ),
    "warmup_cosine": (
        ("model/scheduler=cosine", "model.scheduler.warmup_epochs=1", "model.scheduler.warmup_start=0.1"),
        functools.partial(warmup_cosine_factor, warmup_steps=3, warmup_start=0.1, min_lr_ratio=0.0, decay=True),
    ),
}


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_per_step_schedule_through_unfreeze_and_resume(schedule, tmp_path):
    data = make_flat(tmp_path / "data", per_class=8, test=0)  # 12 training images, batch 4: 3 steps per epoch
    overrides, factor = SCHEDULES[schedule]
    extra = (
        "trainer.max_epochs=4",
        "model.finetune.head_epochs=1",
        "model.finetune.blocks=-1",
        "model.finetune.lr_factor=0.1",
        "model.optimizer.lr=0.05",
        *overrides,
    )
    full_log = tmp_path / "full.jsonl"
    cfg = tiny_train_cfg(data, tmp_path / "full", *extra)
    train(_with_callbacks(cfg, rec={"_target_": f"{__name__}.RecordLR", "path": str(full_log)}))
    full = _lrs(full_log)
    steps = [s for _, s, _ in full]
    assert steps == list(range(12))
    starts = [0, 3]  # the unfreeze after 1 epoch of 3 steps restarts the schedule
    for _, step, groups in full:
        f = factor(step, starts=starts, total_steps=12)
        assert groups["head"] == pytest.approx(0.05 * f)
        assert groups["backbone"] == pytest.approx(0.005 * f)  # lr * lr_factor, same shape
        assert groups["head_no_decay"] == groups["head"]
    first = {"onecycle": 0.05 / 25, "warmup_cosine": 0.05 * 0.1}[schedule]
    assert full[0][2]["head"] == pytest.approx(first)
    assert full[3][2]["head"] == pytest.approx(first)  # restart at the first unfrozen step
    assert full[3][2]["head"] < full[4][2]["head"] < full[5][2]["head"]  # warming up again

    # Crash at the start of epoch 2, resume in the same folder: the same learning rates from there on.
    log = tmp_path / "resumed.jsonl"
    cfg = tiny_train_cfg(data, tmp_path / "resumed", *extra)
    cfg = _with_callbacks(
        cfg,
        rec={"_target_": f"{__name__}.RecordLR", "path": str(log)},
        crash={"_target_": f"{__name__}.CrashAt", "epoch": 2},
    )
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg)
    with open_dict(cfg):
        del cfg.callbacks["crash"]
    train(cfg)
    resumed = [r for r in _lrs(log) if r[0] >= 2]
    assert resumed == [r for r in full if r[0] >= 2]


def test_per_step_schedule_needs_a_run_length(flat_data, tmp_path):
    cfg = tiny_train_cfg(flat_data, tmp_path, "trainer.max_epochs=-1", "+trainer.max_steps=2")
    with pytest.raises(ConfigError, match="trainer.max_epochs"):
        _fit_steps(cfg, max_epochs=-1)
