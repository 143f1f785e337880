"""catdog/inference.py: load_classifier refuses untrusted checkpoints, loads the first VGG layout and models whose
weights file is gone."""

import pytest
import torch

from catdog.errors import CheckpointError
from catdog.inference import load_classifier
from catdog.models.module import ClassifierModule


def test_checkpoints_of_the_first_vgg_layout_still_load(tmp_path):
    """catdog's first network kept VGG's conv stack as ``net.backbone`` and the head (pool, flatten, layers) as
    ``net.head``; such checkpoints load and predict the same."""
    model = ClassifierModule(["cat", "dog"], arch="vgg16_bn", width=0.0625, head="vgg", head_hidden=8, image_size=32)
    trainer = __import__("pytorch_lightning").Trainer(logger=False, enable_checkpointing=False, max_epochs=0)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "new.ckpt")
    ckpt = torch.load(tmp_path / "new.ckpt", weights_only=True)
    old = {}
    for key, value in ckpt["state_dict"].items():
        if key.startswith("net.model.features."):
            key = "net.backbone." + key.removeprefix("net.model.features.")
        else:
            index, rest = key.removeprefix("net.model.classifier.").split(".", 1)
            key = f"net.head.{int(index) + 2}.{rest}"
        old[key] = value
    ckpt["state_dict"] = old
    torch.save(ckpt, tmp_path / "old.ckpt")
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    expected = model.eval().predict_proba(x)
    torch.testing.assert_close(load_classifier(tmp_path / "old.ckpt").predict_proba(x), expected)
    reloaded = ClassifierModule.load_from_checkpoint(tmp_path / "old.ckpt", map_location="cpu").eval()
    torch.testing.assert_close(reloaded.predict_proba(x), expected)


def test_checkpoint_of_a_pretrained_model_reloads_offline(monkeypatch, tmp_path, vgg16_features_file):
    """A model started from a weights file records it as ``pretrained``; reloading never needs that file."""
    from catdog.inference import load_classifier
    from catdog.models.module import ClassifierModule

    model = ClassifierModule(["cat", "dog"], arch="vgg16", weights=str(vgg16_features_file), head_hidden=8)
    trainer = __import__("pytorch_lightning").Trainer(logger=False, enable_checkpointing=False, max_epochs=0)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    moved = tmp_path / "elsewhere.pth"
    vgg16_features_file.rename(moved)  # the original weights file is gone
    try:
        reloaded = load_classifier(tmp_path / "m.ckpt")
        assert reloaded.hparams.pretrained == str(vgg16_features_file) and reloaded.hparams.weights is None
        torch.testing.assert_close(reloaded.net.model.features[0].weight, model.net.model.features[0].weight)
        ClassifierModule.load_from_checkpoint(tmp_path / "m.ckpt", map_location="cpu")
    finally:
        moved.rename(vgg16_features_file)


def test_malicious_checkpoint_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_classifier(path)
