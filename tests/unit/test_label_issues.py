"""label_issues.csv: the ranking by the probability of the own label, and confident learning's flag."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from catdog.label_issues import (
    HEADER,
    NO_CLASS,
    TOLERANCE,
    class_thresholds,
    confident_classes,
    label_issues_text,
    rank_label_issues,
)
from tests.conftest import needs_extra

#: Label 0's row counts as class 1, the one class over its threshold, though class 2 is the more probable.
LONE = (
    np.array(
        [[0.1, 0.42, 0.48], [0.9, 0.05, 0.05], [0.1, 0.4, 0.5], [0.1, 0.3, 0.6], [0.0, 0.0, 1.0], [0.1, 0.5, 0.4]]
    ),
    np.array([0, 0, 1, 1, 2, 2]),
)
#: Label 0's row reaches the thresholds of classes 0, 1 and 2; its most probable class, 3, does not reach its own.
SEVERAL = (
    np.array([[0.1, 0.3, 0.25, 0.35], [0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7], [0.1, 0.1, 0.1, 0.7]]),
    np.array([0, 1, 2, 3]),
)
#: Label 0's row, P = [0.5, 0.42, 0.08], thresholds [0.842, 0.4, 0.4]: class 1 alone reaches its threshold.
LABEL_ON_TOP = (
    np.array([[0.5, 0.42, 0.08], [0.95, 0.03, 0.02], [0.95, 0.03, 0.02], [0.968, 0.02, 0.012], [0.3, 0.4, 0.3],
              [0.3, 0.3, 0.4]]),
    np.array([0, 0, 0, 0, 1, 2]),
)  # fmt: skip
#: Class 1's threshold is 0.6 (its one image); label 0's row has P(1) = 0.6 - TOLERANCE / 2.
NEAR_THRESHOLD = (np.array([[0.4 + TOLERANCE / 2, 0.6 - TOLERANCE / 2], [0.9, 0.1], [0.4, 0.6]]), np.array([0, 0, 1]))
#: Label 0's row: P(0) = 0.5 - TOLERANCE / 4 under P(1) = 0.5 + TOLERANCE / 4, over class 1's threshold 0.4.
NEAR_TOP = (np.array([[0.5 - TOLERANCE / 4, 0.5 + TOLERANCE / 4], [0.9, 0.1], [0.6, 0.4]]), np.array([0, 0, 1]))
#: No image is labelled 2; label 0's row puts all its probability on class 2.
MISSING = (np.array([[0.0, 0.0, 1.0], [0.8, 0.2, 0.0], [0.3, 0.7, 0.0]]), np.array([0, 0, 1]))


def test_rank_puts_the_least_likely_label_first_and_flags_confident_mistakes():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.55, 0.45], [0.05, 0.95], [0.8, 0.2]])
    targets = np.array([0, 1, 1, 0, 0])
    order, confident = rank_label_issues(probs, targets)
    assert order.tolist() == [3, 2, 1, 4, 0]  # ties (rows 1 and 4) in row order
    # class 0's threshold: mean P(cat) over the images labelled cat = (0.9 + 0.05 + 0.8) / 3
    assert class_thresholds(probs, targets)[0] == np.float64((0.9 + 0.05 + 0.8) / 3)
    # row 3 (labelled cat, P(dog) 0.95 >= dog's threshold 0.625) is a confident issue; row 2 (P(cat) 0.55) is not
    assert confident.tolist() == [False, False, False, True, False]


def test_a_lone_class_over_its_threshold_is_the_confident_class_even_below_the_most_probable():
    probs, targets = LONE
    thresholds = class_thresholds(probs, targets)
    np.testing.assert_allclose(thresholds, [(0.1 + 0.9) / 2, (0.4 + 0.3) / 2, (1.0 + 0.4) / 2], rtol=1e-15)
    # row 0: only P(1) = 0.42 reaches its threshold 0.35 (P(2) = 0.48 < 0.7), so it counts as class 1, not its label
    assert confident_classes(probs, thresholds).tolist() == [1, 0, 1, NO_CLASS, 2, 1]
    assert rank_label_issues(probs, targets)[1].tolist() == [True, False, False, False, False, True]


def test_several_classes_over_their_thresholds_count_as_the_most_probable_class_of_the_row():
    probs, targets = SEVERAL
    thresholds = class_thresholds(probs, targets)  # [0.1, 0.1, 0.1, 0.7]: a mean over one image each
    # cleanlab takes the row's argmax (class 3, 0.35 < 0.7), not the argmax among the classes over their threshold
    assert confident_classes(probs, thresholds)[0] == 3
    assert rank_label_issues(probs, targets)[1].tolist() == [True, True, True, False]


def test_no_flag_where_the_label_is_the_most_probable_class():
    # the confident joint counts the row off its diagonal, but cleanlab drops issues whose label the model predicts
    probs, targets = LABEL_ON_TOP
    thresholds = class_thresholds(probs, targets)
    np.testing.assert_allclose(thresholds, [0.842, 0.4, 0.4], rtol=1e-15)
    assert confident_classes(probs, thresholds)[0] == 1
    assert not rank_label_issues(probs, targets)[1].any()


def test_probabilities_compare_within_cleanlabs_tolerance():
    probs, targets = NEAR_THRESHOLD
    assert class_thresholds(probs, targets)[1] == 0.6
    assert rank_label_issues(probs, targets)[1].tolist() == [True, False, False]
    # a label less than TOLERANCE under the most probable class counts as predicted: no issue, whatever the threshold
    probs, targets = NEAR_TOP
    assert confident_classes(probs, class_thresholds(probs, targets))[0] == 1
    assert not rank_label_issues(probs, targets)[1].any()


def test_a_class_without_images_counts_no_image():
    probs, targets = MISSING
    assert class_thresholds(probs, targets)[2] == np.inf
    assert confident_classes(probs, class_thresholds(probs, targets))[0] == NO_CLASS
    assert not rank_label_issues(probs, targets)[1].any()


def _noisy(k: int, seed: int, n: int = 300, missing: bool = False):
    """Out-of-fold-like probabilities and labels: each label drawn from its row's probabilities, a quarter redrawn
    at random; with ``missing``, no image is labelled with the last class."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(k, 0.6), size=n)
    targets = np.array([rng.choice(k, p=p) for p in probs])
    noisy = rng.random(n) < 0.25
    targets[noisy] = rng.integers(0, k, noisy.sum())
    if missing:
        targets[targets == k - 1] = 0
    return probs, targets


