"""catdog/submission.py: id order, the submission text for two and more classes, probabilities written exactly,
clipping."""

import numpy as np
import pytest
import torch

from catdog.models.calibration import nll
from catdog.submission import clip_probs, id_sort_key, submission_text


def test_written_probabilities_read_back_exactly():
    p32 = torch.tensor([3e-7, 0.123456789, 1 - 3e-7, 1e-30, 0.5], dtype=torch.float32)
    probs = torch.stack([1 - p32, p32], 1).numpy().astype(np.float64)
    text = submission_text([str(i) for i in range(5)], probs, ["cat", "dog"])
    back = np.array([float(line.split(",")[1]) for line in text.splitlines()[1:]])
    assert (back.astype(np.float32) == p32.numpy()).all()
    # A confident mistake keeps its real log loss instead of being clamped to Kaggle's 1e-15.
    assert -np.log(back[0]) == pytest.approx(-np.log(3e-7), rel=1e-6)
    assert nll(torch.log(torch.tensor([[1 - 3e-7, 3e-7]], dtype=torch.float64)), torch.tensor([1])) < 16


def test_ids_sort_numerically_then_text():
    assert sorted(["10", "b", "2", "a", "1"], key=id_sort_key) == ["1", "2", "10", "a", "b"]


def test_submission_text_two_and_many_classes():
    probs = np.array([[0.25, 0.75], [0.5, 0.5]])
    assert submission_text(["10", "9"], probs, ["cat", "dog"]) == "id,label\n9,0.5\n10,0.75\n"
    text = submission_text(["x"], np.array([[0.2, 0.3, 0.5]]), ["a", "b", "c"])
    assert text.splitlines() == ["id,a,b,c", "x,0.2,0.3,0.5"]


def test_clip_keeps_rows_normalized():
    p = clip_probs(np.array([[1.0, 0.0], [0.3, 0.7]]), [0.01, 0.99])
    np.testing.assert_allclose(p, [[0.99, 0.01], [0.3, 0.7]])
    p3 = clip_probs(np.array([[1.0, 0.0, 0.0]]), [0.01, 0.99])
    np.testing.assert_allclose(p3.sum(axis=1), 1.0)
