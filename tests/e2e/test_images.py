"""Image reading under every kind of bad or unusual input: decoded to RGB, or refused with a BadImageError naming the
file; never another exception, a hang or an unbounded allocation. Also what the dataset and training do with them."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from catdog import builders, fit, training
from catdog.data.datamodule import collate_skip_none
from catdog.errors import BadImageError
from tests.conftest import tiny_train_cfg
from tests.unit.data.test_images import _encoded


def _capture_datamodule(monkeypatch) -> list:
    made = []
    build = builders.build_datamodule

    def capturing(cfg):
        made.append(build(cfg))
        return made[-1]

    monkeypatch.setattr(fit, "build_datamodule", capturing)
    return made


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_training_skips_bad_images_and_counts_them(dirty_flat, tmp_path, monkeypatch, caplog):
    root, bad = dirty_flat
    made = _capture_datamodule(monkeypatch)
    cfg = tiny_train_cfg(root, tmp_path / "run", "data.on_bad_image=skip")
    with caplog.at_level(logging.INFO, logger="catdog"):
        value = training.train(cfg)
    assert value is not None and np.isfinite(value)
    dm = made[0]
    assert sorted(p for p, _ in dm.bad_images) == bad  # exactly the bad files: clutter is not counted
    assert len(dm.train_set) + len(dm.val_set) == 16
    assert not set(bad) & set(dm.train_set.paths + dm.val_set.paths)
    assert f"{len(bad)} unreadable image(s) skipped" in caplog.text
    assert all(p in caplog.text for p in bad)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_training_with_on_bad_image_error_fails_fast_naming_the_files(dirty_flat, tmp_path, monkeypatch):
    root, bad = dirty_flat

    def no_model(*_a, **_k):
        raise AssertionError("a model was built although the data were bad")

    monkeypatch.setattr(fit, "build_model", no_model)
    cfg = tiny_train_cfg(root, tmp_path / "run", "data.on_bad_image=error")
    with pytest.raises(BadImageError) as info:
        training.train(cfg)
    message = str(info.value)
    assert info.value.path in bad
    assert "5 unreadable image(s)" in message
    assert all(p in message for p in bad)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_training_without_screening_skips_bad_images_while_it_runs(dirty_flat, tmp_path):
    root, _ = dirty_flat
    cfg = tiny_train_cfg(root, tmp_path / "run", "data.verify=none", "optimized_metric=null")
    assert training.train(cfg) is None  # finished the epoch, bad images dropped batch by batch


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_fit_survives_files_corrupted_after_setup(flat_data, tmp_path):
    """Files that break between screening and loading (a disk, a sync tool) are skipped mid-epoch, not fatal."""
    cfg = tiny_train_cfg(flat_data, tmp_path / "run", "data.batch_size=2")
    dm = builders.build_datamodule(cfg)
    dm.setup("fit")
    for p in dm.train_set.paths[:3] + dm.val_set.paths[:1]:  # includes a whole batch of bad files
        Path(p).write_bytes(_encoded("JPEG", (64, 48))[:200])
    Path(dm.train_set.paths[3]).unlink()
    loader = DataLoader(dm.train_dataset(), batch_size=2, collate_fn=collate_skip_none)
    seen = sum(len(b[2]) for b in loader)
    assert seen == len(dm.train_set) - 4
    model = builders.build_model(cfg, dm.classes)
    trainer = builders.build_trainer(cfg, logger=False, enable_checkpointing=False, callbacks=[])
    trainer.fit(model, datamodule=dm)
    assert trainer.state.finished and trainer.current_epoch == 1
    assert torch.isfinite(torch.tensor(float(trainer.callback_metrics["val/logloss"])))
