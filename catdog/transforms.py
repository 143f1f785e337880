"""Image preprocessing: PIL image -> fixed-size uint8 CHW tensor. Normalization happens on the device, in the model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import InterpolationMode, v2

from catdog.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_size(image_size: int) -> None:
    if not isinstance(image_size, int) or image_size < 32:
        raise ConfigError(f"data.image_size must be an integer >= 32 (VGG halves it five times), got {image_size!r}")


def eval_resize_size(image_size: int, crop_pct: float) -> int:
    """Shorter side to resize to before the centre crop (224 at crop_pct 0.875 -> 256, as torchvision does)."""
    if not 0.0 < crop_pct <= 1.0:
        raise ConfigError(f"data.crop_pct must be in (0, 1], got {crop_pct}")
    return int(round(image_size / crop_pct))


def eval_transform(image_size: int, crop_pct: float = 0.875) -> v2.Compose:
    """Resize the shorter side, centre-crop a square, return uint8 CHW."""
    _check_size(image_size)
    return v2.Compose(
        [
            v2.Resize(eval_resize_size(image_size, crop_pct), interpolation=InterpolationMode.BILINEAR, antialias=True),
            v2.CenterCrop(image_size),
            v2.PILToTensor(),
        ]
    )


def train_transform(
    image_size: int,
    scale: Sequence[float] = (0.35, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    rotation: float = 0.0,
    color_jitter: float = 0.0,
) -> v2.Compose:
    """Train-time augmentation: random resized crop, horizontal flip, optional small rotation and colour jitter."""
    _check_size(image_size)
    if not (0.0 < scale[0] <= scale[1] <= 1.0):
        raise ConfigError(f"data.augment.scale must satisfy 0 < lo <= hi <= 1, got {list(scale)}")
    ops = []
    if rotation:
        ops.append(v2.RandomRotation(float(rotation), interpolation=InterpolationMode.BILINEAR))
    ops.append(
        v2.RandomResizedCrop(
            image_size, scale=tuple(scale), ratio=tuple(ratio), interpolation=InterpolationMode.BILINEAR, antialias=True
        )
    )
    if hflip:
        ops.append(v2.RandomHorizontalFlip(float(hflip)))
    if color_jitter:
        j = float(color_jitter)
        ops.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j))
    ops.append(v2.PILToTensor())
    return v2.Compose(ops)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (or [0, 1] float) NCHW -> normalized float; mean/std are (1, C, 1, 1) tensors on x's device."""
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    return (x - mean) / std
