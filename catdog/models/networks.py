"""Any torchvision classification model with a new classification head (``small``: a two-layer MLP on pooled features,
or the family's own classifier with a new last layer), built at a given width and input size from pretrained weights,
a weights file or random initialization, and split into the stages that staged fine-tuning unfreezes from the end
(the stage tables: :mod:`catdog.models.stages`)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator

import torch
import torchvision
from torch import nn
from torch.nn.modules.utils import _pair

from catdog.errors import ConfigError
from catdog.models.stages import (
    FAMILIES,
    Family,
    Stage,
    family,
    family_of,
    find_stages,
    stage_spec,
    under,
)
from catdog.models.timm_source import create_timm, is_timm, timm_groups
from catdog.models.weights import default_weights, imagenet_state_dict, load_pretrained, load_weights_file

log = logging.getLogger(__name__)

#: ``small``: the family's classifier from its first linear layer on replaced by a two-layer MLP on globally pooled
#: features (the original Keras recipe's head); ``native``: the family's own classifier with a new last layer
#: (``vgg`` is its old name for VGG).
HEADS = ("small", "native", "vgg")


# ----- head --------------------------------------------------------------------------------------------------------
def _mlp(in_features: int, hidden: int, num_classes: int, dropout: float) -> list[nn.Module]:
    return [nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, num_classes)]


def replace_head(model: nn.Module, slot: str, num_classes: int, head: str, hidden: int, dropout: float) -> None:
    """Give ``model`` (its classifier at ``slot``, a dotted path for timm's ``head.fc``) a new ``num_classes``
    classifier, in place."""
    old = model.get_submodule(slot)
    layers = list(old.children()) if isinstance(old, nn.Sequential) else [old]
    outputs = [i for i, m in enumerate(layers) if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not outputs:
        raise ConfigError(f"cannot find the last layer of the classifier {slot!r} ({type(old).__name__})")
    if head == "small":
        first = next((i for i, m in enumerate(layers) if isinstance(m, nn.Linear)), None)
        if first is None:
            raise ConfigError(
                f"model.head=small needs a linear classifier, but this model's {slot!r} ends in a convolution; "
                "use model.head=native"
            )
        in_features = layers[first].in_features
        pool = getattr(model, "avgpool", None)
        if isinstance(pool, nn.AdaptiveAvgPool2d) and _pair(pool.output_size) != (1, 1):
            h, w = _pair(pool.output_size)  # VGG / AlexNet flatten a 7x7 / 6x6 map: pool it globally instead
            model.avgpool = nn.AdaptiveAvgPool2d(1)
            in_features //= h * w
        layers = layers[:first] + _mlp(in_features, hidden, num_classes, dropout)
    else:
        last = outputs[-1]
        for m in layers[:last]:
            if isinstance(m, nn.Dropout):
                m.p = dropout
        old_last = layers[last]
        if isinstance(old_last, nn.Linear):
            new = nn.Linear(old_last.in_features, num_classes)
        else:  # SqueezeNet's 1x1 conv classifier
            new = nn.Conv2d(old_last.in_channels, num_classes, kernel_size=1)
        # Nothing non-linear after the logits (SqueezeNet has a ReLU there); a dropout before them if there is none.
        tail = [m for m in layers[last + 1 :] if not isinstance(m, (nn.ReLU, nn.Tanh))]
        if not any(isinstance(m, nn.Dropout) for m in layers[:last]):
            new = nn.Sequential(nn.Dropout(dropout), new)
        layers = layers[:last] + [new] + tail
    parent, _, name = slot.rpartition(".")
    setattr(
        model.get_submodule(parent) if parent else model, name, nn.Sequential(*layers) if len(layers) > 1 else layers[0]
    )


# ----- the network -------------------------------------------------------------------------------------------------
class Classifier(nn.Module):
    """A torchvision classifier (``model``, its own forward) with a new head at ``model.<head_name>`` and its
    backbone split into ``stages`` (first to last)."""

    def __init__(self, model: nn.Module, arch: str, head_name: str, stages: list[Stage]):
        super().__init__()
        self.model = model
        self.arch = arch
        self.head_name = head_name
        self._stages = stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    @property
    def head(self) -> nn.Module:
        return self.model.get_submodule(self.head_name)

    def stages(self) -> list[Stage]:
        return list(self._stages)

    def head_named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return self.head.named_parameters(prefix=f"model.{self.head_name}")

    def backbone_named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.named_parameters() if not under(n, f"model.{self.head_name}"))

    def stage_parameters(self, last: int) -> list[nn.Parameter]:
        """Parameters of the last ``last`` stages (-1: every backbone parameter)."""
        chosen = self._stages if last == -1 else self._stages[len(self._stages) - last :] if last else []
        params = dict(self.model.named_parameters())
        return [params[n] for s in chosen for n in s.params]

    def describe(self) -> str:
        """The stage list, e.g. "resnet18: 4 stages (model.finetune.blocks=K trains the last K): 1 layer1 (+ conv1,
        bn1) 0.1 M | ... | head fc 1.0 K"."""
        params = dict(self.model.named_parameters())

        def size(names) -> str:
            return format_count(sum(params[n].numel() for n in names))

        parts = [
            f"{i} {s.name}" + (f" (+ {', '.join(s.joined)})" if s.joined else "") + f" {size(s.params)}"
            for i, s in enumerate(self._stages, 1)
        ]
        head = size(n for n in params if under(n, self.head_name))
        return (
            f"{self.arch}: {len(self._stages)} stages (model.finetune.blocks=K trains the last K): "
            + " | ".join(parts)
            + f" | head {self.head_name} {head}"
        )


