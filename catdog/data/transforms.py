"""Image preprocessing: PIL image -> fixed-size uint8 CHW tensor. Normalization happens on the device, in the model."""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import torch
from torchvision.transforms import InterpolationMode, v2

from catdog.errors import ConfigError, check_known_keys

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


def _check_size(image_size: int) -> None:
    if not isinstance(image_size, int) or image_size < 32:
        raise ConfigError(f"data.image_size must be an integer >= 32 (networks halve it 5 times), got {image_size!r}")


def interpolation_mode(name: str) -> InterpolationMode:
    """``data.interpolation`` (the resize filter of the eval transform, the cache and training crops)."""
    if name not in INTERPOLATIONS:
        raise ConfigError(f"data.interpolation must be one of {list(INTERPOLATIONS)}, got {name!r}")
    return InterpolationMode(name)


def eval_resize_size(image_size: int, crop_pct: float) -> int:
    """Shorter side to resize to before the centre crop (224 at crop_pct 0.875 -> 256, as torchvision does)."""
    if not 0.0 < crop_pct <= 1.0:
        raise ConfigError(f"data.crop_pct must be in (0, 1], got {crop_pct}")
    return int(round(image_size / crop_pct))


def centre_offset(length: int, size: int) -> int:
    """Where torchvision's ``CenterCrop(size)`` starts along a side of ``length``."""
    return int(round((length - size) / 2.0))


class TTASquare(torch.nn.Module):
    """After ``Resize(resize)``: the central ``resize x resize`` square, placed so that its own centre ``size`` crop
    is exactly ``CenterCrop(size)`` of the resized image (so TTA's plain view equals the plain prediction)."""

    def __init__(self, resize: int, size: int):
        super().__init__()
        self.resize, self.size = int(resize), int(size)

    def forward(self, img):
        h, w = v2.functional.get_size(img)
        inner = centre_offset(self.resize, self.size)
        top = min(max(centre_offset(h, self.size) - inner, 0), h - self.resize)
        left = min(max(centre_offset(w, self.size) - inner, 0), w - self.resize)
        return v2.functional.crop(img, top, left, self.resize, self.resize)


def eval_transform(
    image_size: int, crop_pct: float = 0.875, square: bool = False, interpolation: str = "bilinear"
) -> v2.Compose:
    """Resize the shorter side (``interpolation``, antialiased), centre-crop a square, return uint8 CHW. With
    ``square`` the square is the resize size, not ``image_size``: ``crops`` test-time augmentation takes its views
    from it (:mod:`catdog.models.tta`)."""
    _check_size(image_size)
    resize = eval_resize_size(image_size, crop_pct)
    return v2.Compose(
        [
            v2.Resize(resize, interpolation=interpolation_mode(interpolation), antialias=True),
            TTASquare(resize, image_size) if square else v2.CenterCrop(image_size),
            v2.PILToTensor(),
        ]
    )


AUTO_AUGMENTS = (None, "trivial", "randaugment")


def _auto_augment(name: str | None, magnitude: int | None, interpolation: InterpolationMode) -> list:
    """torchvision's automatic augmentation policies: ``trivial`` (TrivialAugmentWide, no settings) or
    ``randaugment`` (RandAugment, 2 ops at ``magnitude``, default 9)."""
    if name not in AUTO_AUGMENTS:
        raise ConfigError(f"data.augment.auto must be one of {list(AUTO_AUGMENTS)}, got {name!r}")
    if name == "trivial":
        return [v2.TrivialAugmentWide(interpolation=interpolation)]
    if name == "randaugment":
        m = 9 if magnitude is None else magnitude
        if not isinstance(m, int) or not 0 <= m <= 30:
            raise ConfigError(f"data.augment.magnitude must be an integer in 0..30, got {magnitude!r}")
        return [v2.RandAugment(num_ops=2, magnitude=m, interpolation=interpolation)]
    return []


