import numpy as np
import pytest
import torch

from catdog.metrics import accuracy, log_loss
from catdog.submission import clip_probs, id_sort_key, submission_text
from catdog.tta import MAX_TTA, VIEWS, average_views, make_views


def test_views_are_batched_view_major_and_deterministic():
    x = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    v = make_views(x, 4)
    assert v.shape == (15, 3, 16, 16)
    torch.testing.assert_close(v[:3], x.float() / 255)
    torch.testing.assert_close(v[3:6], (x.float() / 255).flip(-1))  # view 1 = horizontal flip
    torch.testing.assert_close(make_views(x, 4), v)
    assert v.min() >= 0 and v.max() <= 1


def test_every_view_differs_from_the_plain_pass():
    x = torch.rand(1, 3, 24, 24)
    views = make_views(x, MAX_TTA).reshape(MAX_TTA + 1, 1, 3, 24, 24)
    for i, (name, _) in enumerate(VIEWS, start=1):
        assert not torch.allclose(views[i], views[0]), name


def test_average_views_is_per_image_mean():
    probs = torch.tensor([[0.2, 0.8], [0.6, 0.4], [0.4, 0.6], [1.0, 0.0]])  # 2 views x 2 images
    torch.testing.assert_close(average_views(probs, 2), torch.tensor([[0.3, 0.7], [0.8, 0.2]]))


def test_log_loss_matches_definition():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    y = torch.tensor([0, 1, 1])
    assert log_loss(probs, y) == pytest.approx(-(np.log(0.9) + np.log(0.8) + np.log(0.5)) / 3)
    assert accuracy(probs, y) == pytest.approx(2 / 3)  # the tie goes to class 0
    assert log_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([1])) == pytest.approx(-np.log(1e-15), rel=1e-6)


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
