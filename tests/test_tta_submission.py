import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from catdog.data.transforms import TTASquare, centre_offset
from catdog.metrics import accuracy, log_loss
from catdog.models.tta import MAX_TTA, VIEW_NAMES, average_views, make_views
from catdog.submission import clip_probs, id_sort_key, submission_text


def test_views_are_batched_view_major_and_deterministic():
    x = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    v = make_views(x, 4)
    assert v.shape == (15, 3, 16, 16)
    torch.testing.assert_close(v[:3], x.float() / 255)
    torch.testing.assert_close(v[3:6], (x.float() / 255).flip(-1))  # view 1 = horizontal flip
    torch.testing.assert_close(make_views(x, 4), v)
    assert v.min() >= 0 and v.max() <= 1


def test_every_view_differs_from_the_plain_pass():
    for side in (24, 28):  # without and with a margin around the 24 px centre crop
        x = torch.rand(1, 3, side, side)
        views = make_views(x, MAX_TTA, 24).reshape(MAX_TTA + 1, 1, 3, 24, 24)
        for i, name in enumerate(VIEW_NAMES, start=1):
            assert not torch.allclose(views[i], views[0]), (side, name)


def test_views_come_from_the_resized_image_unscaled():
    """Corner views are crops of the resize-size square, as torchvision's FiveCrop takes them; the plain view is
    exactly the centre crop the model sees without TTA; nothing is upsampled."""
    x = torch.rand(2, 3, 73, 73)
    views = make_views(x, MAX_TTA, 64).reshape(MAX_TTA + 1, 2, 3, 64, 64)
    names = ("plain", *VIEW_NAMES)
    view = dict(zip(names, views))
    top = centre_offset(73, 64)
    torch.testing.assert_close(view["plain"], x[..., top : top + 64, top : top + 64])
    torch.testing.assert_close(make_views(x, 0, 64), x[..., top : top + 64, top : top + 64])
    torch.testing.assert_close(view["top_left"], x[..., :64, :64])
    torch.testing.assert_close(view["bottom_right"], x[..., 9:, 9:])
    torch.testing.assert_close(view["top_right_hflip"], x[..., :64, 9:].flip(-1))
    torch.testing.assert_close(view["centre"], F.interpolate(x, size=(64, 64), mode="bilinear", antialias=True))


@pytest.mark.parametrize("size", [(90, 73), (73, 120), (73, 73), (74, 101)])
def test_tta_square_centre_is_the_plain_centre_crop(size):
    """The square TTA reads holds, at its centre, exactly the pixels of the plain prediction's centre crop."""
    h, w = size
    img = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
    square = TTASquare(73, 64)(img)
    assert square.shape == (3, 73, 73)
    inner = centre_offset(73, 64)
    torch.testing.assert_close(square[:, inner : inner + 64, inner : inner + 64], v2.CenterCrop(64)(img))


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
