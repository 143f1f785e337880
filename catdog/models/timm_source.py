"""timm backbones: ``model.arch=timm/NAME`` (the ``timm`` extra: ``pip install -e ".[timm]"``).

``timm.create_model(NAME)`` builds the network; ``model.weights=imagenet`` takes timm's pretrained weights (downloaded
from the Hugging Face hub and cached there, ``~/.cache/huggingface``), ``model.weights=PATH`` a local copy of that
file (``.safetensors`` or ``.pth``); the eval preprocessing (size, crop, interpolation, mean, std) is the model's own
pretrained config; the stages staged fine-tuning unfreezes are timm's own parameter groups (``group_matcher``, coarse:
stem, then each stage, then the head). Everything else (heads, checkpoints, prediction, export, reports) is as for
torchvision models.
"""

from __future__ import annotations

import difflib
import functools
from pathlib import Path

from torch import nn

from catdog.errors import ConfigError, WeightsUnavailableError

PREFIX = "timm/"
INSTALL = 'pip install -e ".[timm]"'


def is_timm(arch) -> bool:
    return isinstance(arch, str) and arch.startswith(PREFIX)


def _timm():
    try:
        import timm
    except ImportError:
        raise ConfigError(f"model.arch=timm/... needs timm, which is not installed: {INSTALL}") from None
    return timm


def timm_name(arch: str) -> str:
    return arch[len(PREFIX) :]


@functools.cache
def _timm_names() -> frozenset[str]:
    return frozenset(_timm().list_models())


def check_timm_arch(arch: str) -> str:
    """``timm/NAME`` where NAME is one of ``timm.list_models()``."""
    _timm()  # installed (a clear message if not), before the cached names
    names = _timm_names()
    name = timm_name(arch)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(PREFIX + c for c in close)}?" if close else ""
        raise ConfigError(
            f"model.arch={arch!r} is not a timm model{hint} (python -c 'import timm; print(timm.list_models())')"
        )
    return arch


@functools.cache
def _pretrained_cfg(arch: str) -> dict:
    return _timm().models.get_pretrained_cfg(timm_name(check_timm_arch(arch))).to_dict()


def pretrained_cfg(arch: str) -> dict:
    """The model's pretrained config (looked up once per name; a copy)."""
    return dict(_pretrained_cfg(arch))


def timm_preprocessing(arch: str) -> dict:
    """The eval preprocessing of the model's pretrained config (timm's ``resolve_data_config``'s values)."""
    cfg = pretrained_cfg(arch)
    return {
        "image_size": int(cfg["input_size"][-1]), "crop_pct": float(cfg.get("crop_pct") or 0.875),
        "interpolation": str(cfg.get("interpolation") or "bilinear"), "mean": [float(v) for v in cfg["mean"]],
        "std": [float(v) for v in cfg["std"]],
    }  # fmt: skip


def timm_fixed_input_size(arch: str) -> bool:
    """Whether the model is built for one input size (timm's ViTs): it is then built for ``data.image_size``."""
    return bool(pretrained_cfg(arch).get("fixed_input_size"))


def create_timm(arch: str, num_classes: int, weights: str | None, dropout: float, image_size: int) -> nn.Module:
    """``timm.create_model`` with a ``num_classes`` classifier, from random init, timm's pretrained weights
    (``imagenet``) or a local weights file; an unavailable download stops with what to do."""
    timm, name = _timm(), timm_name(arch)
    kwargs = {"num_classes": num_classes, "drop_rate": dropout}
    if timm_fixed_input_size(arch):
        kwargs["img_size"] = int(image_size)
    if weights is None:
        return timm.create_model(name, pretrained=False, **kwargs)
    overlay = None
    if weights != "imagenet":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsUnavailableError(f"model.weights file not found: {path}")
        overlay = {"file": str(path)}
    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any download or load failure gets the same actionable message
        if overlay is not None:
            raise WeightsUnavailableError(
                f"cannot load {weights} into timm's {name}: {type(exc).__name__}: {exc}"
            ) from None
        raise WeightsUnavailableError(
            f"cannot get timm's pretrained weights for {name} ({type(exc).__name__}: {exc}).\n"
            "timm downloads them from the Hugging Face hub and caches them under ~/.cache/huggingface (HF_HOME).\n"
            "Offline: copy that cache from a machine with internet, or download the model's .safetensors file and "
            f"pass model.weights=/path/to/file; or train from scratch with model.weights=null"
        ) from None


def timm_groups(model: nn.Module) -> list[list[str]]:
    """The model's parameter names in timm's coarse groups, in order (stem first, head last)."""
    grouped = _timm().models.group_parameters(model, model.group_matcher(coarse=True))
    return [list(grouped[k]) for k in sorted(grouped)]
