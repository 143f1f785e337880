"""Grad-CAM: maps from the last stage of any family, token outputs reshaped, nothing left on the module."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from catdog.models.module import ClassifierModule
from catdog.report.gradcam import as_map, grad_cam, pick, target_layer
from tests.conftest import FAMILIES


@pytest.mark.parametrize("arch", [f[0] for f in FAMILIES] + ["swin_t"])
def test_maps_come_from_the_last_stage_of_a_frozen_network(arch):
    torch.manual_seed(0)
    width = 0.0625 if arch.startswith("vgg") else 1.0
    model = ClassifierModule(["a", "b"], arch=arch, width=width, head_hidden=8, image_size=64,
                             finetune={"head_epochs": 1, "blocks": 1, "lr_factor": 0.1})  # fmt: skip
    model.apply_stage(0)  # the backbone frozen, as in a head-only first stage
    seen = []
    layer = target_layer(model.net)
    hook = layer.register_forward_hook(lambda m, i, o: seen.append(m))  # returns None: the output is kept
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    cams = grad_cam(model, images, [0, 1, 1])
    hook.remove()
    assert cams.shape == (3, 64, 64) and cams.min() >= 0
    top = cams.max(axis=(1, 2))  # scaled to 1 per image, or all 0 where no location speaks for the class
    assert np.all(np.isclose(top, 1, atol=1e-5) | (top == 0))
    assert seen == [layer]  # one forward pass, through the last stage
    assert not layer._forward_hooks  # nothing left registered
    assert all(p.grad is None for p in model.parameters())
    assert not any(p.requires_grad for _, p in model.net.backbone_named_parameters())


def test_token_and_channels_last_outputs_become_maps():
    vit = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)  # class token + 2x2 patches, 3 channels
    grid = as_map(vit, "vision_transformer")
    assert grid.shape == (2, 3, 2, 2) and grid[0, :, 0, 0].tolist() == vit[0, 1].tolist()
    swin = torch.rand(2, 4, 4, 8)
    assert torch.equal(as_map(swin, "swin_transformer"), swin.permute(0, 3, 1, 2))
    conv = torch.rand(2, 8, 4, 4)
    assert as_map(conv, "resnet") is conv


def test_pick_takes_the_worst_mistakes_then_the_surest_right_answers_per_class():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.95, 0.05], [0.1, 0.9]])
    targets = np.array([1, 1, 1, 0, 0, 1])
    assert pick(probs, targets, mistakes=2, per_class=1) == [0, 3, 4, 5]