def format_count(n: int) -> str:
    return f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n / 1e3:.1f} K" if n >= 1e3 else str(n)


def check_network_args(arch: str, head: str = "small", width: float = 1.0, weights=None, dropout: float = 0.5) -> None:
    """Validate the network settings (config keys ``model.*``) without building anything."""
    fam = family_of(arch)  # refuses an unknown architecture
    if head not in HEADS:
        raise ConfigError(f"model.head must be one of {list(HEADS)}, got {head!r}")
    if head == "vgg" and fam != "vgg":
        raise ConfigError(f"model.head=vgg is VGG's fc6/fc7 head; for model.arch={arch} use model.head=native")
    if head == "small" and fam == "squeezenet":
        raise ConfigError(f"model.head=small needs a linear classifier; {arch}'s is a conv: use model.head=native")
    if not isinstance(width, (int, float)) or not 0.0 < width <= 1.0:
        raise ConfigError(f"model.width must be in (0, 1], got {width!r}")
    if width != 1.0 and fam != "vgg":
        raise ConfigError(f"model.width narrows VGG networks only; model.arch={arch} needs model.width=1.0")
    if width != 1.0 and weights is not None:
        raise ConfigError(f"model.width={width} narrows the network, so it needs model.weights=null (got {weights!r})")
    if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ConfigError(f"model.dropout must be in [0, 1), got {dropout!r}")


_VGG_CFGS = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}


def _build_kwargs(arch: str, image_size: int, pretrained: bool) -> dict:
    """Keyword arguments torchvision's builder needs: a fixed input size, no auxiliary classifiers."""
    fam = family_of(arch)
    kwargs = {}
    size_kwarg = (FAMILIES.get(fam) or Family("fc")).size_kwarg
    if size_kwarg == "image_size":
        kwargs["image_size"] = int(image_size)
    elif size_kwarg == "input_size":
        kwargs["input_size"] = (int(image_size), int(image_size))
    if fam in ("googlenet", "inception"):
        kwargs.update(aux_logits=False, transform_input=pretrained, init_weights=not pretrained)
    return kwargs


