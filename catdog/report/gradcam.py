"""Grad-CAM (Selvaraju et al., 2017) for the reports: where the trained network looked for the class it predicted.

The map is taken at the output of the network's last backbone stage (:mod:`catdog.models.stages`: VGG's last conv
block before its max-pool, ResNet's layer4, ConvNeXt's and Swin's last stage, ViT's last encoder layer; the last
``Conv2d`` for a family without a stage table). Hooks keep that layer's output (and input) and
``torch.autograd.grad`` takes the gradient of the predicted class's logit with respect to it, with the input itself
requiring a gradient: frozen stages and VGG's in-place ReLU are no obstacle, and nothing is registered on the module
after the call.

Outputs are turned into (B, C, h, w) maps by their shape, not by the family's name (:func:`as_map`):

- tokens (B, T, C): a ViT's prefix tokens dropped (the model's ``num_prefix_tokens`` where it has one: timm's class,
  register and distillation tokens; torchvision's class token), the rest laid on the patch grid; a sequence that
  makes no grid raises an error that says why (the report logs it and goes on without the picture). A ViT that
  predicts from its class token reads nothing from the patch tokens after its last block, whose output's patch tokens
  so get no gradient: the map is then taken at that block's input (the tokens its attention reads), as Grad-CAM for
  ViTs usually is, instead of a blank one;
- 4-D maps are channels-first (B, C, h, w) or channels-last (B, h, w, C: Swin's stages, torchvision's and timm's,
  MambaOut's): the reading whose two spatial sides are in the input's proportions (a square for the square eval
  crops) and whose channel count is the layer's own (its last normalization, linear or convolution width, where it
  has one); a map that fits both (c x c cells of c channels) takes the model's declared format (timm's
  ``output_fmt``, torchvision's Swin), else channels-first.

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

#: torchvision families whose stage outputs are channels-last maps (B, h, w, C): the tie-break of :func:`as_map`.
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


def layer_channels(layer: nn.Module) -> int | None:
    """The channel count of ``layer``'s output as its own modules give it: the width of its last normalization,
    linear or convolution layer (registration order, the forward order of the stages Grad-CAM explains); None for a
    layer without one (VGG's last ReLU)."""
    for m in reversed(list(layer.modules())):
        if isinstance(m, nn.LayerNorm):
            return int(m.normalized_shape[-1])
        if isinstance(m, nn.GroupNorm):
            return int(m.num_channels)
        if isinstance(m, nn.modules.batchnorm._NormBase):
            return int(m.num_features)
        if isinstance(m, nn.Linear):
            return int(m.out_features)
        if isinstance(m, nn.modules.conv._ConvNd):
            return int(m.out_channels)
    return None


def prefix_tokens(model: nn.Module) -> int | None:
    """How many tokens come before a ViT's patch tokens: timm's ``num_prefix_tokens`` (class, register and
    distillation tokens), 1 for torchvision's class token; None where the model does not say."""
    n = getattr(model, "num_prefix_tokens", None)
    if isinstance(n, int):
        return n
    return 1 if isinstance(getattr(model, "class_token", None), torch.Tensor) else None


def declares_channels_last(model: nn.Module, family_name: str) -> bool:
    """Whether the model says its stage outputs are channels-last: timm's ``output_fmt`` or a torchvision family of
    :data:`CHANNELS_LAST`."""
    return getattr(model, "output_fmt", None) == "NHWC" or family_name in CHANNELS_LAST


def _in_proportion(h: int, w: int, size: Sequence[int]) -> bool:
    """Whether an h x w grid has the proportions of a ``size`` (H, W) input, to within one cell (equal sides for a
    square input)."""
    H, W = size
    return abs(h * W - w * H) < max(H, W)


def _token_grid(n: int, size: Sequence[int]) -> tuple[int, int] | None:
    """The (h, w) grid of ``n`` patch tokens in the input's proportions; None if there is none."""
    H, W = size
    h = max(1, round(math.sqrt(n * H / W)))
    w = n // h
    return (h, w) if h * w == n and _in_proportion(h, w, size) else None


def is_channels_last(shape: Sequence[int], size: Sequence[int], channels: int | None, declared: bool) -> bool:
    """Whether a 4-D output of ``shape`` is (B, h, w, C) rather than (B, C, h, w), for a ``size`` (H, W) input and a
    layer of ``channels`` channels (None: unknown): the only reading whose spatial sides are in the input's
    proportions and whose channel count is ``channels``; else the only one in proportion; else the only one with
    ``channels`` in its place; else ``declared`` (both readings fit: a c x c map of c channels)."""
    _, d1, d2, d3 = shape
    first, last = _in_proportion(d2, d3, size), _in_proportion(d1, d2, size)
    if channels is not None and (first and d1 == channels) != (last and d3 == channels):
        return last and d3 == channels
    if first != last:
        return last
    if channels is not None and (d1 == channels) != (d3 == channels):
        return d3 == channels
    return declared


def as_map(
    a: torch.Tensor,
    size: Sequence[int],
    channels: int | None = None,
    prefix: int | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """A stage output as (B, C, h, w), for a ``size`` (H, W) input. Tokens (B, T, C): the ``prefix`` tokens dropped
    (None: none if T tokens make a grid, else one, a class token) and the rest laid on their grid, a ValueError where
    they make none. 4-D maps: permuted where :func:`is_channels_last` says so (``channels``: the layer's channel
    count; ``channels_last``: the model's declared format)."""
    if a.ndim == 3:
        tokens = a.shape[1]
        if prefix is None:
            prefix = 0 if _token_grid(tokens, size) else 1
        grid = _token_grid(tokens - prefix, size) if tokens > prefix else None
        if grid is None:
            raise ValueError(
                f"the explained layer outputs {tokens} tokens: after {prefix} prefix token(s) (class, register or "
                f"distillation tokens) the {tokens - prefix} left make no grid of patches for a {size[0]} x "
                f"{size[1]} input"
            )
        return a[:, prefix:].transpose(1, 2).reshape(a.shape[0], a.shape[2], *grid)
    if a.ndim != 4:
        raise ValueError(f"the explained layer outputs a {a.ndim}-D tensor {tuple(a.shape)}: no map of locations")
    return a.permute(0, 3, 1, 2) if is_channels_last(a.shape, size, channels, channels_last) else a


def _or_zeros(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """A gradient, zeros where autograd found no path (``allow_unused``)."""
    return torch.zeros_like(like) if grad is None else grad


def grad_cam(module, images: torch.Tensor, classes: Sequence[int]) -> np.ndarray:
    """Grad-CAM maps (B, H, W) in [0, 1] of ``module`` (a :class:`catdog.models.module.ClassifierModule`) for uint8
    ``images`` (B, 3, H, W, the eval crops), each for the class in ``classes``."""
    net = module.net
    layer = target_layer(net)
    kept: dict[str, torch.Tensor] = {}

    def keep_input(_module, inputs):
        if inputs and isinstance(inputs[0], torch.Tensor):
            kept["input"] = inputs[0]

    def keep(_module, _inputs, output):
        kept["a"] = output[0] if isinstance(output, tuple) else output

    was_training = module.training
    module.eval()
    handles = [layer.register_forward_pre_hook(keep_input), layer.register_forward_hook(keep)]
    try:
        with torch.inference_mode(False), torch.enable_grad():
            x = normalize(images.clone(), module.mean, module.std).requires_grad_(True)
            logits = net(x)
            score = logits.gather(1, torch.as_tensor(list(classes), device=logits.device).view(-1, 1)).sum()
            tokens = kept["a"].ndim == 3 and kept.get("input") is not None
            tokens = tokens and kept["input"].shape == kept["a"].shape and kept["input"].requires_grad
            wrt = [kept["a"], kept["input"]] if tokens else [kept["a"]]
            grads = torch.autograd.grad(score, wrt, allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
        module.train(was_training)
    layout = {
        "size": tuple(images.shape[-2:]), "channels": layer_channels(layer), "prefix": prefix_tokens(net.model),
        "channels_last": declares_channels_last(net.model, family_of(net.arch)),
    }  # fmt: skip
    a, g = as_map(kept["a"].detach(), **layout), as_map(_or_zeros(grads[0], kept["a"]), **layout)
    if tokens and not bool(g.any()):  # read from the class token alone: the last block's input instead
        a, g = as_map(kept["input"].detach(), **layout), as_map(_or_zeros(grads[1], kept["input"]), **layout)
    evidence = (g.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1, keepdim=True).double()
    cam = F.interpolate(F.relu(evidence), size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.amax(dim=(1, 2), keepdim=True)
    # A map whose positive part is rounding noise against the evidence's own scale says nothing: all 0.
    scale = evidence.abs().amax(dim=(1, 2, 3)).view(-1, 1, 1)
    return torch.where(peak > 1e-6 * scale, cam / peak.clamp_min(1e-300), 0.0).float().cpu().numpy()


def mean_map(cams: Sequence[np.ndarray], shape: Sequence[int]) -> np.ndarray:
    """An ensemble's map: the mean of its members' maps (each in [0, 1], resized to ``shape`` (H, W) where its
    member's crop has another size), scaled to a peak of 1 again (all 0 where every map is)."""
    shape = tuple(shape)
    resized = [
        cam if cam.shape == shape else F.interpolate(torch.from_numpy(cam)[None, None], size=shape, mode="bilinear",
                                                     align_corners=False)[0, 0].numpy()
        for cam in cams
    ]  # fmt: skip
    mean = np.mean(resized, axis=0, dtype=np.float64)
    peak = float(mean.max())
    return (mean / peak if peak > 0 else mean).astype(np.float32)


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
