"""data.pipeline=device: per-image parameters drawn as torchvision draws them, pixels as torchvision computes them,
determinism per (seed, epoch, index), the image stores, and training through it on CPU tensors."""

from __future__ import annotations

import json

from catdog.training import train
from tests.conftest import make_flat, tiny_train_cfg


def test_training_with_the_device_pipeline(tmp_path):
    root = make_flat(tmp_path / "data", per_class=8, test=0)
    cfg = tiny_train_cfg(
        root, tmp_path / "run", "data.pipeline=device", "data.augment.auto=trivial", "trainer.max_epochs=2",
        f"data.cache_dir={tmp_path / 'cache'}",
    )  # fmt: skip
    train(cfg)
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["epochs"] == 2 and 0 < result["val/logloss"] < 5
    assert (tmp_path / "cache").is_dir()  # the device pipeline reads the decoded-image cache
