"""catdog/builders.py: preprocessing filled in from the starting weights, the stage list logged once, the Trainer's
automatic precision."""

import pytest
import torchvision

from catdog.builders import build_datamodule, build_model, build_trainer, resolve_preprocessing
from tests.conftest import compose_train, tiny_train_cfg
from tests.unit.models.test_precision import _cpu, _cuda


def test_pretrained_preprocessing_comes_from_the_weights():
    """weights=imagenet: image size, crop and interpolation from torchvision's weights.transforms(); values set in
    the config win; without weights, torchvision's classic 224 / 256 bilinear."""
    cfg = compose_train(["model.arch=efficientnet_b0", "model.weights=imagenet"])
    resolve_preprocessing(cfg)
    t = torchvision.models.EfficientNet_B0_Weights.DEFAULT.transforms()
    assert cfg.data.image_size == t.crop_size[0] == 224
    assert round(cfg.data.image_size / cfg.data.crop_pct) == t.resize_size[0] == 256
    assert cfg.data.interpolation == "bicubic"
    cfg = compose_train(["model.arch=efficientnet_v2_s", "model.weights=imagenet", "data.image_size=224"])
    resolve_preprocessing(cfg)
    assert cfg.data.image_size == 224 and cfg.data.crop_pct == 1.0  # v2-s: 384 / 384, crop kept
    cfg = compose_train(["model.arch=efficientnet_b0", "model.weights=null"])
    resolve_preprocessing(cfg)
    assert (cfg.data.image_size, cfg.data.crop_pct, cfg.data.interpolation) == (224, 0.875, "bilinear")


def test_stage_list_is_logged_once_at_the_start(flat_data, tmp_path, caplog):
    import logging

    import catdog.builders as builders

    builders._described.discard("resnet18")
    cfg = tiny_train_cfg(flat_data, tmp_path / "run", "model.arch=resnet18", "model.width=1.0")
    with caplog.at_level(logging.INFO, logger="catdog.builders"):
        dm = build_datamodule(cfg)
        dm.setup("fit")
        model = build_model(cfg, dm.classes)
        builders.check_network(cfg, model)
        builders.check_network(cfg, model)
    lines = [r.message for r in caplog.records if r.message.startswith("resnet18: 4 stages")]
    assert len(lines) == 1 and "1 layer1 (+ conv1, bn1)" in lines[0] and "head fc" in lines[0]


@pytest.mark.parametrize(("amx", "expected"), [(True, "bf16-mixed"), (False, "32-true")])
def test_trainer_gets_the_automatic_precision(monkeypatch, tmp_path, amx, expected):
    _cuda(monkeypatch, available=False)
    _cpu(monkeypatch, amx=amx, avx512_bf16=True)
    cfg = tiny_train_cfg(tmp_path / "data", tmp_path / "run", "trainer.precision=null")
    assert build_trainer(cfg, logger=False, callbacks=[]).precision == expected
