"""Seeded, stratified splits that keep duplicate images together (pure functions over labels and group keys)."""

from __future__ import annotations

import hashlib
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from catdog.errors import ConfigError


def file_digest(path: str | os.PathLike) -> str:
    """SHA-1 of a file's bytes: images with the same digest are the same picture."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_groups(paths: Sequence[str | os.PathLike], workers: int = 4) -> list[str]:
    """Group key of each path (its content digest; a file that cannot be read is its own group)."""

    def key(p):
        try:
            return file_digest(p)
        except OSError:
            return f"unreadable:{os.path.basename(p)}"

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(key, paths))


def _grouped_by_class(labels: Sequence[int], groups: Sequence[str] | None, seed: int) -> dict[int, list[list[int]]]:
    """For each class, its groups of item indices in a seeded random order that does not depend on input order."""
    if groups is None:
        groups = [str(i) for i in range(len(labels))]
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    by_class: dict[int, list[tuple[str, list[int]]]] = defaultdict(list)
    for g, idx in members.items():
        majority = Counter(labels[i] for i in idx).most_common(1)[0][0]
        by_class[majority].append((g, idx))
    rng = np.random.default_rng(seed)
    ordered = {}
    for c in sorted(by_class):
        items = sorted(by_class[c], key=lambda t: t[0])
        perm = rng.permutation(len(items))
        ordered[c] = [items[j][1] for j in perm]
    return ordered


def stratified_split(
    labels: Sequence[int], val_fraction: float, seed: int, groups: Sequence[str] | None = None
) -> tuple[list[int], list[int]]:
    """Split indices into (train, val) with about ``val_fraction`` of each class in val; groups never straddle."""
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    train, val = [], []
    for _, class_groups in _grouped_by_class(labels, groups, seed).items():
        n = sum(len(g) for g in class_groups)
        target = max(1, round(val_fraction * n)) if n > 1 else 0
        taken = 0
        for g in class_groups:
            if taken < target:
                val += g
                taken += len(g)
            else:
                train += g
    if not train or not val:
        raise ConfigError(
            f"data.val_fraction={val_fraction} leaves an empty {'train' if not train else 'validation'} split "
            f"of {len(labels)} images"
        )
    return sorted(train), sorted(val)


def kfold_assignments(labels: Sequence[int], folds: int, seed: int, groups: Sequence[str] | None = None) -> list[int]:
    """Fold number (0..folds-1) of each item: stratified by class, groups kept whole, balanced greedily."""
    if folds < 2:
        raise ConfigError(f"data.folds must be >= 2 for k-fold, got {folds}")
    if folds > len(labels):
        raise ConfigError(f"data.folds={folds} is more than the {len(labels)} labelled images")
    assignment = [-1] * len(labels)
    fold_sizes = np.zeros(folds, dtype=np.int64)
    for _, class_groups in _grouped_by_class(labels, groups, seed).items():
        class_sizes = np.zeros(folds, dtype=np.int64)
        # Largest groups first so they are spread before single images fill the gaps.
        for g in sorted(class_groups, key=len, reverse=True):
            fold = int(np.lexsort((fold_sizes, class_sizes))[0])
            for i in g:
                assignment[i] = fold
            class_sizes[fold] += len(g)
            fold_sizes[fold] += len(g)
    return assignment


def fold_indices(assignment: Sequence[int], fold: int) -> tuple[list[int], list[int]]:
    """(train, val) indices for ``fold`` given :func:`kfold_assignments`."""
    val = [i for i, f in enumerate(assignment) if f == fold]
    train = [i for i, f in enumerate(assignment) if f != fold]
    return train, val
