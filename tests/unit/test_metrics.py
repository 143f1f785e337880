"""catdog/metrics.py: log loss and accuracy."""

import numpy as np
import pytest
import torch

from catdog.metrics import accuracy, log_loss


def test_log_loss_matches_definition():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    y = torch.tensor([0, 1, 1])
    assert log_loss(probs, y) == pytest.approx(-(np.log(0.9) + np.log(0.8) + np.log(0.5)) / 3)
    assert accuracy(probs, y) == pytest.approx(2 / 3)  # the tie goes to class 0
    assert log_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([1])) == pytest.approx(-np.log(1e-15), rel=1e-6)