def colour_jitter(strength: float) -> v2.ColorJitter | None:
    """``data.augment.color_jitter``: torchvision's ``ColorJitter`` of brightness, contrast and saturation
    ``strength`` (each factor uniform in [max(0, 1 - strength), 1 + strength], the three applied in a random order per
    image; no hue), None at 0. Both pipelines take their ranges from it."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength < math.inf:
        raise ConfigError(f"data.augment.color_jitter must be a number >= 0 (0 = off), got {strength!r}")
    if not strength:
        return None
    j = float(strength)
    return v2.ColorJitter(brightness=j, contrast=j, saturation=j)


def train_transform(
    image_size: int,
    scale: Sequence[float] = (0.35, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    rotation: float = 0.0,
    color_jitter: float = 0.0,
    auto: str | None = None,
    magnitude: int | None = None,
    interpolation: str = "bilinear",
) -> v2.Compose:
    """Train-time augmentation: random resized crop, horizontal flip, optional small rotation, colour jitter and an
    automatic policy (``auto``: TrivialAugmentWide or RandAugment, applied after the crop); every resampling uses
    ``interpolation`` (``data.interpolation``)."""
    _check_size(image_size)
    mode = interpolation_mode(interpolation)
    if not (0.0 < scale[0] <= scale[1] <= 1.0):
        raise ConfigError(f"data.augment.scale must satisfy 0 < lo <= hi <= 1, got {list(scale)}")
    policy = _auto_augment(auto, magnitude, mode)
    ops = []
    if rotation:
        ops.append(v2.RandomRotation(float(rotation), interpolation=mode))
    ops.append(
        v2.RandomResizedCrop(image_size, scale=tuple(scale), ratio=tuple(ratio), interpolation=mode, antialias=True)
    )
    if hflip:
        ops.append(v2.RandomHorizontalFlip(float(hflip)))
    jitter = colour_jitter(color_jitter)
    if jitter is not None:
        ops.append(jitter)
    ops += policy
    ops.append(v2.PILToTensor())
    return v2.Compose(ops)


def check_progressive(progressive: dict | None, image_size: int) -> dict | None:
    """``data.progressive``: ``{start_size, epochs}`` (train size grows from start_size to image_size over the first
    ``epochs`` epochs) or null."""
    if progressive is None:
        return None
    if not isinstance(progressive, dict) or set(progressive) - {"start_size", "epochs", "multiple"}:
        raise ConfigError(f"data.progressive must be null or {{start_size, epochs[, multiple]}}, got {progressive!r}")
    start, epochs = progressive.get("start_size"), progressive.get("epochs")
    multiple = progressive.get("multiple", 16)
    if not isinstance(start, int) or not 32 <= start <= image_size:
        raise ConfigError(f"data.progressive.start_size must be an integer in 32..{image_size}, got {start!r}")
    if not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"data.progressive.epochs must be an integer >= 1, got {epochs!r}")
    if not isinstance(multiple, int) or multiple < 1:
        raise ConfigError(f"data.progressive.multiple must be a positive integer, got {multiple!r}")
    return {"start_size": start, "epochs": epochs, "multiple": multiple}


def progressive_size(epoch: int, image_size: int, progressive: dict | None) -> int:
    """Training image size at ``epoch``: linear from ``start_size`` (epoch 0) to ``image_size`` (epoch ``epochs``
    and later), rounded down to a multiple of ``multiple`` (never below ``start_size``)."""
    if progressive is None:
        return image_size
    start, epochs, multiple = progressive["start_size"], progressive["epochs"], progressive.get("multiple", 16)
    if epoch >= epochs:
        return image_size
    size = start + (image_size - start) * epoch / epochs
    return max(start, int(size) // multiple * multiple)


def _augment_parameters() -> dict[str, inspect.Parameter]:
    """:func:`train_transform`'s parameters that ``data.augment`` sets."""
    params = inspect.signature(train_transform).parameters
    return {n: p for n, p in params.items() if n not in ("image_size", "interpolation")}


