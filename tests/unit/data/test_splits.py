"""catdog/data/splits.py: k-fold and stratified splits, duplicate groups."""

from collections import Counter

import pytest

from catdog.data.splits import content_groups, fold_indices, kfold_assignments, stratified_split
from catdog.errors import ConfigError
from tests.conftest import make_image

LABELS = [0] * 30 + [1] * 20


GROUPS = [f"g{i // 2}" if i < 10 else f"u{i}" for i in range(50)]  # the first ten images are five duplicate pairs


def test_kfold_disjoint_covering_stratified():
    folds = kfold_assignments(LABELS, 5, seed=1)
    assert sorted(set(folds)) == [0, 1, 2, 3, 4]
    for k in range(5):
        train, val = fold_indices(folds, k)
        assert not set(train) & set(val) and sorted(train + val) == list(range(50))
        assert Counter(LABELS[i] for i in val) == {0: 6, 1: 4}


def test_kfold_keeps_duplicates_together_and_is_deterministic():
    folds = kfold_assignments(LABELS, 3, seed=7, groups=GROUPS)
    for g in {g for g in GROUPS if g.startswith("g")}:
        assert len({folds[i] for i, x in enumerate(GROUPS) if x == g}) == 1
    assert folds == kfold_assignments(LABELS, 3, seed=7, groups=GROUPS)
    assert folds != kfold_assignments(LABELS, 3, seed=8, groups=GROUPS)


def test_kfold_does_not_depend_on_input_order():
    """Groups are ordered by content key, so listing files in another order gives each file the same fold."""
    folds = kfold_assignments(LABELS, 4, seed=3, groups=GROUPS)
    order = list(reversed(range(50)))
    shuffled = kfold_assignments([LABELS[i] for i in order], 4, seed=3, groups=[GROUPS[i] for i in order])
    assert [shuffled[order.index(i)] for i in range(50)] == folds


def test_stratified_split_fraction_and_groups():
    train, val = stratified_split(LABELS, 0.2, seed=0, groups=GROUPS)
    assert not set(train) & set(val) and len(train) + len(val) == 50
    assert abs(len(val) - 10) <= 1
    for g in {g for g in GROUPS if g.startswith("g")}:
        members = {i for i, x in enumerate(GROUPS) if x == g}
        assert members <= set(val) or members <= set(train)
    assert (train, val) == stratified_split(LABELS, 0.2, seed=0, groups=GROUPS)


@pytest.mark.parametrize("folds", [1, 0, 51])
def test_bad_fold_counts(folds):
    with pytest.raises(ConfigError, match="data.folds"):
        kfold_assignments(LABELS, folds, seed=0)


def test_content_groups_find_byte_identical_files(tmp_path):
    a = make_image(tmp_path / "cat.1.jpg", seed=1)
    b = tmp_path / "cat.2.jpg"
    b.write_bytes(a.read_bytes())
    c = make_image(tmp_path / "cat.3.jpg", seed=2)
    ga, gb, gc = content_groups([a, b, c])
    assert ga == gb != gc
