"""catdog/models/module.py: ClassifierModule's stages and freezing, the fast path (channels_last, batched TTA, bf16),
mixing, the non-finite loss check, an empty batch under DDP."""

from types import SimpleNamespace

import pytest
import torch

from catdog.builders import build_datamodule, build_model
from catdog.data.datamodule import collate_skip_none
from catdog.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize
from catdog.errors import ConfigError
from catdog.models.module import ClassifierModule, NonFiniteLossError
from catdog.models.networks import build_network
from catdog.models.tta import make_views
from tests.conftest import FAMILIES, TINY, compose_train, tiny_train_cfg

# (arch, stages, extra overrides): the smallest member of each family at the smallest size it takes.


@pytest.mark.parametrize(("arch", "n_stages", "extra"), FAMILIES)
def test_blocks_k_unfreezes_exactly_the_last_k_stages(arch, n_stages, extra):
    width = 0.0625 if arch.startswith("vgg") else 1.0
    model = ClassifierModule(
        ["a", "b"], arch=arch, width=width, head_hidden=8, image_size=32,
        finetune={"head_epochs": 1, "blocks": 2, "lr_factor": 0.1},
    )  # fmt: skip
    stages = model.net.stages()
    params = dict(model.net.model.named_parameters())
    model.train()
    model.apply_stage(0)
    assert not any(p.requires_grad for _, p in model.net.backbone_named_parameters())
    assert all(p.requires_grad for p in model.net.head.parameters())
    model.apply_stage(1)
    trainable = {n for n, p in params.items() if p.requires_grad}
    expected = {n for s in stages[-2:] for n in s.params} | {n.removeprefix("model.") for n, _ in
                                                              model.net.head_named_parameters()}  # fmt: skip
    assert trainable == expected
    # Frozen parts run in eval mode (BatchNorm statistics kept, no dropout / stochastic depth); trainable ones train.
    for m in model.net.modules():
        params = list(m.parameters())
        if params:
            assert m.training == any(p.requires_grad for p in params), m
    norms = [m for m in model.net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(m.training == m.weight.requires_grad for m in norms)
    assert any(not m.training for m in model.net.modules())


def test_blocks_beyond_the_stage_count_is_refused():
    with pytest.raises(ConfigError, match=r"model\.finetune\.blocks=5, but resnet18 has 4 stages.*layer1"):
        ClassifierModule(["a", "b"], arch="resnet18", finetune={"head_epochs": 1, "blocks": 5})


def test_a_batch_of_unreadable_images_joins_the_step_under_ddp(tmp_path):
    """Skipped in one process; under DDP a zero loss tied to every trainable parameter (so the gradient all-reduce
    has every process) and the same logging calls as any step (synced values are collectives too)."""
    model = build_model(compose_train(TINY, output_dir=tmp_path), ["cat", "dog"])
    logged = []
    model.log = lambda name, value, **kw: logged.append((name, float(value), kw["batch_size"], kw["sync_dist"]))
    empty = collate_skip_none([None, None])
    model._trainer = SimpleNamespace(world_size=1)
    assert model.training_step(empty, 0) is None and not logged
    model._trainer = SimpleNamespace(world_size=2)
    loss = model.training_step(empty, 0)
    assert float(loss.detach()) == 0.0 and loss.requires_grad
    loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None and not p.grad.any() for p in trainable)
    assert logged == [("train/loss", 0.0, 0, True), ("train/acc", 0.0, 0, True)]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = ClassifierModule(["cat", "dog"], arch="vgg16_bn", width=0.0625, head_hidden=16, channels_last=True)
    return m.eval()


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


def test_model_compile_must_be_a_boolean():
    with pytest.raises(ConfigError, match="model.compile must be true or false, got 'yes'"):
        ClassifierModule(["cat", "dog"], width=0.0625, weights=None, compile="yes")


def test_non_finite_loss_is_found_without_a_per_step_sync(monkeypatch):
    """The loss is checked on the device each step; the host reads the flag only when it checks (log steps, the
    epoch's last batch, before validation), and the error names the first bad step and its value."""
    m = ClassifierModule(["cat", "dog"], width=0.0625, weights=None)
    for step, loss in enumerate([0.5, float("nan"), float("inf"), 0.4]):
        monkeypatch.setattr(type(m), "global_step", property(lambda self, s=step: s))
        m._note_nonfinite(torch.tensor(loss))
    with pytest.raises(NonFiniteLossError, match=r"training loss is nan at epoch 0, step 1 "):
        m.check_finite()


class _Capture:
    def __init__(self):
        self.inputs = []

    def __call__(self, module, args):
        self.inputs.append(args[0].detach().clone())


def _first_input(module, batch):
    capture = _Capture()
    handle = module.net.register_forward_pre_hook(capture)
    module.training_step(batch, 0)
    handle.remove()
    return capture.inputs[0]


def _module(mixing=None):
    torch.manual_seed(0)
    return ClassifierModule(["a", "b"], width=0.0625, head_hidden=8, mixing=mixing, channels_last=False).train()


def test_mixup_batches_are_mixed():
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    plain = _first_input(_module(), (x, y, torch.arange(6)))
    mixed = _first_input(_module({"mixup_alpha": 1.0}), (x, y, torch.arange(6)))
    assert not torch.allclose(mixed, plain)
    # torchvision's MixUp: lam * x + (1 - lam) * x rolled by one, the same lam for the whole batch.
    rolled = plain.roll(1, 0)
    diff = (plain - rolled).flatten()
    lam = float(((mixed.flatten() - rolled.flatten()) @ diff) / (diff @ diff))
    assert 0.0 < lam < 1.0
    torch.testing.assert_close(mixed, lam * plain + (1 - lam) * rolled, atol=1e-4, rtol=1e-4)


def test_frozen_bn_layers_stay_in_eval_mode(flat_data, tmp_path):
    cfg = tiny_train_cfg(
        flat_data, tmp_path, "model.finetune.head_epochs=5", "model.finetune.blocks=2", "model.arch=vgg16_bn"
    )
    dm = build_datamodule(cfg)
    dm.setup("fit")
    model = build_model(cfg, dm.classes)
    model.apply_stage(0)
    model.train()
    bns = [m for m in model.net.model.features.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    assert model.net.head.training
    model.apply_stage(5)
    model.train()
    assert bns[-1].training and not bns[0].training  # only the last two blocks train


def test_random_init_with_frozen_stages_warns(caplog):
    staged = ClassifierModule(["a", "b"], width=0.0625, finetune={"head_epochs": 2, "blocks": 1})
    staged.on_fit_start()
    assert "experiment=vgg16_bn_scratch" in caplog.text
    caplog.clear()
    scratch = ClassifierModule(["a", "b"], width=0.0625, finetune={"head_epochs": 0, "blocks": -1})
    scratch.on_fit_start()
    assert "vgg16_bn_scratch" not in caplog.text
    assert all(p.requires_grad for _, p in scratch.net.backbone_named_parameters())