def check_augment(augment: dict | None) -> None:
    """``data.augment``: only :func:`train_transform`'s settings."""
    check_known_keys(augment, list(_augment_parameters()), "data.augment")


def augment_settings(augment: dict | None) -> dict:
    """``data.augment`` completed with :func:`train_transform`'s defaults (what both pipelines apply)."""
    augment = dict(augment or {})
    defaults = {
        n: p.default
        for n, p in inspect.signature(train_transform).parameters.items()
        if n not in ("image_size", "interpolation")
    }
    return {**defaults, **augment}


class ProgressiveTransform:
    """The train transform for each epoch's image size (progressive resizing); the dataset calls ``for_epoch``."""

    def __init__(self, image_size: int, progressive: dict | None, interpolation: str = "bilinear", **augment):
        self.image_size = image_size
        self.progressive = progressive
        self.augment = augment
        self.interpolation = interpolation
        self._by_size: dict[int, v2.Compose] = {}
        self.for_epoch(0)  # validate the augmentation settings now

    def size(self, epoch: int) -> int:
        return progressive_size(epoch, self.image_size, self.progressive)

    def for_epoch(self, epoch: int) -> v2.Compose:
        size = self.size(epoch)
        if size not in self._by_size:
            self._by_size[size] = train_transform(size, interpolation=self.interpolation, **self.augment)
        return self._by_size[size]

    def __call__(self, image):
        return self.for_epoch(0)(image)


def complete_mixing(mixing: dict | None) -> dict:
    """``model.mixing`` as ``{mixup_alpha, cutmix_alpha, prob}`` floats, the keys it leaves out at their off values
    (its values checked by :func:`check_mixing`)."""
    values = {"mixup_alpha": 0.0, "cutmix_alpha": 0.0, "prob": 1.0, **(mixing or {})}
    return {k: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for k, v in values.items()}


def check_mixing(mixing: dict | None) -> None:
    """``model.mixing``: ``{mixup_alpha, cutmix_alpha, prob}``; alphas 0 turn each off."""
    values = {"mixup_alpha": 0.0, "cutmix_alpha": 0.0, "prob": 1.0, **(mixing or {})}
    unknown = sorted(set(values) - {"mixup_alpha", "cutmix_alpha", "prob"})
    if unknown:
        raise ConfigError(f"model.mixing has unknown key(s) {unknown}; known: mixup_alpha, cutmix_alpha, prob")
    for key in ("mixup_alpha", "cutmix_alpha"):
        v = values[key]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
            raise ConfigError(f"model.mixing.{key} must be a number >= 0 (0 = off), got {v!r}")
    p = values["prob"]
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 <= p <= 1:
        raise ConfigError(f"model.mixing.prob must be in [0, 1], got {p!r}")


def build_mixer(mixing: dict | None, num_classes: int):
    """Per-batch MixUp / CutMix from torchvision (one of them, chosen at random, when both are on), applied to a
    ``prob`` fraction of batches: ``mixer(images, labels) -> (images, soft labels (B, K))``; None when off."""
    m = complete_mixing(mixing)
    ops = []
    if m["mixup_alpha"] > 0:
        ops.append(v2.MixUp(alpha=m["mixup_alpha"], num_classes=num_classes))
    if m["cutmix_alpha"] > 0:
        ops.append(v2.CutMix(alpha=m["cutmix_alpha"], num_classes=num_classes))
    if not ops or m["prob"] == 0:
        return None
    mixer = ops[0] if len(ops) == 1 else v2.RandomChoice(ops)
    return _Mixer(mixer, m["prob"], num_classes)


class _Mixer:
    def __init__(self, mixer, prob: float, num_classes: int):
        self.mixer, self.prob, self.num_classes = mixer, prob, num_classes

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.prob < 1.0 and float(torch.rand(())) >= self.prob:
            return x, y
        return self.mixer(x, y)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (or [0, 1] float) NCHW -> normalized float; mean/std are (1, C, 1, 1) tensors on x's device."""
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    return (x - mean) / std
