"""A run folder stays whole: last.ckpt is the latest epoch, a resumed run keeps its metric history and its record of
what it is, files get the umask's mode, and an interrupted run says how to resume it."""

import csv
import logging
import stat
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from catdog.checkpoints import read_checkpoint
from catdog.data.cache import open_cache
from catdog.errors import CheckpointError, ConfigError
from catdog.training import train
from tests.conftest import TINY, make_flat, run_script, tiny_train_cfg
from tests.e2e.conftest import train_until_interrupted

ROOT = Path(__file__).resolve().parents[2]


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "csv" / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _val_epochs(run: Path) -> list[int]:
    return [int(r["epoch"]) for r in _rows(run) if r.get("val/logloss")]


def _with_callback(cfg, name, target, **kwargs):
    with open_dict(cfg):
        cfg.callbacks[name] = {"_target_": target, **kwargs}
    return cfg


def test_last_checkpoint_is_the_latest_epoch_not_the_best(tmp_path):
    data = make_flat(tmp_path / "data", per_class=4, test=0)
    cfg = _with_callback(
        tiny_train_cfg(data, tmp_path / "run", "trainer.max_epochs=3"), "worse", "tests.helpers.WorseEachEpoch"
    )
    train(cfg)
    ckpts = tmp_path / "run" / "checkpoints"
    assert read_checkpoint(ckpts / "best.ckpt")["epoch"] == 0
    assert read_checkpoint(ckpts / "last.ckpt")["epoch"] == 2  # what a resume must start from


def test_interrupted_run_says_how_to_resume_and_keeps_its_history(tmp_path, caplog):
    data = make_flat(tmp_path / "data", per_class=4, test=0)
    run = tmp_path / "run"
    args = ("trainer.max_epochs=3",)
    with caplog.at_level(logging.WARNING, logger="catdog.fit"):
        train_until_interrupted(tiny_train_cfg(data, run, *args), 2)
    assert f"interrupted; to resume, run:\n  python train.py hydra.run.dir={run}" in caplog.text
    assert _val_epochs(run) == [0, 1]
    lr_steps = [r["step"] for r in _rows(run) if r.get("lr-SGD/head")]
    assert len(lr_steps) == 3  # epoch 2 had started: its learning rate is in the file

    train(tiny_train_cfg(data, run, *args))  # resumed in its folder
    assert _val_epochs(run) == [0, 1, 2]  # earlier rows kept, none twice
    assert [r["step"] for r in _rows(run) if r.get("lr-SGD/head")] == lr_steps
    rows = [tuple(sorted((k, v) for k, v in r.items() if v)) for r in _rows(run)]
    assert len(rows) == len(set(rows))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.optimizer.lr=0.5", r"model\.optimizer\.lr: checkpoint 0\.01 vs config 0\.5"),
        ("model.finetune.blocks=2", r"model\.finetune\.blocks: checkpoint -1 vs config 2"),
        ("model.decay_bias_and_norm=true", r"model\.decay_bias_and_norm: checkpoint False vs config True"),
        # the schedule: its length, its shape, and the weight average restored with it
        ("trainer.max_epochs=4", r"trainer\.max_epochs: checkpoint 2 vs config 4.*model\.init="),
        (
            "model/scheduler=onecycle",
            r"model\.scheduler\._target_: checkpoint '\S+warmup_cosine' vs config '\S+one_cycle'",
        ),
        ("averaging=ema", r"callbacks\.averaging\._target_: checkpoint None vs config '\S+EMAWeightAveraging'"),
        ("data.batch_size=2", r"schedule spans 2 optimizer steps \(1 per epoch\), this run's 6 \(3 per epoch\)"),
    ],
)
def test_resume_with_changed_optimizer_settings_is_refused_naming_the_key(override, message, tmp_path):
    data = make_flat(tmp_path / "data", per_class=4, test=0)
    run = tmp_path / "run"
    train_until_interrupted(tiny_train_cfg(data, run, "trainer.max_epochs=2", "model.optimizer.lr=0.01"), 1)
    last = (run / "checkpoints" / "last.ckpt").read_bytes()
    with pytest.raises(CheckpointError, match=message) as err:
        train(tiny_train_cfg(data, run, "trainer.max_epochs=2", "model.optimizer.lr=0.01", *override.split()))
    assert "\n" not in str(err.value)
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == last


def _start_weights(cfg, path):
    return _with_callback(cfg, "start", "tests.helpers.SaveStartWeights", path=str(path))


