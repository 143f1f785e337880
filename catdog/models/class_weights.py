"""``model.class_weights``: per-class weights of the training loss, for classes far from balanced.

``null``: none (every image counts the same). ``auto``: the inverse frequency of each class in the training split,
``N / (K * n_c)`` (sklearn's "balanced": 1 for every class of a balanced set). A list: one positive weight per class,
in the sorted order of the classes. Validation metrics are never weighted.

The weighted loss (:func:`weighted_cross_entropy`) means the same for every kind of target: each image counts with
the weight of its target, ``sum_c w_c t_c`` (its class's weight for a hard label, the mixed weight for a MixUp /
CutMix or soft pseudo-label target), and the batch's loss is the weighted mean over its images. Label smoothing
spreads the target, not the image's weight. For hard labels that is ``F.cross_entropy(weight=)``; for probability
targets PyTorch divides by the batch size instead, so the same batch scored ~1.7x higher one-hot than as class
indices on a 9:1 set.

``data.sampler=balanced`` already draws every class alike: weighting the loss by the inverse class frequency on top of
it corrects the imbalance twice (81:1 in favour of the minority on a 9:1 set), so ``auto`` is refused with it
(:func:`check_class_weights`); explicit weights with the balanced sampler are taken as given.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from catdog.errors import ConfigError, DatasetError


def check_class_weights(value, sampler: str | None = None) -> None:
    """Before any data is read: null, ``auto`` or a list of positive numbers (its length is checked against the
    classes once they are known); ``auto`` not with ``data.sampler=balanced``."""
    if value == "auto" and sampler == "balanced":
        raise ConfigError(
            "model.class_weights=auto with data.sampler=balanced corrects the class imbalance twice (the sampler "
            "already draws every class alike): use one of them, or give model.class_weights as a list"
        )
    if value is None or value == "auto":
        return
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        return
    raise ConfigError(
        f"model.class_weights must be null, auto or a list of positive numbers (one per class), got {value!r}"
    )


def resolve_class_weights(value, labels: Sequence[int] | None, classes: Sequence[str]) -> list[float] | None:
    """The weights ``value`` stands for, given the training labels (needed for ``auto``)."""
    if value is None:
        return None
    if value == "auto":
        if labels is None:
            raise ConfigError("model.class_weights=auto needs the training labels")
        counts = [list(labels).count(i) for i in range(len(classes))]
        empty = [c for c, n in zip(classes, counts) if n == 0]
        if empty:
            raise DatasetError(f"model.class_weights=auto: no training image of class(es) {empty}")
        total = sum(counts)
        return [total / (len(classes) * n) for n in counts]
    weights = [float(v) for v in value]
    if len(weights) != len(classes):
        raise ConfigError(
            f"model.class_weights has {len(weights)} weight(s), but the data has {len(classes)} classes "
            f"{list(classes)} (one weight per class, in this order)"
        )
    return weights


def weighted_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Cross-entropy of ``logits`` (B, K) against class indices (B,) or class probabilities (B, K), every image
    weighted by its target's class weight ``sum_c w_c t_c`` and the batch normalized by the sum of those weights,
    whatever the kind of target (see the module's docstring). Without ``weight`` it is ``F.cross_entropy``."""
    if weight is None or target.ndim == 1:
        return F.cross_entropy(logits, target, weight=weight, label_smoothing=label_smoothing)
    k = logits.shape[1]
    spread = target * (1.0 - label_smoothing) + label_smoothing / k if label_smoothing else target
    weight = weight.to(logits.dtype)
    per_image = -(F.log_softmax(logits, dim=1) * spread * weight).sum(dim=1)
    return per_image.sum() / (target @ weight).sum()
