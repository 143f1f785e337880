"""Where each torchvision family keeps its classifier and what its natural stages are, the stages that staged
fine-tuning unfreezes from the end.

A family (the torchvision module an architecture comes from: ``vgg``, ``resnet``, ``convnext``, ...) says where the
classifier is and what its natural stages are:

- VGG, AlexNet, SqueezeNet: the conv blocks of ``features``, each ending with its max-pool;
- ResNet / ResNeXt / Wide ResNet: ``layer1``-``layer4``; RegNet: ``trunk_output.block1``-``block4``;
  ShuffleNetV2: ``stage2``-``stage4``; DenseNet: ``denseblock1``-``4``; MaxViT: ``blocks.0``-``3``;
- ConvNeXt, Swin: the four stages of ``features`` (each with the downsampling layer before it);
- EfficientNet (v1, v2): the MBConv stages of ``features``;
- MobileNetV2 / V3, MNASNet: the blocks between two strided convolutions (one stage per resolution);
- GoogLeNet / Inception v3: the inception modules of one resolution (``inception3*``, ``Mixed_5*``, ...);
- ViT: the encoder layers;
- anything else: the model's top-level children.

Parameters outside every stage join the stage after them (a stem joins the first stage, a downsampling layer the
stage it feeds); those after the last stage (a final norm or 1x1 conv) join the last one.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from dataclasses import dataclass

import torchvision
from torch import nn
from torch.nn.modules.utils import _pair

from catdog.errors import ConfigError
from catdog.models.timm_source import check_timm_arch, is_timm, pretrained_cfg, timm_fixed_input_size


@functools.cache
def all_archs() -> tuple[str, ...]:
    """Every torchvision classification model name (``torchvision.models.list_models``)."""
    return tuple(torchvision.models.list_models(module=torchvision.models))


def check_arch(arch: str) -> str:
    if is_timm(arch):
        return check_timm_arch(arch)
    if arch not in all_archs():
        close = difflib.get_close_matches(str(arch), all_archs(), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ConfigError(
            f"model.arch={arch!r} is not a torchvision classification model{hint} (all {len(all_archs())}: "
            "python -c 'import torchvision; print(torchvision.models.list_models(module=torchvision.models))')"
        )
    return arch


def family_of(arch: str) -> str:
    """The torchvision module ``arch`` is defined in: ``resnet`` for resnext50_32x4d, ``vision_transformer``, ...;
    ``timm`` for a timm model."""
    if is_timm(arch):
        return TIMM_FAMILY
    return torchvision.models.get_model_builder(check_arch(arch)).__module__.rsplit(".", 1)[-1]


# ----- stages ------------------------------------------------------------------------------------------------------
def _children(path: str) -> Callable[[nn.Module], list[tuple[str, list[str]]]]:
    """Each child of the module at ``path`` is a stage."""

    def stages(model):
        return [(f"{path}.{n}", [f"{path}.{n}"]) for n, _ in model.get_submodule(path).named_children()]

    return stages


def _paths(*paths: str) -> Callable[[nn.Module], list[tuple[str, list[str]]]]:
    return lambda model: [(p, [p]) for p in paths]


def _groups(path: str, ends: Callable[[nn.Module], bool] | None = None, starts=None):
    """Runs of consecutive children of ``path``: a stage ends after a child for which ``ends`` holds, or a new one
    starts at a child for which ``starts`` holds."""

    def stages(model):
        runs: list[list[str]] = []
        for name, child in model.get_submodule(path).named_children():
            if not runs or (starts is not None and starts(child)):
                runs.append([])
            runs[-1].append(name)
            if ends is not None and ends(child):
                runs.append([])
        runs = [r for r in runs if r]
        label = lambda r: f"{path}.{r[0]}" if len(r) == 1 else f"{path}.{r[0]}-{r[-1]}"  # noqa: E731
        return [(label(r), [f"{path}.{n}" for n in r]) for r in runs]

    return stages


def _prefix_groups(*prefixes: str):
    """Top-level children grouped by name prefix (``inception4`` -> inception4a ... inception4e)."""

    def stages(model):
        names = [n for n, _ in model.named_children()]
        return [(f"{p}*", [n for n in names if n.startswith(p)]) for p in prefixes]

    return stages


def _strided(module: nn.Module) -> bool:
    layers = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
    return any(max(_pair(m.stride)) > 1 for m in module.modules() if isinstance(m, layers))


def _odd_children(path: str):
    """Stages at the odd positions of ``path`` (ConvNeXt / Swin: stem, stage, downsample, stage, ...)."""

    def stages(model):
        names = [n for n, _ in model.get_submodule(path).named_children()]
        return [(f"{path}.{n}", [f"{path}.{n}"]) for n in names[1::2]]

    return stages


def _inner_children(path: str):
    """Every child of ``path`` but the first and the last (EfficientNet: the stages between stem and final conv)."""

    def stages(model):
        names = [n for n, _ in model.get_submodule(path).named_children()][1:-1]
        return [(f"{path}.{n}", [f"{path}.{n}"]) for n in names]

    return stages


def _top_level(model: nn.Module, head: str) -> list[tuple[str, list[str]]]:
    return [(n, [n]) for n, m in model.named_children() if n != head and any(True for _ in m.parameters())]


_pool_blocks = _groups("features", ends=lambda m: isinstance(m, nn.MaxPool2d))


@dataclass(frozen=True)
class Family:
    """Where a family keeps its classifier, how to find its stages, and the keyword of a fixed input size."""

    head: str
    stages: Callable[[nn.Module], list[tuple[str, list[str]]]] | None = None
    size_kwarg: str | None = None


FAMILIES: dict[str, Family] = {
    "vgg": Family("classifier", _pool_blocks),
    "alexnet": Family("classifier", _pool_blocks),
    "squeezenet": Family("classifier", _pool_blocks),
    "resnet": Family("fc", _paths("layer1", "layer2", "layer3", "layer4")),
    "regnet": Family("fc", _children("trunk_output")),
    "shufflenetv2": Family("fc", _paths("stage2", "stage3", "stage4")),
    "densenet": Family("classifier", _paths(*(f"features.denseblock{i}" for i in range(1, 5)))),
    "convnext": Family("classifier", _odd_children("features")),
    "swin_transformer": Family("head", _odd_children("features")),
    "efficientnet": Family("classifier", _inner_children("features")),
    "mobilenetv2": Family("classifier", _groups("features", starts=_strided)),
    "mobilenetv3": Family("classifier", _groups("features", starts=_strided)),
    "mnasnet": Family("classifier", _groups("layers", starts=_strided)),
    "googlenet": Family("fc", _prefix_groups("inception3", "inception4", "inception5")),
    "inception": Family("fc", _prefix_groups("Mixed_5", "Mixed_6", "Mixed_7")),
    "vision_transformer": Family("heads", _children("encoder.layers"), size_kwarg="image_size"),
    "maxvit": Family("classifier", _children("blocks"), size_kwarg="input_size"),
}


def family(arch: str) -> Family:
    if is_timm(arch):
        return Family(pretrained_cfg(arch)["classifier"])
    return FAMILIES.get(family_of(arch)) or Family(_guess_head(arch))


def _guess_head(arch: str) -> str:
    model = torchvision.models.get_model(arch)
    return next((n for n in ("fc", "classifier", "heads", "head") if hasattr(model, n)), "fc")


def fixed_input_size(arch: str) -> bool:
    """Whether ``arch`` is built for one input size (ViT, MaxViT): no progressive resizing."""
    if is_timm(arch):
        return timm_fixed_input_size(arch)
    return family(arch).size_kwarg is not None


#: family_of's name for every timm model.
TIMM_FAMILY = "timm"

_NO_BATCHNORM = ("alexnet", "squeezenet", "convnext", "swin_transformer", "vision_transformer")


def uses_batchnorm(arch: str) -> bool:
    """Whether ``arch`` has BatchNorm layers (architectures of families catdog does not know: assumed so)."""
    fam = family_of(arch)
    return not (fam in _NO_BATCHNORM or (fam == "vgg" and not arch.endswith("_bn")))


@dataclass(frozen=True)
class Stage:
    name: str
    params: tuple[str, ...]  # parameter names in the torchvision model
    joined: tuple[str, ...] = ()  # modules outside every stage that train with it (a stem, a final norm)


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _module_of(param: str, paths: list[str]) -> str:
    """The module of ``param`` at the depth of the stage ``paths`` (conv1 for ResNet's layer1, features.0 for
    ConvNeXt's features.1); the parameter itself when that module contains the stages (ViT's encoder.pos_embedding)."""
    parts = param.split(".")
    depth = len(paths[0].split("."))
    module = ".".join(parts[: min(depth, len(parts) - 1)]) if len(parts) > 1 else param
    return param if any(under(p, module) for p in paths) else module


def find_stages(model: nn.Module, head: str, spec: list[tuple[str, list[str]]]) -> list[Stage]:
    """Every backbone parameter of ``model`` in exactly one stage of ``spec`` ((name, module paths) in forward
    order); parameters outside all stages join the next stage, or the last one when none follows."""
    names = [n for n, _ in model.named_parameters() if not under(n, head)]
    spec = [(label, paths) for label, paths in spec if any(under(n, p) for n in names for p in paths)]
    if not spec:
        return [Stage("backbone", tuple(names))] if names else []
    params: list[list[str]] = [[] for _ in spec]
    joined: list[list[str]] = [[] for _ in spec]
    pending: list[str] = []
    for n in names:
        i = next((i for i, (_, paths) in enumerate(spec) if any(under(n, p) for p in paths)), None)
        if i is None:
            pending.append(n)
            continue
        params[i] += pending + [n]
        joined[i] += [_module_of(p, spec[i][1]) for p in pending]
        pending = []
    params[-1] += pending
    joined[-1] += [_module_of(p, spec[-1][1]) for p in pending]
    return [
        Stage(label, tuple(p), tuple(dict.fromkeys(j))) for (label, _), p, j in zip(spec, params, joined)
    ]  # fmt: skip


def stage_spec(model: nn.Module, fam: Family) -> list[tuple[str, list[str]]]:
    """The stage groups of ``model`` by its family's table (its top-level children where the family has none)."""
    return fam.stages(model) if fam.stages is not None else _top_level(model, fam.head)
