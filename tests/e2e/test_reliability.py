"""Crashes, disk-full, non-finite losses, untrusted or mismatched checkpoints, and bad configuration."""

import json
import os
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from catdog.checkpoints import read_checkpoint
from catdog.errors import CheckpointError, ConfigError
from catdog.models.module import NonFiniteLossError
from catdog.training import train
from tests.conftest import TINY, make_flat, run_script, tiny_train_cfg

ROOT = Path(__file__).resolve().parents[2]


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    data = make_flat(tmp_path / "data", per_class=10, test=0)
    common = [
        *TINY,
        f"data.dir={data}",
        "trainer.max_epochs=3",
        "model.finetune.head_epochs=1",
        "model.finetune.blocks=2",
    ]
    full = run_script("train.py", [*common, f"hydra.run.dir={tmp_path / 'full'}"], tmp_path)
    assert full.returncode == 0, full.stderr[-2000:]

    run_dir = tmp_path / "killed"
    killed = run_script("train.py",
        [*common, f"hydra.run.dir={run_dir}", "+callbacks.kill._target_=tests.helpers.KillAt",
         "+callbacks.kill.epoch=2", "+callbacks.kill.batch=1"],
        tmp_path,
    )  # fmt: skip
    assert killed.returncode == -9  # really killed, mid-epoch
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and not (run_dir / "result.json").exists()
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["epoch"] == 1  # the epoch-1 checkpoint is whole
    assert not list((run_dir / "checkpoints").glob(".*tmp"))
    lock = json.loads((run_dir / ".lock").read_text())  # left by the killed process

    # Same command, same folder: it takes over the dead process's lock and resumes from last.ckpt on its own.
    resumed = run_script("train.py", [*common, f"hydra.run.dir={run_dir}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr + resumed.stdout
    assert f"{run_dir}: took over the lock left by pid {lock['pid']}" in resumed.stdout
    assert "which is no longer running" in (run_dir / "train.log").read_text()
    assert not (run_dir / ".lock").exists()
    a = json.loads((tmp_path / "full" / "result.json").read_text())
    b = json.loads((run_dir / "result.json").read_text())
    assert b["val/logloss"] == pytest.approx(a["val/logloss"], abs=1e-6)
    assert b["epochs"] == a["epochs"] == 3


def test_finished_run_folder_is_not_trained_over(tmp_path):
    data = make_flat(tmp_path / "data", per_class=6, test=0)
    train(tiny_train_cfg(data, tmp_path / "run"))
    before = (tmp_path / "run" / "checkpoints" / "best.ckpt").read_bytes()
    with pytest.raises(ConfigError, match="already holds a finished run"):
        train(tiny_train_cfg(data, tmp_path / "run"))
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").read_bytes() == before


def test_nan_loss_stops_with_context_and_keeps_last_good_checkpoint(tmp_path):
    data = make_flat(tmp_path / "data", per_class=6, test=0)
    cfg = tiny_train_cfg(data, tmp_path / "run", "trainer.max_epochs=3")
    with open_dict(cfg):
        cfg.callbacks["poison"] = {"_target_": "tests.helpers.PoisonAt", "epoch": 1}
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 1, step \d+ \(learning rates [0-9.e-]+"):
        train(cfg)
    last = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert last["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


def test_malicious_checkpoint_refused_on_resume(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "x": Evil()}, evil)
    data = make_flat(tmp_path / "data", per_class=4, test=0)
    with pytest.raises(CheckpointError, match="refusing to load .*evil.ckpt"):
        train(tiny_train_cfg(data, tmp_path / "run", f"ckpt_path={evil}"))
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


def test_resume_from_other_architecture_names_both_sides(tmp_path):
    data = make_flat(tmp_path / "data", per_class=4, test=0)
    train(tiny_train_cfg(data, tmp_path / "a", "model.arch=vgg16"))
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError, match="arch: checkpoint 'vgg16' vs config 'vgg16_bn'"):
        train(tiny_train_cfg(data, tmp_path / "b", "model.arch=vgg16_bn", f"ckpt_path={last}"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.batch_size=-4", r"data\.batch_size must be a positive integer"),
        ("ensemble.size=1", r"data\.folds must be an integer >= 2"),
        ("data.folds=-3", r"data\.folds must be an integer >= 2"),
        ("data.fold=0", r"data\.fold=0 needs data\.folds"),
        ("model.width=2", r"model\.width must be in \(0, 1\]"),
        ("model.head=big", r"model\.head must be one of \['small', 'native', 'vgg'\]"),
        ("model.optimizer.lr=-1", r"model\.optimizer\.lr must be a number > 0"),
        ("model.finetune.blocks=7", r"model\.finetune\.blocks=7, but vgg16_bn has 5 stages"),
        ("model.finetune.blocks=-2", r"model\.finetune\.blocks must be an integer >= 0"),
        ("model.arch=resnet19", r"model\.arch='resnet19'.*did you mean resnet18"),
        ("model.scheduler=step", r"model\.scheduler must be a config with _target_"),
        ("model.optimizer._target_=torch.optim.AdamW", r"model\.optimizer: torch\.optim\.adamw\.AdamW does not accept"),
        ("model/scheduler=onecycle model.scheduler.pct_start=1.5", r"model\.scheduler\.pct_start must be a number in"),
        ("model.mixing.mixup_alpha=-1", r"model\.mixing\.mixup_alpha must be a number >= 0"),
        ("data.augment.auto=autoaugment", r"data\.augment\.auto must be one of"),
        ("data.progressive={start_size:16,epochs:2}", r"data\.progressive\.start_size must be an integer in"),
        ("model.dropout=1.5", r"model\.dropout must be in \[0, 1\)"),
        ("trainer.max_epochs=-5", r"trainer\.max_epochs must be a positive integer"),
        ("data.verify=maybe", r"data\.verify must be one of"),
    ],
)
def test_bad_config_one_line_error_before_any_data_is_read(override, message, tmp_path):
    cfg = tiny_train_cfg(tmp_path / "no-such-data", tmp_path / "run", *override.split())
    with pytest.raises(ConfigError, match=message) as err:
        train(cfg)
    assert "\n" not in str(err.value)


def test_fold_out_of_range(tmp_path):
    cfg = tiny_train_cfg(tmp_path / "no-such-data", tmp_path / "run", "data.folds=3", "data.fold=3")
    with pytest.raises(ConfigError, match=r"data\.fold must be in 0\.\.2"):
        train(cfg)


def test_checkpoint_with_nan_weights_gives_no_submission(tmp_path):
    from catdog.prediction import predict
    from tests.conftest import compose_predict

    data = make_flat(tmp_path / "data", per_class=4, test=3)
    train(tiny_train_cfg(data, tmp_path / "run"))
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", weights_only=True)
    for k, v in ckpt["state_dict"].items():
        if k.startswith("net.model.classifier.") and v.is_floating_point():
            v.fill_(float("nan"))
    torch.save(ckpt, tmp_path / "nan.ckpt")
    cfg = compose_predict([f"ckpt={tmp_path / 'nan.ckpt'}", "num_workers=0", "device=cpu"], output_dir=tmp_path / "p")
    with pytest.raises(CheckpointError, match="nan.ckpt produced non-finite probabilities"):
        predict(cfg)
    assert not (tmp_path / "p" / "submission.csv").exists()
