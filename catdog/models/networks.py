"""VGG16 / VGG16-BN networks with a new classification head, and the three ways to get their weights."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import torch
from torch import nn
from torchvision.models import VGG16_BN_Weights, VGG16_Weights, WeightsEnum
from torchvision.models.vgg import cfgs as _vgg_cfgs
from torchvision.models.vgg import make_layers

from catdog.errors import CheckpointError, ConfigError, WeightsUnavailableError

log = logging.getLogger(__name__)

ARCHS: dict[str, tuple[WeightsEnum, bool]] = {
    "vgg16": (VGG16_Weights.IMAGENET1K_V1, False),
    "vgg16_bn": (VGG16_BN_Weights.IMAGENET1K_V1, True),
}
HEADS = ("small", "vgg")
DOWNLOAD_TIMEOUT_S = 20


def check_arch(arch: str) -> str:
    if arch not in ARCHS:
        raise ConfigError(f"model.arch must be one of {sorted(ARCHS)}, got {arch!r}")
    return arch


def check_network_args(arch: str, head: str = "small", width: float = 1.0, weights=None, dropout: float = 0.5) -> None:
    """Validate the network settings (config keys ``model.*``) without building anything."""
    check_arch(arch)
    if head not in HEADS:
        raise ConfigError(f"model.head must be one of {list(HEADS)}, got {head!r}")
    if not isinstance(width, (int, float)) or not 0.0 < width <= 1.0:
        raise ConfigError(f"model.width must be in (0, 1], got {width!r}")
    if width != 1.0 and weights is not None:
        raise ConfigError(f"model.width={width} narrows the network, so it needs model.weights=null (got {weights!r})")
    if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ConfigError(f"model.dropout must be in [0, 1), got {dropout!r}")


class VGGClassifier(nn.Module):
    """``backbone`` (the VGG conv stack, torchvision's ``features``) followed by ``head``."""

    def __init__(self, backbone: nn.Sequential, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def blocks(self) -> list[nn.Sequential]:
        """The five conv blocks of the backbone, each ending with its max-pool (shared modules, not copies)."""
        blocks, current = [], []
        for layer in self.backbone:
            current.append(layer)
            if isinstance(layer, nn.MaxPool2d):
                blocks.append(nn.Sequential(*current))
                current = []
        if current:
            blocks.append(nn.Sequential(*current))
        return blocks


def _small_head(in_channels: int, num_classes: int, hidden: int, dropout: float) -> nn.Sequential:
    """Global average pool and a two-layer MLP: the original Keras recipe's small head, size-independent."""
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(in_channels, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


def _vgg_head(classifier: nn.Sequential, num_classes: int, dropout: float) -> nn.Sequential:
    """torchvision's fc6/fc7 (pretrained when the backbone is) with a new last layer."""
    layers = list(classifier.children())
    for layer in layers:
        if isinstance(layer, nn.Dropout):
            layer.p = dropout
    last = layers[-1]
    layers[-1] = nn.Linear(last.in_features, num_classes)
    return nn.Sequential(nn.AdaptiveAvgPool2d((7, 7)), nn.Flatten(), *layers)


def cached_weights_path(weights: WeightsEnum) -> Path:
    """Where torchvision caches (and looks for) a weights file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def _imagenet_state_dict(arch: str) -> dict[str, torch.Tensor]:
    weights, _ = ARCHS[arch]
    cached = cached_weights_path(weights)
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        return weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any download failure gets the same actionable message
        raise WeightsUnavailableError(
            f"cannot get the ImageNet weights for {arch} ({type(exc).__name__}: {exc}).\n"
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
    if weights == "imagenet":
        if not cached_weights_path(ARCHS[check_arch(arch)][0]).is_file():
            _imagenet_state_dict(arch)  # downloads into torchvision's cache, or raises with what to do
        return
    path = Path(weights).expanduser()
    if not path.is_file():
        raise CheckpointError(f"model.weights file not found: {path}")


def load_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A torchvision VGG state dict from a local file (never unpickles code: ``weights_only=True``)."""
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
        raise CheckpointError(f"{path} is not a state dict of tensors (expected torchvision's vgg16/vgg16_bn .pth)")
    return state


def _check_state_matches(state: dict, model_state: dict, arch: str, source: str) -> None:
    wanted = {k: v.shape for k, v in model_state.items() if k.startswith("features.")}
    got = {k: v.shape for k, v in state.items() if k.startswith("features.")}
    if wanted != got:
        other = next((a for a, (_, bn) in ARCHS.items() if (bn != ARCHS[arch][1])), "another architecture")
        hint = f" (it looks like {other} weights)" if any("running_mean" in k for k in got) != ARCHS[arch][1] else ""
        missing = sorted(set(wanted) - set(got))[:3]
        raise CheckpointError(
            f"{source} does not match model.arch={arch}{hint}: conv layers differ, e.g. missing {missing or 'none'}, "
            f"{len(got)} conv tensors in the file vs {len(wanted)} expected"
        )


def build_network(
    arch: str = "vgg16_bn",
    num_classes: int = 2,
    weights: str | None = None,
    head: str = "small",
    head_hidden: int = 256,
    dropout: float = 0.5,
    width: float = 1.0,
) -> VGGClassifier:
    """Build VGG16(-BN) with a ``num_classes`` head.

    ``weights``: ``"imagenet"`` (torchvision's IMAGENET1K_V1, downloaded and cached), a path to a local torchvision
    state dict, or ``None`` for random initialization. ``width`` < 1 narrows every conv layer (random init only), for
    tests and CPU demos.
    """
    from torchvision.models.vgg import VGG

    check_network_args(arch, head, width, weights, dropout)
    if num_classes < 2:
        raise ConfigError(f"the number of classes must be >= 2, got {num_classes}")
    _, batch_norm = ARCHS[arch]
    cfg = [v if v == "M" else max(1, int(round(v * width))) for v in _vgg_cfgs["D"]]
    net = VGG(make_layers(cfg, batch_norm=batch_norm), num_classes=1000, init_weights=True)
    if width != 1.0:  # torchvision's classifier assumes 512 channels
        net.classifier[0] = nn.Linear(cfg[-2] * 7 * 7, 4096)
    if weights is not None:
        if weights == "imagenet":
            state, source = _imagenet_state_dict(arch), f"torchvision's {arch} IMAGENET1K_V1 weights"
        else:
            state, source = load_weights_file(weights), f"weights file {weights}"
        _check_state_matches(state, net.state_dict(), arch, source)
        missing, _ = net.load_state_dict(state, strict=False)
        if any(k.startswith("features.") for k in missing):
            raise CheckpointError(f"{source} lacks conv weights: {missing[:3]}")
        if head == "vgg" and any(k.startswith("classifier.") for k in missing):
            log.warning("%s has no classifier weights; the vgg head's fc6/fc7 start from random init", source)
        log.info("loaded %s", source)
    in_channels = cfg[-2]
    if head == "small":
        new_head = _small_head(in_channels, num_classes, head_hidden, dropout)
    else:
        new_head = _vgg_head(net.classifier, num_classes, dropout)
    return VGGClassifier(net.features, new_head)
