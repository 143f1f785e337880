"""label_issues.csv: the ranking by the probability of the own label, and confident learning's flag."""

from __future__ import annotations

import csv
import io

import numpy as np

from catdog.label_issues import HEADER, class_thresholds, label_issues_text, rank_label_issues


def test_rank_puts_the_least_likely_label_first_and_flags_confident_mistakes():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.55, 0.45], [0.05, 0.95], [0.8, 0.2]])
    targets = np.array([0, 1, 1, 0, 0])
    order, confident = rank_label_issues(probs, targets)
    assert order.tolist() == [3, 2, 1, 4, 0]  # ties (rows 1 and 4) in row order
    # class 0's threshold: mean P(cat) over the images labelled cat = (0.9 + 0.05 + 0.8) / 3
    assert class_thresholds(probs, targets)[0] == np.float64((0.9 + 0.05 + 0.8) / 3)
    # row 3 (labelled cat, P(dog) 0.95 >= dog's threshold 0.625) is a confident issue; row 2 (P(cat) 0.55) is not
    assert confident.tolist() == [False, False, False, True, False]


def test_label_issues_text_lists_every_row_ranked():
    rows = [["train/cat.1.jpg", "cat", "0"], ["train/dog.1.jpg", "dog", "1"], ["train/dog.2.jpg", "dog", "0"]]
    probs = np.array([[0.7, 0.3], [0.9, 0.1], [0.4, 0.6]])
    table = list(csv.reader(io.StringIO(label_issues_text(rows, probs, ["cat", "dog", "dog"], ["cat", "dog"]))))
    assert tuple(table[0]) == HEADER
    assert [r[1] for r in table[1:]] == ["train/dog.1.jpg", "train/dog.2.jpg", "train/cat.1.jpg"]
    first = dict(zip(HEADER, table[1]))
    assert first["rank"] == "1" and first["predicted"] == "cat" and float(first["p_label"]) == 0.1
    assert first["fold"] == "1" and float(first["p_predicted"]) == 0.9
