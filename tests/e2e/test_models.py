import urllib.error

import pytest
import torch
import torchvision

from catdog.errors import WeightsUnavailableError


def test_train_stops_on_missing_weights_before_reading_data(monkeypatch, tmp_path):
    from catdog.training import train
    from tests.conftest import tiny_train_cfg

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    calls = []

    def offline(*args, **kwargs):
        calls.append(args)
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    cfg = tiny_train_cfg(tmp_path / "no-data-here", tmp_path / "run", "model.weights=imagenet", "model.width=1.0")
    with pytest.raises(WeightsUnavailableError, match="vgg16_bn-6c64b313.pth"):
        train(cfg)  # a DatasetError would mean the data was read first
    assert calls
