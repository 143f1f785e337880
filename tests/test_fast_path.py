"""The fast path (uint8 loading, normalization on the device, channels_last, batched TTA) computes what the plain
path computes."""

import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from catdog.data.images import load_image
from catdog.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, normalize
from catdog.models.module import ClassifierModule
from catdog.models.networks import build_network
from catdog.models.tta import make_views
from tests.conftest import make_image


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = ClassifierModule(["cat", "dog"], arch="vgg16_bn", width=0.0625, head_hidden=16, channels_last=True)
    return m.eval()


def test_uint8_preprocessing_matches_the_float_pipeline(tmp_path):
    """Resize + centre crop to uint8, normalized on the device == torchvision's float ToTensor + Normalize path."""
    path = make_image(tmp_path / "a.png", size=(150, 110), seed=3)
    fast = normalize(eval_transform(64)(load_image(path)).unsqueeze(0), *_stats())
    plain = T.Compose([T.Resize(73), T.CenterCrop(64), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(
        Image.open(path).convert("RGB")
    )
    # The only difference is rounding to uint8 before normalizing: half a grey level / std.
    torch.testing.assert_close(fast[0], plain, atol=0.5 / 255 / min(IMAGENET_STD) + 1e-4, rtol=0)


def _stats():
    return torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def test_channels_last_matches_nchw(model):
    torch.manual_seed(1)
    x = torch.randint(0, 256, (4, 3, 48, 48), dtype=torch.uint8)
    plain = build_network("vgg16_bn", 2, width=0.0625, head_hidden=16)
    plain.load_state_dict(model.net.state_dict())
    plain.eval()
    with torch.no_grad():
        expected = plain(normalize(x, *_stats()))  # NCHW, float input
        got = model(x)  # uint8 in, normalized on the device, channels_last
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_batched_tta_equals_one_view_at_a_time(model):
    torch.manual_seed(2)
    size = model.hparams.image_size
    x = torch.randint(0, 256, (3, 3, size + 6, size + 6), dtype=torch.uint8)  # the square TTA reads, with a margin
    with torch.no_grad():
        batched = model.predict_proba(x, tta=5)
        views = make_views(x, 5, size).reshape(6, 3, 3, size, size)
        looped = torch.stack([torch.softmax(model(v), dim=1) for v in views]).mean(0)
    torch.testing.assert_close(batched, looped, atol=1e-5, rtol=1e-5)
    assert torch.allclose(batched.sum(1), torch.ones(3))


def test_bf16_autocast_close_to_fp32_on_cpu(model):
    x = torch.randint(0, 256, (4, 3, 48, 48), dtype=torch.uint8)
    with torch.no_grad():
        fp32 = model.predict_proba(x)
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                bf16 = model.predict_proba(x)
        except RuntimeError as exc:  # pragma: no cover - CPUs without bf16 kernels
            pytest.skip(f"no bf16 autocast on this CPU: {exc}")
    torch.testing.assert_close(bf16.float(), fp32, atol=3e-2, rtol=0)
