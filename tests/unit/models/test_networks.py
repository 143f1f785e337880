"""catdog/models/networks.py: any torchvision classifier as the backbone: heads, stages, weights files and their
errors."""

import urllib.error

import pytest
import torch
import torchvision
from torchvision.models import VGG16_BN_Weights

from catdog.errors import CheckpointError, ConfigError, WeightsUnavailableError
from catdog.models.networks import build_network, check_network_args
from catdog.models.weights import cached_weights_path
from tests.conftest import FAMILIES

# (arch, stages, extra overrides): the smallest member of each family at the smallest size it takes.


def _build(arch: str, **kwargs):
    width = {"width": 0.0625} if arch.startswith("vgg") else {}
    return build_network(arch, num_classes=3, head_hidden=8, image_size=32, **width, **kwargs)


@pytest.mark.parametrize(("arch", "n_stages", "extra"), FAMILIES)
def test_family_builds_with_a_new_head_and_its_stages(arch, n_stages, extra):
    net = _build(arch).eval()
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    stages = net.stages()
    assert len(stages) == n_stages
    # Every backbone parameter is in exactly one stage, in forward (registration) order; the head is in none.
    staged = [n for s in stages for n in s.params]
    backbone = [n.removeprefix("model.") for n, _ in net.backbone_named_parameters()]
    assert staged == backbone
    head = [n for n, _ in net.head_named_parameters()]
    assert head and not set(head) & {f"model.{n}" for n in staged}
    assert net.describe().startswith(f"{arch}: {n_stages} stages")


@pytest.mark.parametrize("head", ["small", "native"])
def test_heads_end_in_n_outputs(head):
    for arch in ("resnet18", "convnext_tiny", "efficientnet_b0"):
        net = _build(arch, head=head)
        last = [m for m in net.head.modules() if isinstance(m, torch.nn.Linear)][-1]
        assert last.out_features == 3
        hidden = [m.out_features for m in net.head.modules() if isinstance(m, torch.nn.Linear)]
        assert (hidden == [8, 3]) if head == "small" else (hidden == [3])


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """A machine without internet: an empty hub cache under tmp_path, and torchvision's download failing as it does."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)


def test_offline_message_names_the_file_of_any_arch(offline_hub, tmp_path):
    with pytest.raises(WeightsUnavailableError) as err:
        build_network("convnext_tiny", weights="imagenet")
    msg = str(err.value)
    assert "convnext_tiny-983f1562.pth" in msg and str(tmp_path / "hub" / "checkpoints") in msg
    assert "model.weights=/path/to/convnext_tiny-983f1562.pth" in msg


def test_local_weights_file_of_another_family_loads(tmp_path):
    source = torchvision.models.resnet18()
    path = tmp_path / "resnet18-local.pth"
    torch.save(source.state_dict(), path)  # torchvision's format, with its 1000-class fc
    net = build_network("resnet18", num_classes=2, weights=str(path), head="native")
    torch.testing.assert_close(net.model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    torch.testing.assert_close(net.model.bn1.running_var, source.bn1.running_var)
    with pytest.raises(Exception, match=r"resnet18-local\.pth does not match model\.arch=resnet34"):
        build_network("resnet34", weights=str(path))


def test_vit_weights_follow_the_image_size(monkeypatch):
    """ViT weights for 224 px loaded into a 32 px model: torchvision's interpolation of the position embedding."""
    state = torchvision.models.vit_b_16().state_dict()
    monkeypatch.setattr("catdog.models.networks.imagenet_state_dict", lambda arch: state)
    net = build_network("vit_b_16", weights="imagenet", image_size=32, head="native")
    assert net.model.encoder.pos_embedding.shape == (1, 1 + 2 * 2, 768)
    torch.testing.assert_close(net.model.conv_proj.weight, state["conv_proj.weight"])
    assert net.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 2)


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


def test_imagenet_offline_message_says_what_to_do(offline_hub, tmp_path):
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
        check_network_args(**{"arch": "vgg16_bn", **kwargs})  # build_network's default arch
