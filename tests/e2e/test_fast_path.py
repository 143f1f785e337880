"""The fast path (uint8 loading, normalization on the device, channels_last, batched TTA) computes what the plain
path computes."""

import json

import pytest
import torch

from catdog.checkpoints import read_checkpoint
from catdog.training import train
from tests.conftest import make_flat, tiny_train_cfg


def test_model_compile_compiles_the_network_once_and_checkpoints_stay_plain(tmp_path, monkeypatch):
    calls = []

    def fake_compile(net, **kwargs):
        calls.append(kwargs)
        return net  # eager: what matters here is what catdog asks torch.compile for

    monkeypatch.setattr(torch, "compile", fake_compile)
    data = make_flat(tmp_path / "data", per_class=6, test=0)
    cfg = tiny_train_cfg(
        data, tmp_path / "run", "model.compile=true", "trainer.max_epochs=2",
        "data.progressive={start_size: 32, epochs: 2, multiple: 8}", "data.image_size=48",
    )  # fmt: skip
    train(cfg)
    assert calls == [{"dynamic": False}]
    limit = getattr(torch._dynamo.config, "recompile_limit", None) or torch._dynamo.config.cache_size_limit
    assert limit >= 2 * 2 * 3  # sizes 32, 40 and 48 (+1 spare), train and eval mode, a last partial batch
    ckpt = read_checkpoint(tmp_path / "run" / "checkpoints" / "best.ckpt")
    assert not any("_orig_mod" in k or "_compiled" in k for k in ckpt["state_dict"])
    assert ckpt["hyper_parameters"]["compile"] is False  # prediction loads it uncompiled


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    """torch.compile for real (tens of seconds on a CPU): the same losses as eager, to float tolerance."""
    data = make_flat(tmp_path / "data", per_class=6, test=0)
    results = []
    for compiled in (False, True):
        out = tmp_path / f"run_{compiled}"
        train(tiny_train_cfg(data, out, f"model.compile={str(compiled).lower()}", "model.dropout=0"))
        results.append(json.loads((out / "result.json").read_text()))
    assert results[1]["val/logloss"] == pytest.approx(results[0]["val/logloss"], abs=1e-3)
