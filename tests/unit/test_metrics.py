"""catdog/metrics.py: log loss, accuracy and the per-class report."""

import numpy as np
import pytest
import torch

from catdog.metrics import accuracy, class_report, confusion_counts, log_loss


def test_log_loss_matches_definition():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    y = torch.tensor([0, 1, 1])
    assert log_loss(probs, y) == pytest.approx(-(np.log(0.9) + np.log(0.8) + np.log(0.5)) / 3)
    assert accuracy(probs, y) == pytest.approx(2 / 3)  # the tie goes to class 0
    assert log_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([1])) == pytest.approx(-np.log(1e-15), rel=1e-6)


def test_confusion_counts():
    counts = confusion_counts([0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 0, 2], 3)
    assert counts.tolist() == [[1, 1, 0], [1, 2, 0], [0, 0, 1]]


def test_class_report_counts_precision_recall_f1_and_the_confusion():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7], [0.6, 0.4]])
    report = class_report(probs, [0, 0, 0, 1, 1], ["cat", "dog"])
    assert report["confusion"] == [[2, 1], [1, 1]]
    cat, dog = report["per_class"]["cat"], report["per_class"]["dog"]
    assert (cat["precision"], cat["recall"], cat["support"]) == (2 / 3, 2 / 3, 3)
    assert (dog["precision"], dog["recall"], dog["f1"]) == (0.5, 0.5, 0.5)
    assert report["balanced_acc"] == pytest.approx((2 / 3 + 0.5) / 2)
