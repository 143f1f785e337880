"""Regularization and weight averaging switches: EMA, SWA, MixUp / CutMix, automatic augmentation, progressive
resizing. Each test fails if its switch does nothing."""

import csv
import json
import shutil

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import open_dict

from catdog.checkpoints import read_checkpoint
from catdog.data.datamodule import ImageDataset, make_loader
from catdog.data.transforms import eval_transform
from catdog.errors import ConfigError
from catdog.inference import load_classifier
from catdog.prediction import predict_loader
from catdog.training import train
from tests.conftest import make_flat, tiny_train_cfg


def _oof(run):
    lines = (run / "oof.csv").read_text().splitlines()[1:]
    rows = [line.split(",") for line in lines]
    return [r[0] for r in rows], [r[1] for r in rows], np.array([[float(v) for v in r[3:]] for r in rows])


def _predict(model, data, rel_paths, labels):
    hp = model.hparams
    ds = ImageDataset([str(data / p) for p in rel_paths], labels, eval_transform(hp.image_size, hp.crop_pct))
    probs, order = predict_loader(model, make_loader(ds, 8, 0), 0, torch.device("cpu"), "32")
    out = np.empty_like(probs)
    out[order] = probs
    return out


def test_ema_weights_are_validated_and_saved(tmp_path):
    data = make_flat(tmp_path / "data", per_class=12, test=0)
    run = tmp_path / "run"
    cfg = tiny_train_cfg(
        data, run, "averaging=ema", "callbacks.averaging.decay=0.6", "trainer.max_epochs=2", "trainer.precision=32-true"
    )
    train(cfg)
    ckpt = read_checkpoint(run / "checkpoints" / "best.ckpt")
    raw, ema = ckpt["current_model_state"], ckpt["state_dict"]
    assert set(raw) == set(ema)
    assert any(not torch.equal(raw[k], ema[k]) for k in ema if k.endswith("weight"))
    # The saved (EMA) weights reproduce the validation predictions; the raw weights do not.
    paths, labels, oof = _oof(run)
    y = [["cat", "dog"].index(v) for v in labels]
    model = load_classifier(run / "checkpoints" / "best.ckpt")
    np.testing.assert_allclose(_predict(model, data, paths, y), oof, atol=1e-5)
    model.load_state_dict(raw)
    assert np.abs(_predict(model, data, paths, y) - oof).max() > 1e-4
    # Validation during training used the averaged weights too: the logged best val/logloss is the saved model's.
    result = json.loads((run / "result.json").read_text())
    with open(run / "csv" / "metrics.csv") as f:
        logged = [float(r["val/logloss"]) for r in csv.DictReader(f) if r["val/logloss"]]
    assert min(logged) == pytest.approx(result["val/logloss"], abs=1e-5)


class KeepWeights(pl.Callback):
    """Keeps a copy of the weights at the end of every training epoch."""

    def __init__(self):
        self.after_epoch = {}

    def on_train_epoch_end(self, trainer, pl_module):
        self.after_epoch[trainer.current_epoch] = {k: v.clone() for k, v in pl_module.state_dict().items()}


_KEEP = KeepWeights()


def _keep_factory():
    return _KEEP