def _torchvision_model(arch: str, image_size: int, width: float, pretrained: bool) -> nn.Module:
    if width != 1.0:  # a narrowed VGG (tests and CPU demos)
        from torchvision.models.vgg import VGG, make_layers
        from torchvision.models.vgg import cfgs as vgg_cfgs

        cfg = vgg_cfgs[_VGG_CFGS[arch.removesuffix("_bn")]]
        cfg = [v if v == "M" else max(1, int(round(v * width))) for v in cfg]
        net = VGG(make_layers(cfg, batch_norm=arch.endswith("_bn")), num_classes=1000, init_weights=True)
        net.classifier[0] = nn.Linear(cfg[-2] * 7 * 7, 4096)  # torchvision's assumes 512 channels
        return net
    try:
        return torchvision.models.get_model(arch, weights=None, **_build_kwargs(arch, image_size, pretrained))
    except (ValueError, AssertionError, RuntimeError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot build model.arch={arch} for data.image_size={image_size}: {detail}") from None


def _adapt_state(state: dict, model: nn.Module, arch: str, image_size: int) -> dict:
    """ViT weights for another input size: torchvision's interpolation of the position embedding."""
    key = "encoder.pos_embedding"
    if family_of(arch) == "vision_transformer" and key in state and state[key].shape != model.state_dict()[key].shape:
        from torchvision.models.vision_transformer import interpolate_embeddings

        log.info("interpolating %s's position embedding to %d px", arch, image_size)
        state = interpolate_embeddings(image_size, model.patch_size, state)
    return state


def build_network(
    arch: str = "vgg16_bn",
    num_classes: int = 2,
    weights: str | None = None,
    head: str = "small",
    head_hidden: int = 256,
    dropout: float = 0.5,
    width: float = 1.0,
    image_size: int = 224,
) -> Classifier:
    """Build torchvision's ``arch`` with a ``num_classes`` head (``head``: see :data:`HEADS`).

    ``weights``: ``"imagenet"`` (the architecture's default torchvision weights, downloaded and cached), a path to a
    local torchvision state dict, or ``None`` for random initialization. ``image_size`` matters only to fixed-size
    architectures (ViT, MaxViT). ``width`` < 1 narrows every conv layer of a VGG (random init only), for tests and
    CPU demos.
    """
    if num_classes < 2:
        raise ConfigError(f"the number of classes must be >= 2, got {num_classes}")
    if is_timm(arch):
        model = create_timm(arch, num_classes, weights, dropout, image_size)
        slot = family(arch).head
        if head == "small":
            replace_head(model, slot, num_classes, head, head_hidden, dropout)
        return Classifier(model, arch, slot, timm_stages(model, slot))
    fam = family(arch)
    model = _torchvision_model(arch, image_size, width, pretrained=weights is not None)
    if weights is not None:
        if weights == "imagenet":
            state, source = imagenet_state_dict(arch), f"torchvision's {arch} {default_weights(arch).name} weights"
        else:
            state, source = load_weights_file(weights), f"weights file {weights}"
        load_pretrained(model, _adapt_state(state, model, arch, image_size), arch, fam.head, source)
    replace_head(model, fam.head, num_classes, "native" if head == "vgg" else head, head_hidden, dropout)
    spec = stage_spec(model, fam)
    return Classifier(model, arch, fam.head, find_stages(model, fam.head, spec))


def timm_stages(model: nn.Module, head: str) -> list[Stage]:
    """timm's coarse parameter groups as stages: the stem joins the first stage, and what the classifier's group holds
    besides the classifier (ConvNeXt's ``head.norm``) the last one."""
    groups = timm_groups(model)
    tail: list[str] = []
    if groups and any(under(n, head) for n in groups[-1]):
        tail = [n for n in groups.pop() if not under(n, head)]
    groups = [g for g in ([n for n in g if not under(n, head)] for g in groups) if g]
    if len(groups) < 2:
        names = [n for g in groups for n in g] + tail
        return [Stage("backbone", tuple(names))] if names else []
    stem, *stages = groups
    out = []
    for i, names in enumerate(stages):
        extra = (stem if i == 0 else []) + (tail if i == len(stages) - 1 else [])
        joined = tuple(dict.fromkeys(p.rsplit(".", 1)[0] for p in extra))
        out.append(Stage(_common_prefix(names), tuple(extra + names), joined))
    return out


def _common_prefix(names: list[str]) -> str:
    """The module a group of parameters is: the longest dotted path shared by the parameters under the group's main
    top-level module (``stages.2`` for ``stages.2.blocks.0.conv.weight``...; ``blocks.11`` for a ViT's last group,
    which also holds the final ``norm``)."""
    top = Counter(n.split(".")[0] for n in names).most_common(1)[0][0]
    parts = [n.split(".")[:-1] for n in names if n.split(".")[0] == top]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common) or names[0].rsplit(".", 1)[0]


def stage_names(arch: str, image_size: int = 224) -> list[str]:
    """``arch``'s stages without building its weights (on the meta device where its builder allows)."""
    if is_timm(arch):
        try:
            with torch.device("meta"):
                model = create_timm(arch, 2, None, 0.0, image_size)
        except Exception:  # noqa: BLE001 - a model whose init computes on real tensors
            model = create_timm(arch, 2, None, 0.0, image_size)
        return [s.name for s in timm_stages(model, family(arch).head)]
    fam, kwargs = family(arch), _build_kwargs(arch, image_size, pretrained=False)
    try:
        with torch.device("meta"):
            model = torchvision.models.get_model(arch, weights=None, **kwargs)
    except Exception:  # noqa: BLE001 - builders that compute on tensors (RegNet) need real ones; bad sizes fail here
        model = _torchvision_model(arch, image_size, 1.0, pretrained=False)
    spec = stage_spec(model, fam)
    return [s.name for s in find_stages(model, fam.head, spec)]


def check_blocks(arch: str, blocks: int, image_size: int = 224) -> None:
    """``model.finetune.blocks`` no larger than ``arch``'s number of stages."""
    if blocks > 0:
        names = stage_names(arch, image_size)
        if blocks > len(names):
            raise ConfigError(
                f"model.finetune.blocks={blocks}, but {arch} has {len(names)} stages (-1 trains all): "
                + ", ".join(names)
            )


def check_input_size(net: Classifier, sizes: list[int]) -> None:
    """Run one image of each size through ``net`` (eval mode, no gradients): a size the architecture cannot take
    fails here with the config key, not in the first training step."""
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            for size in sorted(set(sizes)):
                try:
                    net(torch.zeros(1, 3, size, size))
                except (RuntimeError, ValueError, AssertionError) as exc:
                    raise ConfigError(
                        f"model.arch={net.arch} cannot take {size} px images (data.image_size / "
                        f"data.progressive.start_size): {str(exc).splitlines()[0]}"
                    ) from None
    finally:
        net.train(was_training)
