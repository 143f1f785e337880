"""catdog/data/transforms.py: uint8 preprocessing, MixUp / CutMix, automatic augmentation, progressive sizes, the TTA
square."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import v2

from catdog.data.images import load_image
from catdog.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ProgressiveTransform,
    TTASquare,
    build_mixer,
    centre_offset,
    eval_transform,
    normalize,
    progressive_size,
    train_transform,
)
from tests.conftest import make_image
from tests.unit.models.test_module import _stats


def test_uint8_preprocessing_matches_the_float_pipeline(tmp_path):
    """Resize + centre crop to uint8, normalized on the device == torchvision's float ToTensor + Normalize path."""
    path = make_image(tmp_path / "a.png", size=(150, 110), seed=3)
    fast = normalize(eval_transform(64)(load_image(path)).unsqueeze(0), *_stats())
    plain = T.Compose([T.Resize(73), T.CenterCrop(64), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(
        Image.open(path).convert("RGB")
    )
    # The only difference is rounding to uint8 before normalizing: half a grey level / std.
    torch.testing.assert_close(fast[0], plain, atol=0.5 / 255 / min(IMAGENET_STD) + 1e-4, rtol=0)


def test_cutmix_pastes_a_box_and_targets_are_soft():
    mixer = build_mixer({"cutmix_alpha": 1.0}, 2)
    torch.manual_seed(3)
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor([0, 1, 1, 0])
    mixed, target = mixer(x, y)
    assert target.shape == (4, 2) and torch.allclose(target.sum(1), torch.ones(4))
    from_self = (mixed == x).all(1)
    from_other = (mixed == x.roll(1, 0)).all(1)
    assert (from_self | from_other).all() and from_other.any() and from_self.any()
    assert build_mixer({"mixup_alpha": 0.0, "cutmix_alpha": 0.0}, 2) is None
    assert build_mixer({"mixup_alpha": 1.0, "prob": 0.0}, 2) is None


def _image(seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))


@pytest.mark.parametrize(("auto", "op"), [("trivial", v2.TrivialAugmentWide), ("randaugment", v2.RandAugment)])
def test_auto_augment_changes_the_images(auto, op):
    plain, policy = train_transform(32), train_transform(32, auto=auto)
    assert any(isinstance(t, op) for t in policy.transforms)
    differs = 0
    for seed in range(8):
        torch.manual_seed(seed)
        a = plain(_image(seed))
        torch.manual_seed(seed)
        b = policy(_image(seed))
        differs += not torch.equal(a, b)
    assert differs >= 4


def test_progressive_sizes():
    prog = {"start_size": 64, "epochs": 4, "multiple": 16}
    assert [progressive_size(e, 128, prog) for e in range(6)] == [64, 80, 96, 112, 128, 128]
    assert progressive_size(0, 128, None) == 128
    t = ProgressiveTransform(128, prog)
    assert t.for_epoch(0)(_image()).shape[-1] == 64 and t.for_epoch(9)(_image()).shape[-1] == 128


@pytest.mark.parametrize("size", [(90, 73), (73, 120), (73, 73), (74, 101)])
def test_tta_square_centre_is_the_plain_centre_crop(size):
    """The square TTA reads holds, at its centre, exactly the pixels of the plain prediction's centre crop."""
    h, w = size
    img = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
    square = TTASquare(73, 64)(img)
    assert square.shape == (3, 73, 73)
    inner = centre_offset(73, 64)
    torch.testing.assert_close(square[:, inner : inner + 64, inner : inner + 64], v2.CenterCrop(64)(img))