def test_swa_result_is_the_averaged_model(tmp_path):
    data = make_flat(tmp_path / "data", per_class=8, test=0)
    run = tmp_path / "run"
    cfg = tiny_train_cfg(
        data, run, "averaging=swa", "callbacks.averaging.swa_epoch_start=0.34", "callbacks.averaging.swa_lrs=0.05",
        "trainer.max_epochs=3", "trainer.precision=32-true",
    )  # fmt: skip
    with open_dict(cfg):
        cfg.callbacks["keep"] = {"_target_": f"{__name__}._keep_factory"}
    _KEEP.after_epoch.clear()
    train(cfg)
    result = json.loads((run / "result.json").read_text())
    assert result["best_checkpoint"] == "checkpoints/swa.ckpt"
    swa = read_checkpoint(run / "checkpoints" / "swa.ckpt")["state_dict"]
    trained = _KEEP.after_epoch[2]  # the weights SGD reached at the end of the last epoch
    weights = [k for k in swa if k.endswith("weight")]
    assert all(not torch.equal(swa[k], trained[k]) for k in weights)
    # BatchNorm statistics were recomputed for the averaged weights in the extra pass.
    assert any(not torch.equal(swa[k], trained[k]) for k in swa if k.endswith("running_mean"))
    paths, labels, oof = _oof(run)
    model = load_classifier(run / "checkpoints" / "swa.ckpt")
    np.testing.assert_allclose(_predict(model, data, paths, [0] * len(paths)), oof, atol=1e-5)


class Watch(pl.Callback):
    """Records per epoch: training batches, calls of the module's mixer, and each optimizer group's (name, lr,
    swa_lr) at the epoch's last batch; and the weights when training starts and after its last step."""

    def __init__(self):
        self.batches, self.mixed, self.groups, self.start, self.end = {}, {}, {}, None, None

    def on_train_start(self, trainer, pl_module):
        self.start = {k: v.clone() for k, v in pl_module.state_dict().items()}
        mixer, watch = pl_module.mixer, self

        def counting(x, y):
            epoch = trainer.current_epoch
            watch.mixed[epoch] = watch.mixed.get(epoch, 0) + 1
            return mixer(x, y)

        if mixer is not None:
            pl_module.mixer = counting

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        epoch = trainer.current_epoch
        self.batches[epoch] = self.batches.get(epoch, 0) + 1
        self.groups[epoch] = [(g["name"], g["lr"], g.get("swa_lr")) for g in trainer.optimizers[0].param_groups]
        self.end = {k: v.clone() for k, v in pl_module.state_dict().items()}


_WATCH = Watch()


def _watch_factory():
    return _WATCH


def _watched(cfg):
    with open_dict(cfg):
        cfg.callbacks["watch"] = {"_target_": f"{__name__}._watch_factory"}
    _WATCH.__init__()
    return cfg


def test_swa_keeps_each_groups_learning_rate_and_re_estimates_batchnorm_on_plain_batches(tmp_path):
    data = make_flat(tmp_path / "data", per_class=8, test=0)
    cfg = tiny_train_cfg(
        data, tmp_path / "run", "averaging=swa", "callbacks.averaging.swa_epoch_start=0.34",
        "callbacks.averaging.swa_lrs=0.05", "model.finetune.lr_factor=0.1", "trainer.max_epochs=3",
        "model.mixing.mixup_alpha=0.2", "model.mixing.prob=1.0", "trainer.precision=32-true",
    )  # fmt: skip
    train(_watched(cfg))
    # Epochs 0-2 train (mixed batches); epoch 3 is the extra pass that re-estimates BatchNorm statistics.
    assert sorted(_WATCH.batches) == [0, 1, 2, 3]
    assert all(_WATCH.mixed.get(e, 0) == _WATCH.batches[e] for e in (0, 1, 2))
    assert _WATCH.mixed.get(3, 0) == 0
    # The backbone's SWA learning rate keeps model.finetune.lr_factor: 0.05 for the head, 0.005 for the backbone.
    groups = _WATCH.groups[2]
    assert {name for name, _, _ in groups} >= {"head", "backbone"}
    for name, lr, swa_lr in groups:
        expected = 0.05 if name.startswith("head") else 0.005
        assert swa_lr == pytest.approx(expected) and lr == pytest.approx(expected)


