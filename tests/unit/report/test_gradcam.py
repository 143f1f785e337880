"""Grad-CAM: maps from the last stage of any family, outputs laid out by their shape (tokens with any number of
prefix tokens, channels-last maps), nothing left on the module."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from catdog.data.transforms import normalize
from catdog.models.module import ClassifierModule
from catdog.models.networks import Classifier
from catdog.models.stages import Stage
from catdog.report import gradcam as gc
from catdog.report.gradcam import as_map, grad_cam, pick, target_layer
from tests.conftest import FAMILIES, needs_extra

#: float32's unit roundoff.
U = 2.0**-24


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
    assert not layer._forward_hooks and not layer._forward_pre_hooks  # nothing left registered
    assert all(p.grad is None for p in model.parameters())
    assert not any(p.requires_grad for _, p in model.net.backbone_named_parameters())


def test_token_and_channels_last_outputs_become_maps():
    vit = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)  # class token + 2x2 patches, 3 channels
    grid = as_map(vit, (32, 32))
    assert grid.shape == (2, 3, 2, 2) and grid[0, :, 0, 0].tolist() == vit[0, 1].tolist()
    registers = torch.rand(2, 5 + 16, 3)  # class token, 4 registers, 4x4 patches
    grid = as_map(registers, (64, 64), prefix=5)
    assert torch.equal(grid, registers[:, 5:].transpose(1, 2).reshape(2, 3, 4, 4))
    swin = torch.rand(2, 4, 4, 8)  # channels-last, by its shape alone: no family name, nothing declared
    assert torch.equal(as_map(swin, (64, 64)), swin.permute(0, 3, 1, 2))
    assert torch.equal(as_map(swin, (64, 64), channels=8), swin.permute(0, 3, 1, 2))
    conv = torch.rand(2, 8, 4, 4)
    assert as_map(conv, (64, 64)) is conv and as_map(conv, (64, 64), channels=8, channels_last=True) is conv


def test_the_layout_rule_in_its_ambiguous_cases():
    rule = gc.is_channels_last
    # a c x c map of c channels fits both readings: the model's declared format decides, else channels-first
    assert rule((2, 8, 8, 8), (32, 32), 8, declared=True) and not rule((2, 8, 8, 8), (32, 32), 8, declared=False)
    # spatial sides in the input's proportions decide where the layer's channel count is wrong (DenseNet's block
    # ends with a 32-channel conv but outputs the concatenation: 1024 channels, here on a 32 x 32 grid)
    assert not rule((2, 1024, 32, 32), (1024, 1024), 32, declared=False)
    assert rule((2, 32, 32, 1024), (1024, 1024), 1024, declared=False)
    # a non-square input: its proportions, then the channel count
    assert rule((2, 4, 8, 96), (64, 128), 96, declared=False) and not rule((2, 96, 4, 8), (64, 128), 96, False)
    assert rule((2, 3, 5, 96), (64, 64), 96, declared=False)  # no square either way: the channel count alone


def test_a_token_sequence_without_a_grid_raises_the_reason():
    tokens = torch.rand(2, 2 + 16, 8)  # 2 prefix tokens, but the model says 3
    with pytest.raises(ValueError, match=r"18 tokens: after 3 prefix token\(s\) .* the 15 left make no grid"):
        as_map(tokens, (64, 64), prefix=3)


def test_pick_takes_the_worst_mistakes_then_the_surest_right_answers_per_class():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.95, 0.05], [0.1, 0.9]])
    targets = np.array([1, 1, 1, 0, 0, 1])
    assert pick(probs, targets, mistakes=2, per_class=1) == [0, 3, 4, 5]


# ----- maps against Grad-CAM by hand ----------------------------------------------------------------------------------
class _Module(nn.Module):
    """What :func:`grad_cam` reads of a :class:`catdog.models.module.ClassifierModule`: ``net``, ``mean``, ``std``."""

    def __init__(self, model: nn.Module, stage: str):
        super().__init__()
        self.net = Classifier(model, "timm/tiny_fake", "head", [Stage(stage, ())])  # a timm name: stage by name
        self.register_buffer("mean", torch.full((1, 3, 1, 1), 0.5))
        self.register_buffer("std", torch.full((1, 3, 1, 1), 0.25))


class _ChannelsLast(nn.Module):
    """A tiny network whose last stage outputs channels-last maps (B, h, w, C), as Swin's stages do, and that declares
    no format: only the output's shape tells."""

    def __init__(self, channels: int = 12):
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 4, stride=4)
        self.stage = nn.Sequential(nn.LayerNorm(channels), nn.Linear(channels, channels), nn.GELU())
        self.head = nn.Linear(channels, 2)

    def forward(self, x):
        return self.head(self.stage(self.stem(x).permute(0, 2, 3, 1)).mean(dim=(1, 2)))


