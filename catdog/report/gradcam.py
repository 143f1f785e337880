"""Grad-CAM (Selvaraju et al., 2017) for the reports: where the trained network looked for the class it predicted.

The map is taken at the output of the network's last backbone stage (:mod:`catdog.models.stages`: VGG's last conv
block before its max-pool, ResNet's layer4, ConvNeXt's and Swin's last stage, ViT's last encoder layer; the last
``Conv2d`` for a family without a stage table). A forward hook keeps that output and ``torch.autograd.grad`` takes
the gradient of the predicted class's logit with respect to it, with the input itself requiring a gradient: frozen
stages and VGG's in-place ReLU are no obstacle, and nothing is registered on the module after the call. Token
outputs are turned back into maps: ViT's (B, 1 + h*w, C) without its class token, Swin's channels-last (B, h, w, C).

``cam = ReLU(sum_c mean_hw(dy/dA_c) * A_c)``, upsampled to the input size and scaled to [0, 1] per image (all 0 where
nothing in the image speaks for the class).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from catdog.data.images import load_image
from catdog.data.transforms import eval_resize_size, eval_transform, normalize
from catdog.models.stages import family, family_of
from catdog.models.timm_source import is_timm
from catdog.report.figures import top_mistakes

#: Families whose stage outputs are channels-last maps (B, h, w, C).
CHANNELS_LAST = ("swin_transformer",)


POOLING = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def target_layer(net) -> nn.Module:
    """The module whose output Grad-CAM explains: the last stage's last module that is not a pooling layer (VGG's
    last ReLU, whose map is twice as fine as the block's pooled output), else the last ``Conv2d``."""
    if is_timm(net.arch):  # timm's last parameter group: its module (ResNet's layer4, a ViT's last block)
        return net.model.get_submodule(net.stages()[-1].name)
    spec = family(net.arch).stages
    if spec is not None:
        stages = spec(net.model)
        if stages:
            modules = [net.model.get_submodule(path) for path in stages[-1][1]]
            return next((m for m in reversed(modules) if not isinstance(m, POOLING)), modules[-1])
    convs = [m for m in net.model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{net.arch}: no stage and no Conv2d to take a Grad-CAM map from")
    return convs[-1]


def as_map(a: torch.Tensor, family_name: str) -> torch.Tensor:
    """A stage output as (B, C, h, w): tokens (B, T, C) reshaped to their square grid (a leading class token
    dropped), channels-last maps permuted."""
    if a.ndim == 3:
        tokens = a.shape[1]
        side = math.isqrt(tokens)
        if side * side != tokens:
            a, side = a[:, 1:], math.isqrt(tokens - 1)
        return a.transpose(1, 2).reshape(a.shape[0], a.shape[2], side, side)
    if a.ndim == 4 and family_name in CHANNELS_LAST:
        return a.permute(0, 3, 1, 2)
    return a


def grad_cam(module, images: torch.Tensor, classes: Sequence[int]) -> np.ndarray:
    """Grad-CAM maps (B, H, W) in [0, 1] of ``module`` (a :class:`catdog.models.module.ClassifierModule`) for uint8
    ``images`` (B, 3, H, W, the eval crops), each for the class in ``classes``."""
    net = module.net
    layer = target_layer(net)
    kept: dict[str, torch.Tensor] = {}

    def keep(_module, _inputs, output):
        kept["a"] = output[0] if isinstance(output, tuple) else output

    was_training = module.training
    module.eval()
    handle = layer.register_forward_hook(keep)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            x = normalize(images.clone(), module.mean, module.std).requires_grad_(True)
            logits = net(x)
            score = logits.gather(1, torch.as_tensor(list(classes)).view(-1, 1)).sum()
            (grads,) = torch.autograd.grad(score, kept["a"])
    finally:
        handle.remove()
        module.train(was_training)
    name = family_of(net.arch)
    a, g = as_map(kept["a"].detach(), name), as_map(grads, name)
    evidence = (g.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1, keepdim=True).double()
    cam = F.interpolate(F.relu(evidence), size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.amax(dim=(1, 2), keepdim=True)
    # A map whose positive part is rounding noise against the evidence's own scale says nothing: all 0.
    scale = evidence.abs().amax(dim=(1, 2, 3)).view(-1, 1, 1)
    return torch.where(peak > 1e-6 * scale, cam / peak.clamp_min(1e-300), 0.0).float().numpy()


def eval_crops(module, paths: Sequence[str]) -> torch.Tensor:
    """The images as the model sees them at evaluation (its resize and centre crop), uint8 (B, 3, H, W)."""
    hp = module.hparams
    transform = eval_transform(hp.image_size, hp.crop_pct, interpolation=hp.interpolation)
    draft = eval_resize_size(hp.image_size, hp.crop_pct)
    return torch.stack([transform(load_image(p, draft_size=draft)) for p in paths])


def pick(probs: np.ndarray, targets: np.ndarray, mistakes: int = 8, per_class: int = 2) -> list[int]:
    """The rows to explain: the ``mistakes`` most confident mistakes, then the ``per_class`` most confident correct
    predictions of each class."""
    predicted = probs.argmax(axis=1)
    p_true = probs[np.arange(len(targets)), targets]
    rows = top_mistakes(probs, targets, mistakes)
    for c in range(probs.shape[1]):
        right = np.flatnonzero((predicted == targets) & (targets == c))
        rows += [int(i) for i in right[np.argsort(-p_true[right], kind="stable")][:per_class]]
    return rows
