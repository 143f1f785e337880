"""timm backbones: names, stages from timm's parameter groups, preprocessing from the pretrained config, weights."""

from __future__ import annotations

import sys

import pytest
import torch

from catdog.errors import ConfigError, WeightsUnavailableError
from catdog.models.networks import build_network, stage_names
from catdog.models.stages import check_arch, fixed_input_size
from catdog.models.weights import eval_preprocessing
from catdog.report.gradcam import target_layer
from tests.conftest import extra_marks

pytestmark = extra_marks("timm", "timm")


@pytest.mark.parametrize(
    ("arch", "stages", "last_joined"), [("timm/resnet10t", 4, ()), ("timm/convnext_atto", 4, ("head.norm",))]
)
def test_stages_are_timms_groups_with_the_stem_joined_to_the_first(arch, stages, last_joined):
    net = build_network(arch, 2, None, "small", 16, 0.2)
    found = net.stages()
    assert len(found) == stages == len(stage_names(arch))
    assert found[0].joined and all(any(p.startswith(j + ".") for p in found[0].params) for j in found[0].joined)
    assert found[-1].joined == last_joined
    params = {n for n, _ in net.model.named_parameters()}
    head = {n.removeprefix("model.") for n, _ in net.head_named_parameters()}
    staged = [p for s in found for p in s.params]
    assert len(staged) == len(set(staged)) and set(staged) | head == params and not set(staged) & head
    assert isinstance(net.head, torch.nn.Sequential) and net(torch.zeros(1, 3, 64, 64)).shape == (1, 2)


def test_preprocessing_and_input_size_come_from_the_pretrained_config():
    assert eval_preprocessing("timm/resnet10t", pretrained=False) == {
        "image_size": 176, "crop_pct": 0.875, "interpolation": "bicubic", "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }  # fmt: skip
    assert fixed_input_size("timm/vit_tiny_patch16_224") and not fixed_input_size("timm/resnet10t")
    vit = build_network("timm/vit_tiny_patch16_224", 2, None, "native", 16, 0.1, image_size=32)
    assert vit(torch.zeros(1, 3, 32, 32)).shape == (1, 2)
    # the last group also holds the final norm: the stage is still the last block, which Grad-CAM explains
    assert vit.stages()[-1].name == "blocks.11" and target_layer(vit) is vit.model.blocks[11]


def test_names_weights_files_and_the_offline_message(tmp_path, monkeypatch):
    import timm

    with pytest.raises(ConfigError, match="did you mean timm/resnet10t"):
        check_arch("timm/resnet10")
    reference = timm.create_model("resnet10t", pretrained=False)
    torch.save(reference.state_dict(), tmp_path / "resnet10t.pth")
    net = build_network("timm/resnet10t", 2, str(tmp_path / "resnet10t.pth"), "small", 16, 0.2)
    assert torch.equal(net.model.conv1[0].weight, reference.conv1[0].weight)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(
        WeightsUnavailableError, match=r"(?s)pretrained weights for resnet10t.*model.weights=/path/to/file"
    ):
        build_network("timm/resnet10t", 2, "imagenet", "small", 16, 0.2)


def test_without_timm_the_message_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ConfigError, match=r'needs timm, which is not installed: pip install -e "\.\[timm\]"'):
        check_arch("timm/resnet10t")
