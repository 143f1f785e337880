"""Checks on the real Kaggle Dogs vs. Cats images in ../shared/data/dogs-vs-cats (skipped when it is absent)."""

from collections import Counter

import pytest

from catdog.data.images import find_bad_images
from catdog.data.layouts import detect_layout, find_unlabelled, image_ids
from catdog.data.splits import content_groups, kfold_assignments
from tests.conftest import SHARED_DATA

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(
        not (SHARED_DATA / "train").is_dir(),
        reason=f"{SHARED_DATA} is not present (set CATDOG_SHARED_DATA=PATH to the Kaggle images)",
    ),
]


@pytest.fixture(scope="module")
def layout():
    return detect_layout(SHARED_DATA)


def test_kaggle_flat_layout_is_detected(layout):
    assert layout.layout == "flat" and layout.train.classes == ["cat", "dog"]
    assert len(layout.train) == 20_000
    assert layout.train.labels.count(0) == layout.train.labels.count(1) == 10_000


def test_kaggle_test_folder_ids_are_numeric():
    ids = image_ids(find_unlabelled(SHARED_DATA / "test"))
    assert len(ids) == 2_000 and all(i.isdigit() for i in ids)


def test_a_sample_of_real_images_decodes(layout):
    assert find_bad_images(layout.train.paths[::100]) == []


def test_real_duplicates_share_a_fold(layout):
    """Kaggle's train set holds byte-identical copies; k-fold must never split them."""
    groups = content_groups(layout.train.paths)
    folds = kfold_assignments(layout.train.labels, 5, seed=0, groups=groups)
    by_group: dict[str, set[int]] = {}
    for g, f in zip(groups, folds):
        by_group.setdefault(g, set()).add(f)
    duplicated = [g for g, n in Counter(groups).items() if n > 1]
    assert duplicated, "expected some exact duplicates in Kaggle's train set"
    assert all(len(by_group[g]) == 1 for g in duplicated)
