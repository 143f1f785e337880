"""Pretrained weights for any torchvision classifier: torchvision's weights API (downloaded and cached), a local file
for offline machines, the preprocessing the weights were trained with, and an error that says what to do when
neither is available."""

from __future__ import annotations

import logging
import os
import socket
from collections import OrderedDict
from pathlib import Path

import torch
from torchvision.models import WeightsEnum, get_model_weights

from catdog.errors import CheckpointError, WeightsUnavailableError
from catdog.models.timm_source import is_timm, timm_preprocessing

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 20
#: Eval preprocessing without pretrained weights: torchvision's classic 224 px crop of a 256 px resize.
DEFAULT_PREPROCESSING = {
    "image_size": 224,
    "crop_pct": 0.875,
    "interpolation": "bilinear",
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
}


def default_weights(arch: str) -> WeightsEnum:
    """The weights ``model.weights=imagenet`` stands for: torchvision's ``DEFAULT`` (best) weights of ``arch``."""
    return get_model_weights(arch).DEFAULT


def cached_weights_path(weights: WeightsEnum) -> Path:
    """Where torchvision caches (and looks for) a weights file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def weights_preprocessing(weights: WeightsEnum) -> dict:
    """Eval preprocessing of ``weights`` (their ``transforms()``): crop size, ``crop_pct`` = crop / resize,
    interpolation, mean and std, in the form of ``data.*`` / the model's settings."""
    t = weights.transforms()
    crop, resize = int(t.crop_size[0]), int(t.resize_size[0])
    return {
        "image_size": crop,
        "crop_pct": crop / resize,
        "interpolation": t.interpolation.value,
        "mean": [float(v) for v in t.mean],
        "std": [float(v) for v in t.std],
    }


def eval_preprocessing(arch: str, pretrained: bool) -> dict:
    """The preprocessing a model of ``arch`` expects: its default weights' when it starts from pretrained weights
    (ImageNet or a local copy of torchvision's file), else :data:`DEFAULT_PREPROCESSING`; a timm model's pretrained
    config in either case (its own size, crop, interpolation, mean and std)."""
    if is_timm(arch):
        return timm_preprocessing(arch)
    return weights_preprocessing(default_weights(arch)) if pretrained else dict(DEFAULT_PREPROCESSING)


def imagenet_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """``arch``'s default ImageNet weights from torchvision's cache, downloading them there first if needed."""
    weights = default_weights(arch)
    cached = cached_weights_path(weights)
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        return weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any download failure gets the same actionable message
        raise WeightsUnavailableError(
            f"cannot get the ImageNet weights for {arch} ({weights}; {type(exc).__name__}: {exc}).\n"
            f"torchvision downloads them from {weights.url} and caches them as\n  {cached}\n"
            f"Either download that file on a machine with internet and copy it to exactly that path "
            f"(or set TORCH_HOME), or pass a local copy with model.weights=/path/to/{cached.name}.\n"
            f"Without ImageNet weights, train from scratch with a recipe made for it: experiment=cpu_scratch (CPU) "
            f"or experiment=vgg16_bn_scratch (GPU); model.weights=null alone keeps this recipe's frozen stages, "
            f"which cannot learn from random weights."
        ) from None
    finally:
        socket.setdefaulttimeout(old_timeout)


def check_weights_available(arch: str, weights: str | None) -> None:
    """Before any data is read: make sure the requested weights can be had (download ImageNet ones into the cache)."""
    if weights is None:
        return
    if weights == "imagenet" and is_timm(arch):
        return  # timm fetches or finds them as the network is built, failing there with what to do
    if weights == "imagenet":
        if not cached_weights_path(default_weights(arch)).is_file():
            imagenet_state_dict(arch)  # downloads into torchvision's cache, or raises with what to do
        return
    path = Path(weights).expanduser()
    if not path.is_file():
        raise CheckpointError(f"model.weights file not found: {path}")


def load_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A torchvision state dict from a local file (never unpickles code: ``weights_only=True``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"model.weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"cannot load weights file {path} safely (weights_only=True): {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors (expected a torchvision .pth weights file)")
    return state


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def load_pretrained(model: torch.nn.Module, state: dict, arch: str, head: str, source: str) -> None:
    """Load ``state`` into torchvision ``model`` (still with its ImageNet classifier ``head``): every backbone
    tensor must be there with the right shape; classifier tensors are taken where they fit; extra tensors (auxiliary
    classifiers) are ignored."""
    expected = model.state_dict()
    backbone = [k for k in expected if not _under(k, head)]
    missing = [k for k in backbone if k not in state]
    wrong = [k for k in backbone if k in state and state[k].shape != expected[k].shape]
    if missing or wrong:
        has_bn, wants_bn = any("running_mean" in k for k in state), any("running_mean" in k for k in expected)
        hint = f" (the file {'has' if has_bn else 'lacks'} BatchNorm statistics)" if has_bn != wants_bn else ""
        detail = f"missing {missing[:3]}" if missing else f"shapes differ for {wrong[:3]}"
        raise CheckpointError(
            f"{source} does not match model.arch={arch}{hint}: {len(missing)} missing and {len(wrong)} mismatched "
            f"of {len(backbone)} backbone tensors, e.g. {detail}; are these weights of another architecture?"
        )
    keep = OrderedDict((k, v) for k, v in state.items() if k in expected and v.shape == expected[k].shape)
    if hasattr(state, "_metadata"):  # module versions (MNASNet reads them when loading)
        keep._metadata = state._metadata
    model.load_state_dict(keep, strict=False)
    ignored = sorted(set(state) - set(keep))
    if ignored:
        log.info("%s: %d tensor(s) not used by %s, e.g. %s", source, len(ignored), arch, ignored[:3])
    absent = [k for k in expected if _under(k, head) and k not in keep]
    if absent:
        log.info("%s has no weights for %s's classifier (%s, ...): it starts from random init", source, arch, absent[0])
    log.info("loaded %s", source)
