"""The fast path (uint8 loading, normalization on the device, channels_last, batched TTA) computes what the plain
path computes."""

import json

import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from catdog.checkpoints import read_checkpoint
from catdog.data.images import load_image
from catdog.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, normalize
from catdog.errors import ConfigError
from catdog.models.module import ClassifierModule, NonFiniteLossError
from catdog.models.networks import build_network
from catdog.models.optim import check_optimizer, fused_on_cuda
from catdog.models.tta import make_views
from catdog.training import train
from tests.conftest import make_flat, make_image, tiny_train_cfg


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


# ----- the compiled, sync-free training step ----------------------------------------------------------------------
def test_fused_optimizer_only_on_cuda_and_only_when_not_configured():
    sgd = check_optimizer({"_target_": "torch.optim.SGD", "lr": 0.1})
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert fused_on_cuda(sgd, cuda) == {"fused": True}
    assert fused_on_cuda(sgd, cpu) == {}
    assert fused_on_cuda(check_optimizer({"_target_": "torch.optim.SGD", "lr": 0.1, "foreach": False}), cuda) == {}
    assert fused_on_cuda(check_optimizer({"_target_": "torch.optim.AdamW", "lr": 0.1}), cuda) == {"fused": True}


def test_model_compile_compiles_the_network_once_and_checkpoints_stay_plain(tmp_path, monkeypatch):
    calls = []

    def fake_compile(net, **kwargs):
        calls.append(kwargs)
        return net  # eager: what matters here is what catdog asks torch.compile for

    monkeypatch.setattr(torch, "compile", fake_compile)
    data = make_flat(tmp_path / "data", per_class=6, test=0)
    cfg = tiny_train_cfg(
        data, tmp_path / "run", "model.compile=true", "trainer.max_epochs=2",
        "data.progressive={start_size: 32, epochs: 2, multiple: 8}", "data.image_size=48",
    )  # fmt: skip
    train(cfg)
    assert calls == [{"dynamic": False}]
    limit = getattr(torch._dynamo.config, "recompile_limit", None) or torch._dynamo.config.cache_size_limit
    assert limit >= 2 * 2 * 3  # sizes 32, 40 and 48 (+1 spare), train and eval mode, a last partial batch
    ckpt = read_checkpoint(tmp_path / "run" / "checkpoints" / "best.ckpt")
    assert not any("_orig_mod" in k or "_compiled" in k for k in ckpt["state_dict"])
    assert ckpt["hyper_parameters"]["compile"] is False  # prediction loads it uncompiled


def test_model_compile_must_be_a_boolean():
    with pytest.raises(ConfigError, match="model.compile must be true or false, got 'yes'"):
        ClassifierModule(["cat", "dog"], width=0.0625, weights=None, compile="yes")


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    """torch.compile for real (tens of seconds on a CPU): the same losses as eager, to float tolerance."""
    data = make_flat(tmp_path / "data", per_class=6, test=0)
    results = []
    for compiled in (False, True):
        out = tmp_path / f"run_{compiled}"
        train(tiny_train_cfg(data, out, f"model.compile={str(compiled).lower()}", "model.dropout=0"))
        results.append(json.loads((out / "result.json").read_text()))
    assert results[1]["val/logloss"] == pytest.approx(results[0]["val/logloss"], abs=1e-3)


def test_non_finite_loss_is_found_without_a_per_step_sync(monkeypatch):
    """The loss is checked on the device each step; the host reads the flag only when it checks (log steps, the
    epoch's last batch, before validation), and the error names the first bad step and its value."""
    m = ClassifierModule(["cat", "dog"], width=0.0625, weights=None)
    for step, loss in enumerate([0.5, float("nan"), float("inf"), 0.4]):
        monkeypatch.setattr(type(m), "global_step", property(lambda self, s=step: s))
        m._note_nonfinite(torch.tensor(loss))
    with pytest.raises(NonFiniteLossError, match=r"training loss is nan at epoch 0, step 1 "):
        m.check_finite()