class _Tokens(nn.Module):
    """A tiny ViT-like network: ``num_prefix_tokens`` (a class token and registers) before 4 x 4 patch tokens of a
    32 px input, one attention block, the prediction from the patch tokens' mean (timm's ``global_pool='avg'``) or
    the class token (``'token'``)."""

    def __init__(self, prefix: int, pool: str, channels: int = 8):
        super().__init__()
        self.num_prefix_tokens, self.pool = prefix, pool
        self.patches = nn.Conv2d(3, channels, 8, stride=8)
        self.prefix = nn.Parameter(torch.randn(1, prefix, channels))
        self.blocks = nn.Sequential(_Block(channels), _Block(channels))
        self.head = nn.Linear(channels, 2)

    def forward(self, x):
        t = self.patches(x).flatten(2).transpose(1, 2)
        t = self.blocks(torch.cat([self.prefix.expand(len(t), -1, -1), t], 1))
        return self.head(t[:, self.num_prefix_tokens :].mean(1) if self.pool == "avg" else t[:, 0])


class _Block(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.attn = nn.MultiheadAttention(channels, 2, batch_first=True)
        self.mlp = nn.Linear(channels, channels)

    def forward(self, t):
        y = self.norm(t)
        t = t + self.attn(y, y, y, need_weights=False)[0]
        return t + self.mlp(t)


def _by_hand(module, layer: nn.Module, images, classes, to_map, at: str = "output"):
    """Grad-CAM of ``layer``'s ``at`` (output | input) in float64, laid out by ``to_map`` ((B, ...) -> (B, C, h, w)),
    and per image the bound on what float32 rounding moves grad_cam's map: its evidence sums C products of a mean of
    h*w gradients, off by at most gamma_n * sum_c |terms| (n = C + h*w + 1, gamma_n = n u / (1 - n u)); divided by the
    peak (off as much), then rounded to float32 (u)."""
    kept = {}
    hooks = [
        layer.register_forward_pre_hook(lambda m, i: kept.__setitem__("input", i[0])),
        layer.register_forward_hook(lambda m, i, o: kept.__setitem__("output", o[0] if isinstance(o, tuple) else o)),
    ]
    module.eval()
    with torch.enable_grad():
        x = normalize(images.clone(), module.mean, module.std).requires_grad_(True)
        score = module.net(x).gather(1, torch.tensor(classes).view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(score, kept[at])
    for hook in hooks:
        hook.remove()
    a, g = to_map(kept[at].detach()).double(), to_map(grad).double()
    terms = g.mean(dim=(2, 3), keepdim=True) * a
    evidence = terms.sum(dim=1, keepdim=True)
    cam = F.interpolate(F.relu(evidence), size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.amax(dim=(1, 2))
    assert bool((peak > 1e-3 * evidence.abs().amax(dim=(1, 2, 3))).all())  # far from grad_cam's all-0 rule
    n = a.shape[1] + a.shape[2] * a.shape[3] + 1
    gamma = n * U / (1 - n * U)
    bound = 2 * gamma * terms.abs().sum(dim=1).amax(dim=(1, 2)) / peak + U
    return (cam / peak.view(-1, 1, 1)).numpy(), bound.numpy()


def _assert_by_hand(cams, expected, bound):
    for i, (cam, ref, tol) in enumerate(zip(cams, expected, bound)):
        assert np.abs(cam - ref).max() <= tol, (i, np.abs(cam - ref).max(), tol)


def _images(n: int, side: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=g)


def test_a_channels_last_stage_is_read_by_its_shape():
    torch.manual_seed(0)
    module = _Module(_ChannelsLast(channels=12), "stage")
    images, classes = _images(3, 32), [0, 1, 1]
    cams = grad_cam(module, images, classes)
    layer = target_layer(module.net)
    expected, bound = _by_hand(module, layer, images, classes, lambda t: t.permute(0, 3, 1, 2))  # (B, 8, 8, 12)
    _assert_by_hand(cams, expected, bound)


@pytest.mark.parametrize("prefix", [1, 5])  # a class token; a class token and 4 registers
def test_vit_maps_drop_every_prefix_token(prefix):
    torch.manual_seed(0)
    module = _Module(_Tokens(prefix, "avg"), "blocks.1")
    images, classes = _images(3, 32), [0, 1, 0]
    cams = grad_cam(module, images, classes)
    patches = lambda t: t[:, prefix:].transpose(1, 2).reshape(len(t), -1, 4, 4)  # noqa: E731
    expected, bound = _by_hand(module, target_layer(module.net), images, classes, patches)
    _assert_by_hand(cams, expected, bound)


def test_a_class_token_vit_is_explained_at_its_last_blocks_input():
    # Its prediction reads the class token alone after the last block: that block's patch tokens get no gradient.
    torch.manual_seed(0)
    module = _Module(_Tokens(3, "token"), "blocks.1")
    images, classes = _images(3, 32), [0, 1, 0]
    cams = grad_cam(module, images, classes)
    patches = lambda t: t[:, 3:].transpose(1, 2).reshape(len(t), -1, 4, 4)  # noqa: E731
    expected, bound = _by_hand(module, target_layer(module.net), images, classes, patches, at="input")
    _assert_by_hand(cams, expected, bound)


def test_torchvisions_vit_maps_are_not_blank():
    torch.manual_seed(0)
    model = ClassifierModule(["a", "b"], arch="vit_b_16", head_hidden=8, image_size=64)
    images, classes = _images(3, 64), [0, 1, 1]
    cams = grad_cam(model, images, classes)
    patches = lambda t: t[:, 1:].transpose(1, 2).reshape(len(t), -1, 4, 4)  # noqa: E731
    expected, bound = _by_hand(model, target_layer(model.net), images, classes, patches, at="input")
    _assert_by_hand(cams, expected, bound)


# ----- timm -----------------------------------------------------------------------------------------------------------
@needs_extra("timm", "timm")
def test_timms_swin_stage_is_channels_last():
    torch.manual_seed(0)
    model = ClassifierModule(["a", "b"], arch="timm/swin_tiny_patch4_window7_224", head_hidden=8, image_size=64)
    images, classes = _images(2, 64), [0, 1]
    cams = grad_cam(model, images, classes)
    layer = target_layer(model.net)  # layers.3: (B, 2, 2, 768)
    expected, bound = _by_hand(model, layer, images, classes, lambda t: t.permute(0, 3, 1, 2))
    _assert_by_hand(cams, expected, bound)


@needs_extra("timm", "timm")
def test_a_timm_vit_with_register_tokens_has_maps():
    torch.manual_seed(0)
    model = ClassifierModule(["a", "b"], arch="timm/vit_little_patch16_reg4_gap_256", head_hidden=8, image_size=64)
    assert model.net.model.num_prefix_tokens == 4  # 4 registers, no class token
    images, classes = _images(2, 64), [0, 1]
    cams = grad_cam(model, images, classes)
    patches = lambda t: t[:, 4:].transpose(1, 2).reshape(len(t), -1, 4, 4)  # noqa: E731
    expected, bound = _by_hand(model, target_layer(model.net), images, classes, patches)
    _assert_by_hand(cams, expected, bound)
