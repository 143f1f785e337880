import urllib.error

import pytest
import torch
import torchvision
from torchvision.models import VGG16_BN_Weights

from catdog.errors import CheckpointError, ConfigError, WeightsUnavailableError
from catdog.models.networks import build_network
from catdog.models.weights import cached_weights_path


@pytest.fixture(scope="module")
def vgg16_features_file(tmp_path_factory):
    """A torchvision-format vgg16 state dict (conv layers only, to keep it small) as an offline user would have."""
    path = tmp_path_factory.mktemp("w") / "vgg16-local.pth"
    state = {k: v for k, v in torchvision.models.vgg16().state_dict().items() if k.startswith("features.")}
    torch.save(state, path)
    return path


def test_head_replaced_for_n_classes():
    net = build_network("vgg16_bn", num_classes=3, width=0.0625, head_hidden=8)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    # VGG's stages are its five conv blocks, each ending with its max-pool
    stages = net.stages()
    assert len(stages) == 5 and stages[-1].name == "features.34-43"
    assert isinstance(net.model.features[43], torch.nn.MaxPool2d)


def test_vgg_head_keeps_fc_layers():
    net = build_network("vgg16", num_classes=2, head="vgg", width=0.0625)
    linears = [m for m in net.head if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [4096, 4096, 2]


def test_local_weights_file_loads(vgg16_features_file):
    net = build_network("vgg16", num_classes=2, weights=str(vgg16_features_file))
    state = torch.load(vgg16_features_file, weights_only=True)
    torch.testing.assert_close(net.model.features[0].weight, state["features.0.weight"])


def test_weights_for_the_wrong_arch_are_refused(vgg16_features_file):
    with pytest.raises(CheckpointError, match=r"vgg16-local.pth.*model.arch=vgg16_bn"):
        build_network("vgg16_bn", num_classes=2, weights=str(vgg16_features_file))


def test_missing_weights_file():
    with pytest.raises(CheckpointError, match="not found: /no/such.pth"):
        build_network("vgg16", weights="/no/such.pth")


def test_imagenet_offline_message_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailableError) as err:
        build_network("vgg16_bn", weights="imagenet")
    msg = str(err.value)
    expected = cached_weights_path(VGG16_BN_Weights.IMAGENET1K_V1)
    assert str(expected) in msg and expected.name == "vgg16_bn-6c64b313.pth"
    assert "model.weights=/path/to/vgg16_bn-6c64b313.pth" in msg
    # Random weights in this recipe's frozen stages train at chance: the scratch recipes are the way without them.
    assert "experiment=cpu_scratch" in msg and "experiment=vgg16_bn_scratch" in msg


def test_imagenet_uses_torchvision_cache(monkeypatch, tmp_path, vgg16_features_file):
    """With the file where torchvision caches it, weights=imagenet loads it through torchvision's weights API."""
    from torchvision.models import VGG16_Weights

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    cached = cached_weights_path(VGG16_Weights.IMAGENET1K_V1)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(vgg16_features_file.read_bytes())
    net = build_network("vgg16", weights="imagenet")
    state = torch.load(vgg16_features_file, weights_only=True)
    torch.testing.assert_close(net.model.features[28].weight, state["features.28.weight"])


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"arch": "vgg20"}, "model.arch"),
        ({"arch": "resnet18", "width": 0.5}, "model.width"),
        ({"arch": "resnet18", "head": "vgg"}, "model.head"),
        ({"arch": "squeezenet1_1", "head": "small"}, "model.head"),
        ({"head": "mlp"}, "model.head"),
        ({"width": 0.5, "weights": "imagenet"}, "model.width"),
        ({"width": 0}, "model.width"),
    ],
)
def test_bad_model_config(kwargs, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_network(**kwargs)


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