def test_model_init_starts_a_new_run_from_a_checkpoints_weights(tmp_path):
    """ "Train more" from a finished run: a new folder, epoch 0, a fresh schedule, the checkpoint's weights."""
    data = make_flat(tmp_path / "data", per_class=4, test=0)
    first = tmp_path / "first"
    train(tiny_train_cfg(data, first, "trainer.max_epochs=2"))
    best = first / "checkpoints" / "best.ckpt"
    more = tmp_path / "more"
    train(_start_weights(tiny_train_cfg(data, more, "trainer.max_epochs=2", f"model.init={best}"), tmp_path / "w.pt"))
    start = torch.load(tmp_path / "w.pt", weights_only=True)
    saved = read_checkpoint(best)["state_dict"]
    assert all(torch.equal(start[k], saved[k]) for k in saved)
    assert _val_epochs(more) == [0, 1] and _val_epochs(first) == [0, 1]
    assert read_checkpoint(more / "checkpoints" / "last.ckpt")["hyper_parameters"]["pretrained"] == str(best)
    # Only a checkpoint of the same architecture and head, and never one trained on this run's validation images.
    with pytest.raises(
        CheckpointError, match=r"model\.init=.*does not fit this model: model\.arch: checkpoint 'vgg16_bn'"
    ):
        train(tiny_train_cfg(data, tmp_path / "a", "model.arch=vgg16", f"model.init={best}"))
    with pytest.raises(ConfigError, match=r"was trained on \d+ of this run's \d+ validation images"):
        train(tiny_train_cfg(data, tmp_path / "b", "seed=7", f"model.init={best}"))
    with pytest.raises(ConfigError, match="set one of them"):
        train(tiny_train_cfg(data, tmp_path / "c", f"model.init={best}", f"ckpt_path={best}"))


def test_resume_from_another_runs_checkpoint_copies_its_history(tmp_path):
    data = make_flat(tmp_path / "data", per_class=4, test=0)
    first = tmp_path / "first"
    train_until_interrupted(tiny_train_cfg(data, first, "trainer.max_epochs=3"), 2)
    last = first / "checkpoints" / "last.ckpt"
    train(tiny_train_cfg(data, tmp_path / "more", "trainer.max_epochs=3", f"ckpt_path={last}"))
    assert _val_epochs(tmp_path / "more") == [0, 1, 2]
    assert _val_epochs(first) == [0, 1]  # the source run is untouched
    # Another split would score training images as validation images.
    with pytest.raises(ConfigError, match=r"split differs from the one it was trained on .*first/split\.csv"):
        train(tiny_train_cfg(data, tmp_path / "other", "trainer.max_epochs=3", "seed=7", f"ckpt_path={last}"))


def test_refused_rerun_leaves_the_folders_record_alone(tmp_path):
    data = make_flat(tmp_path / "data", per_class=4, test=0)
    run = tmp_path / "run"
    ok = run_script(
        "train.py", [*TINY, f"data.dir={data}", f"hydra.run.dir={run}", "model.optimizer.lr=0.01"], tmp_path
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    record = {p.name: p.read_bytes() for p in (run / ".hydra").iterdir()}
    assert set(record) == {"config.yaml", "overrides.yaml", "hydra.yaml"}
    assert OmegaConf.load(run / ".hydra" / "config.yaml").model.optimizer.lr == 0.01
    assert "model.optimizer.lr=0.01" in OmegaConf.load(run / ".hydra" / "overrides.yaml")

    again = run_script(
        "train.py", [*TINY, f"data.dir={data}", f"hydra.run.dir={run}", "model.optimizer.lr=0.5"], tmp_path
    )
    assert again.returncode == 2 and "already holds a finished run" in again.stderr + again.stdout
    assert {p.name: p.read_bytes() for p in (run / ".hydra").iterdir()} == record


def test_run_outputs_and_cache_are_readable_by_others_under_umask_022(tmp_path, umask_022):
    data = make_flat(tmp_path / "data", per_class=4, test=0)
    run = tmp_path / "run"
    train(tiny_train_cfg(data, run))
    for path in [run / "result.json", run / "oof.csv", run / "split.csv", run / "checkpoints" / "best.ckpt"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    cache = open_cache(sorted(str(p) for p in (data / "train").iterdir()), 36, tmp_path / "cache", workers=1)
    for path in (tmp_path / "cache").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert cache is not None
