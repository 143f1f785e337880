"""catdog/data/device_store.py: the choice of pipeline and the image store."""

from __future__ import annotations

import pytest
import torch

import catdog.data.device_store as store_mod
from catdog.data.datamodule import check_data_config
from catdog.data.device_store import ImageStore, pick_pipeline
from catdog.errors import ConfigError
from tests.unit.data.test_device_augment import _images


# ----- stores and the choice of pipeline ------------------------------------------------------------------------------
def test_pipeline_choice(monkeypatch):
    monkeypatch.setattr(store_mod, "available_bytes", lambda device: 1000)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert pick_pipeline("auto", 400, cpu) == "device"
    assert pick_pipeline("auto", 600, cpu) == "workers"
    assert pick_pipeline("workers", 1, cpu) == "workers"
    assert pick_pipeline("device", 600, cuda) == "device"  # kept in pinned host memory instead
    with pytest.raises(ConfigError, match="data.pipeline=device needs .* use data.pipeline=workers"):
        pick_pipeline("device", 600, cpu)
    with pytest.raises(ConfigError, match=r"data.pipeline must be one of \['workers', 'device', 'auto'\], got 'gpu'"):
        check_data_config(64, 8, 0.2, None, None, "skip", "full", pipeline="gpu")


def test_store_gathers_rows_in_order():
    x = _images(b=10, side=8)
    store = ImageStore(x, torch.full((10,), 8), torch.full((10,), 8))
    store.place(torch.device("cpu"))
    assert not store.on_host
    assert torch.equal(store.gather(torch.tensor([3, 0, 3])), x[[3, 0, 3]])
