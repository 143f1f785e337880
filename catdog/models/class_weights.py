"""``model.class_weights``: per-class weights of the training loss, for classes far from balanced.

``null``: none (every image counts the same). ``auto``: the inverse frequency of each class in the training split,
``N / (K * n_c)`` (sklearn's "balanced": 1 for every class of a balanced set). A list: one positive weight per class,
in the sorted order of the classes. Validation metrics are never weighted.
"""

from __future__ import annotations

from collections.abc import Sequence

from catdog.errors import ConfigError, DatasetError


def check_class_weights(value) -> None:
    """Before any data is read: null, ``auto`` or a list of positive numbers (its length is checked against the
    classes once they are known)."""
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