@needs_extra("cleanlab", "cleanlab")
@pytest.mark.parametrize("k, missing", [(2, False), (5, False), (5, True)])
@pytest.mark.parametrize("seed", range(4))
def test_confident_flags_match_cleanlabs_confident_learning_filter(k, missing, seed):
    from cleanlab.filter import find_label_issues

    probs, targets = _noisy(k, seed, missing=missing)
    expected = find_label_issues(targets, probs, filter_by="confident_learning")
    order, confident = rank_label_issues(probs, targets)
    assert confident.tolist() == expected.tolist()
    assert 0 < confident.sum() < len(targets)
    np.testing.assert_array_equal(order, np.argsort(probs[np.arange(len(targets)), targets], kind="stable"))


@needs_extra("cleanlab", "cleanlab")
@pytest.mark.parametrize(
    "case", [LONE, SEVERAL, LABEL_ON_TOP, NEAR_THRESHOLD, NEAR_TOP, MISSING],
    ids=["lone", "several", "label_on_top", "near_threshold", "near_top", "missing"],
)  # fmt: skip
def test_the_hand_made_cases_match_cleanlab(case):
    from cleanlab.filter import find_label_issues

    probs, targets = case
    expected = find_label_issues(targets, probs, filter_by="confident_learning")
    assert rank_label_issues(probs, targets)[1].tolist() == expected.tolist()


def test_the_random_inputs_hold_rows_whose_confident_class_is_not_the_most_probable():
    # what the comparison with cleanlab needs to tell a lone class over its threshold from the argmax
    found = 0
    for seed in range(4):
        probs, targets = _noisy(5, seed)
        guess = confident_classes(probs, class_thresholds(probs, targets))
        found += int(((guess != NO_CLASS) & (guess != probs.argmax(axis=1)) & (guess != targets)).sum())
    assert found > 0


def test_label_issues_text_lists_every_row_ranked():
    rows = [["train/cat.1.jpg", "cat", "0"], ["train/dog.1.jpg", "dog", "1"], ["train/dog.2.jpg", "dog", "0"]]
    probs = np.array([[0.7, 0.3], [0.9, 0.1], [0.4, 0.6]])
    table = list(csv.reader(io.StringIO(label_issues_text(rows, probs, ["cat", "dog", "dog"], ["cat", "dog"]))))
    assert tuple(table[0]) == HEADER
    assert [r[1] for r in table[1:]] == ["train/dog.1.jpg", "train/dog.2.jpg", "train/cat.1.jpg"]
    first = dict(zip(HEADER, table[1]))
    assert first["rank"] == "1" and first["predicted"] == "cat" and float(first["p_label"]) == 0.1
    assert first["fold"] == "1" and float(first["p_predicted"]) == 0.9


def test_label_issues_text_names_the_most_probable_class_as_predicted():
    # LONE's row 0 (label a) is flagged as class b, the one class over its threshold; the model predicts c
    probs, targets = LONE
    labels = [["a", "b", "c"][t] for t in targets]
    rows = [[f"train/{i}.jpg", labels[i], str(i % 2)] for i in range(len(labels))]
    table = list(csv.DictReader(io.StringIO(label_issues_text(rows, probs, labels, ["a", "b", "c"]))))
    first = next(r for r in table if r["path"] == "train/0.jpg")
    assert (first["predicted"], float(first["p_predicted"]), first["confident"]) == ("c", 0.48, "1")
