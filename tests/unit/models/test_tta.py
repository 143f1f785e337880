"""catdog/models/tta.py: test-time augmentation views and their average."""

import torch
import torch.nn.functional as F

from catdog.data.transforms import centre_offset
from catdog.models.tta import MAX_TTA, VIEW_NAMES, average_views, make_views


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


def test_average_views_is_per_image_mean():
    probs = torch.tensor([[0.2, 0.8], [0.6, 0.4], [0.4, 0.6], [1.0, 0.0]])  # 2 views x 2 images
    torch.testing.assert_close(average_views(probs, 2), torch.tensor([[0.3, 0.7], [0.8, 0.2]]))
