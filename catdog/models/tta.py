"""Deterministic test-time augmentation on batched tensors: all views go through the model in one pass.

Two sets of views (``predict.py tta_views=``), in the same order (the plain pass, then the mirror image, a second
centre view, its mirror, the four corners, then their mirrors; ``tta=N`` takes the first N after the plain pass):

- ``zoom`` (default): from the centre crop the model sees without TTA (``S x S``): the centre view and the corners
  are crops of 0.875 of its side scaled back up to ``S``, so the object looks larger, as in training's random
  resized crops.
- ``crops``: each image is read as the central ``R x R`` square of the resized image (``R`` = the eval resize size,
  110 px for a 96 px model at ``crop_pct=0.875``; :class:`catdog.data.transforms.TTASquare`), and the views are
  ``S x S`` crops of it, as torchvision's ``FiveCrop`` / ``TenCrop`` take them from the resize: the corners, the whole
  square scaled down as the centre view (a wider view), and nothing upsampled.

The view set follows from the input: a batch larger than the model's input size gets ``crops`` views, one of its
size ``zoom`` views. The plain view is, in both, exactly the prediction without TTA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from catdog.data.transforms import centre_offset
from catdog.errors import ConfigError
from catdog.models.calibration import scale_logits

# Side fraction of the zoomed-in crops (``zoom`` views).
_ZOOM_SIDE = 0.875
VIEW_SETS = ("zoom", "crops")

# The order is the depth order: tta=N uses the plain pass plus the first N of these.
VIEW_NAMES = (
    "hflip",
    "centre",
    "centre_hflip",
    "top_left",
    "bottom_right",
    "top_right",
    "bottom_left",
    "top_left_hflip",
    "bottom_right_hflip",
    "top_right_hflip",
    "bottom_left_hflip",
)
MAX_TTA = len(VIEW_NAMES)
# Where each corner view sits: (top, left) as fractions of the free margin.
_CORNERS = {"top_left": (0.0, 0.0), "bottom_right": (1.0, 1.0), "top_right": (0.0, 1.0), "bottom_left": (1.0, 0.0)}


def check_view_set(views: str, key: str = "tta_views") -> str:
    if views not in VIEW_SETS:
        raise ConfigError(f"{key} must be one of {list(VIEW_SETS)}, got {views!r}")
    return views


def check_tta(tta: int, key: str = "tta") -> int:
    if not isinstance(tta, int) or isinstance(tta, bool) or not 0 <= tta <= MAX_TTA:
        raise ConfigError(
            f"{key} must be an integer from 0 to {MAX_TTA} (augmented views added to the plain pass), got {tta!r}"
        )
    return tta


def _crop(x: torch.Tensor, top: int, left: int, size: int) -> torch.Tensor:
    return x[..., top : top + size, left : left + size]


def _scaled(x: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def _view(x: torch.Tensor, name: str, size: int) -> torch.Tensor:
    """One named view of the square batch ``x`` (side >= ``size``), ``size`` px."""
    if name.endswith("_hflip"):
        return _view(x, name.removesuffix("_hflip"), size).flip(-1)
    side = x.shape[-1]
    if name == "hflip":
        return _crop(x, centre_offset(side, size), centre_offset(side, size), size).flip(-1)
    if side > size:  # crops: views from the margin around the centre crop
        if name == "centre":
            return _scaled(x, size)
        top, left = _CORNERS[name]
        return _crop(x, round((side - size) * top), round((side - size) * left), size)
    # zoom: zoom in on the centre or a corner and scale back up.
    crop = max(1, round(side * _ZOOM_SIDE))
    top, left = (0.5, 0.5) if name == "centre" else _CORNERS[name]
    return _scaled(_crop(x, round((side - crop) * top), round((side - crop) * left), crop), size)


def make_views(x: torch.Tensor, tta: int, size: int | None = None) -> torch.Tensor:
    """(B, C, R, R) -> (V*B, C, S, S), view-major, V = 1 + tta; view 0 is the plain centre crop (``x`` itself when
    R <= S). ``size`` = S, default R; an input no larger than S is used at its own size.

    uint8 input becomes float in [0, 1] (what :func:`catdog.data.transforms.normalize` expects of float input).
    """
    side = x.shape[-1]
    size = side if size is None else min(int(size), side)
    if x.shape[-2] != side:
        if tta == 0:
            return x
        raise ValueError(f"test-time augmentation needs square inputs, got {tuple(x.shape[-2:])}")
    plain = _crop(x, centre_offset(side, size), centre_offset(side, size), size)
    if tta == 0:
        return plain
    if x.dtype == torch.uint8:
        x, plain = x.float().div_(255.0), plain.float().div_(255.0)
    views = [plain] + [_view(x, name, size).clamp_(0.0, 1.0) for name in VIEW_NAMES[:tta]]
    return torch.cat(views, dim=0)


def average_views(probs: torch.Tensor, num_views: int) -> torch.Tensor:
    """(V*B, K) view-major -> (B, K) mean over views."""
    return probs.reshape(num_views, -1, probs.shape[-1]).mean(dim=0)


def predict_views(forward, x: torch.Tensor, tta: int, temperature: float | None, image_size: int) -> torch.Tensor:
    """Class probabilities of ``x`` averaged over the plain pass and ``tta`` views (one batched ``forward`` of
    logits); each view's logits are divided by ``temperature`` first when it is given."""
    views = make_views(x, tta, image_size)
    probs = F.softmax(scale_logits(forward(views).float(), temperature), dim=1)
    return average_views(probs, tta + 1)
