"""Deterministic test-time augmentation on batched tensors: all views go through the model in one pass."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from catdog.errors import ConfigError

# Area fraction kept by the zoomed and corner crops.
_CROP = 0.875


def _crop_resize(x: torch.Tensor, top: float, left: float, frac: float) -> torch.Tensor:
    h, w = x.shape[-2:]
    ch, cw = max(1, round(h * frac)), max(1, round(w * frac))
    t, l = round((h - ch) * top), round((w - cw) * left)
    crop = x[..., t : t + ch, l : l + cw]
    return F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False, antialias=True)


def _flip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


def _zoom(x: torch.Tensor) -> torch.Tensor:
    return _crop_resize(x, 0.5, 0.5, _CROP)


def _corner(top: float, left: float):
    return lambda x: _crop_resize(x, top, left, _CROP)


# The order is the depth order: tta=N uses the plain pass plus the first N of these.
VIEWS = (
    ("hflip", _flip),
    ("zoom", _zoom),
    ("zoom_hflip", lambda x: _flip(_zoom(x))),
    ("top_left", _corner(0.0, 0.0)),
    ("bottom_right", _corner(1.0, 1.0)),
    ("top_right", _corner(0.0, 1.0)),
    ("bottom_left", _corner(1.0, 0.0)),
    ("top_left_hflip", lambda x: _flip(_corner(0.0, 0.0)(x))),
    ("bottom_right_hflip", lambda x: _flip(_corner(1.0, 1.0)(x))),
    ("top_right_hflip", lambda x: _flip(_corner(0.0, 1.0)(x))),
    ("bottom_left_hflip", lambda x: _flip(_corner(1.0, 0.0)(x))),
)
MAX_TTA = len(VIEWS)


def check_tta(tta: int) -> int:
    if not isinstance(tta, int) or isinstance(tta, bool) or not 0 <= tta <= MAX_TTA:
        raise ConfigError(
            f"tta must be an integer from 0 to {MAX_TTA} (augmented views added to the plain pass), got {tta!r}"
        )
    return tta


def make_views(x: torch.Tensor, tta: int) -> torch.Tensor:
    """(B, C, H, W) -> (V*B, C, H, W), view-major, V = 1 + tta; view 0 is the plain batch.

    uint8 input becomes float in [0, 1] (what :func:`catdog.transforms.normalize` expects of float input).
    """
    check_tta(tta)
    if tta == 0:
        return x
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    views = [x] + [fn(x).clamp_(0.0, 1.0) for _, fn in VIEWS[:tta]]
    return torch.cat(views, dim=0)


def average_views(probs: torch.Tensor, num_views: int) -> torch.Tensor:
    """(V*B, K) view-major -> (B, K) mean over views."""
    return probs.reshape(num_views, -1, probs.shape[-1]).mean(dim=0)
