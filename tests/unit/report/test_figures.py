"""catdog/report/figures.py: the numbers behind each picture."""

import numpy as np
import pytest

from catdog.report import figures as fg


def test_ece_of_a_hand_computed_case():
    # confidences 0.92 (correct), 0.92 (wrong), 0.65 (correct), 0.75 (correct) in 10 bins: bin [0.9, 1.0) has conf
    # 0.92, acc 0.5; bin [0.6, 0.7): 0.65 / 1.0; bin [0.7, 0.8): 0.75 / 1.0.
    probs = np.array([[0.92, 0.08], [0.92, 0.08], [0.35, 0.65], [0.25, 0.75]])
    targets = [0, 1, 1, 1]
    data = fg.reliability_data(probs, targets, bins=10)
    expected = 2 / 4 * abs(0.5 - 0.92) + 1 / 4 * abs(1.0 - 0.65) + 1 / 4 * abs(1.0 - 0.75)
    assert data["ece"] == pytest.approx(expected)
    assert data["count"][9] == 2 and data["count"][6] == 1 and data["count"][7] == 1 and sum(data["count"]) == 4


def test_auc_of_a_hand_computed_case_with_ties():
    # positives 0.9, 0.5; negatives 0.5, 0.1: pairs (pos > neg) = 0.9>0.5, 0.9>0.1, 0.5>0.1 and one tie -> 3.5 / 4
    roc = fg.roc_data([0.9, 0.5, 0.5, 0.1], [True, True, False, False])
    assert roc["auc"] == pytest.approx(3.5 / 4)
    assert roc["fpr"][0] == 0 and roc["tpr"][-1] == 1 and roc["fpr"][-1] == 1
    assert fg.roc_data([0.2, 0.8], [False, True])["auc"] == 1.0
    assert fg.roc_data([0.2, 0.8], [True, True])["auc"] is None


def test_top_mistakes_are_the_most_confident_wrong_ones():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.45, 0.55], [0.05, 0.95]])
    assert fg.top_mistakes(probs, [0, 0, 0, 1], n=5) == [1, 2]


def test_temperature_scaling_of_probabilities():
    probs = np.array([[0.8, 0.2]])
    scaled = fg.scale_probs(probs, 2.0)
    logits = np.log(probs) / 2.0
    np.testing.assert_allclose(scaled, np.exp(logits) / np.exp(logits).sum(), rtol=1e-12)
    both = fg.scale_probs(np.vstack([probs, probs]), np.array([1.0, 2.0]))
    np.testing.assert_allclose(both, np.vstack([probs, scaled]), rtol=1e-12)