def test_ema_warm_up_lets_the_average_follow_training(tmp_path):
    """With decay 0.999 and a few dozen steps, a plain EMA would still be almost the initial weights; the warm-up
    makes it an average of recent ones (and without it, the opposite holds)."""
    data = make_flat(tmp_path / "data", per_class=12, test=0)
    run = tmp_path / "run"

    def distances(*extra):
        cfg = tiny_train_cfg(data, run, "averaging=ema", "trainer.max_epochs=3", "trainer.precision=32-true", *extra)
        train(_watched(cfg))
        ema = read_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]
        weights = [k for k in ema if k.endswith("weight")]

        def dist(other):
            return sum(float((ema[k] - other[k]).norm()) for k in weights)

        return dist(_WATCH.start), dist(_WATCH.end)

    to_start, to_end = distances()
    assert to_end < to_start
    shutil.rmtree(run)
    to_start, to_end = distances("callbacks.averaging.warmup_power=null")
    assert to_start < to_end


def test_missing_averaging_callback_is_named(tmp_path):
    cfg = tiny_train_cfg(
        tmp_path / "none", tmp_path / "run", "averaging=ema",
        "callbacks.averaging._target_=pytorch_lightning.callbacks.NoSuchAveraging",
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"NoSuchAveraging cannot be imported.*pytorch-lightning >= 2\.6"):
        train(cfg)


def test_swa_refused_with_frozen_batchnorm_blocks(tmp_path):
    cfg = tiny_train_cfg(tmp_path / "none", tmp_path / "run", "averaging=swa", "model.finetune.blocks=2")
    with pytest.raises(ConfigError, match="averaging=swa resets the BatchNorm statistics"):
        train(cfg)


def test_mixing_trains_with_soft_targets(flat_data, tmp_path):
    cfg = tiny_train_cfg(flat_data, tmp_path / "run", "model.mixing.mixup_alpha=0.4", "model.mixing.cutmix_alpha=1.0")
    assert train(cfg) > 0


def test_progressive_resizing_grows_training_images(flat_data, tmp_path):
    cfg = tiny_train_cfg(
        flat_data, tmp_path / "run", "data.image_size=64", "data.progressive={start_size:32,epochs:2}",
        "trainer.max_epochs=3",
    )  # fmt: skip
    sizes = {}

    class Sizes(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            sizes.setdefault(("train", trainer.current_epoch), set()).add(batch[0].shape[-1])

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            sizes.setdefault(("val", trainer.current_epoch), set()).add(batch[0].shape[-1])

    with open_dict(cfg):
        cfg.callbacks["sizes"] = {"_target_": f"{__name__}._sizes_factory"}
    global _SIZES
    _SIZES = Sizes()
    train(cfg)
    assert [sizes[("train", e)] for e in range(3)] == [{32}, {48}, {64}]
    assert all(sizes[("val", e)] == {64} for e in range(3))


_SIZES = None


def _sizes_factory():
    return _SIZES


def test_ema_run_resumes_exactly(tmp_path):
    from tests.e2e.test_optim import _with_callbacks

    data = make_flat(tmp_path / "data", per_class=8, test=0)
    extra = ("averaging=ema", "callbacks.averaging.decay=0.7", "trainer.max_epochs=3", "trainer.precision=32-true")
    full = json.loads(_run(data, tmp_path / "full", extra).read_text())
    cfg = tiny_train_cfg(data, tmp_path / "resumed", *extra)
    cfg = _with_callbacks(cfg, crash={"_target_": "tests.e2e.test_optim.CrashAt", "epoch": 2})
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg)
    with open_dict(cfg):
        del cfg.callbacks["crash"]
    train(cfg)
    resumed = json.loads((tmp_path / "resumed" / "result.json").read_text())
    assert resumed["val/logloss"] == pytest.approx(full["val/logloss"], abs=1e-6)
    a = read_checkpoint(tmp_path / "full" / "checkpoints" / "last.ckpt")
    b = read_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    for key in ("state_dict", "current_model_state"):
        for k, v in a[key].items():
            torch.testing.assert_close(b[key][k], v, atol=1e-6, rtol=1e-5)


def _run(data, out, extra):
    train(tiny_train_cfg(data, out, *extra))
    return out / "result.json"
