"""Any torchvision classifier as the backbone: heads, stages, staged fine-tuning, preprocessing, checkpoints."""

import json
import urllib.error

import numpy as np
import pytest
import torch
import torchvision

from catdog.builders import build_datamodule, build_model, resolve_preprocessing
from catdog.checkpoints import read_checkpoint
from catdog.errors import ConfigError, WeightsUnavailableError
from catdog.inference import load_classifier
from catdog.models.module import ClassifierModule
from catdog.models.networks import build_network
from catdog.models.stages import check_arch
from catdog.training import train
from tests.conftest import compose_predict, compose_train, make_flat, tiny_train_cfg

# (arch, stages, extra overrides): the smallest member of each family at the smallest size it takes.
FAMILIES = [
    ("vgg16_bn", 5, ["model.width=0.0625"]),
    ("resnet18", 4, []),
    ("convnext_tiny", 4, []),
    ("efficientnet_b0", 7, []),
    ("vit_b_16", 12, []),
]


def _build(arch: str, **kwargs):
    width = {"width": 0.0625} if arch.startswith("vgg") else {}
    return build_network(arch, num_classes=3, head_hidden=8, image_size=32, **width, **kwargs)


@pytest.mark.parametrize(("arch", "n_stages", "extra"), FAMILIES)
def test_family_builds_with_a_new_head_and_its_stages(arch, n_stages, extra):
    net = _build(arch).eval()
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    stages = net.stages()
    assert len(stages) == n_stages
    # Every backbone parameter is in exactly one stage, in forward (registration) order; the head is in none.
    staged = [n for s in stages for n in s.params]
    backbone = [n.removeprefix("model.") for n, _ in net.backbone_named_parameters()]
    assert staged == backbone
    head = [n for n, _ in net.head_named_parameters()]
    assert head and not set(head) & {f"model.{n}" for n in staged}
    assert net.describe().startswith(f"{arch}: {n_stages} stages")


@pytest.mark.parametrize("head", ["small", "native"])
def test_heads_end_in_n_outputs(head):
    for arch in ("resnet18", "convnext_tiny", "efficientnet_b0"):
        net = _build(arch, head=head)
        last = [m for m in net.head.modules() if isinstance(m, torch.nn.Linear)][-1]
        assert last.out_features == 3
        hidden = [m.out_features for m in net.head.modules() if isinstance(m, torch.nn.Linear)]
        assert (hidden == [8, 3]) if head == "small" else (hidden == [3])


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


@pytest.mark.parametrize(("arch", "n_stages", "extra"), FAMILIES)
def test_family_trains_predicts_and_round_trips(arch, n_stages, extra, tmp_path):
    """One training step through train(), a submission from its checkpoint, and the checkpoint reloaded on its own
    gives the same probabilities."""
    from catdog.prediction import predict

    data = make_flat(tmp_path / "data", per_class=4, test=3)
    overrides = [f"model.arch={arch}", "model.width=1.0", "model.head=native", "+trainer.limit_train_batches=1", *extra]
    train(tiny_train_cfg(data, tmp_path / "run", *overrides, "calibrate=false"))
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    hp = read_checkpoint(ckpt)["hyper_parameters"]
    assert hp["arch"] == arch and hp["weights"] is None and hp["image_size"] == 32
    cfg = compose_predict([f"ckpt={ckpt}", "num_workers=0", "device=cpu"], output_dir=tmp_path / "p")
    predict(cfg)
    lines = (tmp_path / "p" / "submission.csv").read_text().splitlines()
    assert lines[0] == "id,label" and len(lines) == 4
    model = load_classifier(ckpt)
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    again = ClassifierModule.load_from_checkpoint(ckpt, map_location="cpu").eval()
    torch.testing.assert_close(model.predict_proba(x), again.predict_proba(x))


def test_unknown_arch_names_close_matches():
    with pytest.raises(ConfigError, match=r"model\.arch='resnet19'.*did you mean resnet18"):
        check_arch("resnet19")
    assert check_arch("efficientnet_v2_s") == "efficientnet_v2_s"


def test_blocks_beyond_the_stage_count_is_refused():
    with pytest.raises(ConfigError, match=r"model\.finetune\.blocks=5, but resnet18 has 4 stages.*layer1"):
        ClassifierModule(["a", "b"], arch="resnet18", finetune={"head_epochs": 1, "blocks": 5})


def test_pretrained_preprocessing_comes_from_the_weights():
    """weights=imagenet: image size, crop and interpolation from torchvision's weights.transforms(); values set in
    the config win; without weights, torchvision's classic 224 / 256 bilinear."""
    cfg = compose_train(["model.arch=efficientnet_b0", "model.weights=imagenet"])
    resolve_preprocessing(cfg)
    t = torchvision.models.EfficientNet_B0_Weights.DEFAULT.transforms()
    assert cfg.data.image_size == t.crop_size[0] == 224
    assert round(cfg.data.image_size / cfg.data.crop_pct) == t.resize_size[0] == 256
    assert cfg.data.interpolation == "bicubic"
    cfg = compose_train(["model.arch=efficientnet_v2_s", "model.weights=imagenet", "data.image_size=224"])
    resolve_preprocessing(cfg)
    assert cfg.data.image_size == 224 and cfg.data.crop_pct == 1.0  # v2-s: 384 / 384, crop kept
    cfg = compose_train(["model.arch=efficientnet_b0", "model.weights=null"])
    resolve_preprocessing(cfg)
    assert (cfg.data.image_size, cfg.data.crop_pct, cfg.data.interpolation) == (224, 0.875, "bilinear")


def test_interpolation_is_saved_in_the_checkpoint_and_used_by_predict(tmp_path):
    """A model trained with bicubic resizing is evaluated with it by predict.py, from the checkpoint alone."""
    from PIL import Image

    from catdog.data.transforms import eval_transform
    from catdog.prediction import predict

    data = make_flat(tmp_path / "data", per_class=4, test=0)
    (data / "test").mkdir()
    for i in (1, 2, 3):  # larger than the eval resize (37 px), so the resize filter matters
        pixels = np.random.default_rng(i).integers(0, 256, (90, 70, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(data / "test" / f"{i}.png")
    train(tiny_train_cfg(data, tmp_path / "run", "data.interpolation=bicubic", "calibrate=false"))
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    model = load_classifier(ckpt)
    assert model.hparams.interpolation == "bicubic"
    predict(
        compose_predict(
            [f"ckpt={ckpt}", "num_workers=0", "device=cpu", "precision=32", "decoder=pil"], output_dir=tmp_path / "p"
        )
    )
    rows = (tmp_path / "p" / "submission.csv").read_text().splitlines()[1:]
    written = {int(r.split(",")[0]): float(r.split(",")[1]) for r in rows}
    for mode, should_match in (("bicubic", True), ("bilinear", False)):
        transform = eval_transform(32, model.hparams.crop_pct, interpolation=mode)
        x = torch.stack([transform(Image.open(data / "test" / f"{i}.png").convert("RGB")) for i in (1, 2, 3)])
        with torch.no_grad():
            p = model.predict_proba(x)[:, 1].double().numpy()
        close = np.allclose([written[i] for i in (1, 2, 3)], p, atol=1e-6)
        assert close == should_match, (mode, p, written)


def test_fixed_size_arch_refuses_progressive_resizing(flat_data, tmp_path):
    cfg = tiny_train_cfg(
        flat_data, tmp_path / "run", "model.arch=vit_b_16", "model.width=1.0", "data.image_size=64",
        "data.progressive={start_size:32,epochs:2}",
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"vit_b_16 takes one input size.*data\.progressive=null"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_image_size_too_small_for_the_arch_is_a_config_error(flat_data, tmp_path):
    cfg = tiny_train_cfg(flat_data, tmp_path / "run", "model.arch=inception_v3", "model.width=1.0")
    with pytest.raises(ConfigError, match=r"inception_v3 cannot take 32 px images"):
        train(cfg)


def test_swa_with_frozen_batchnorm_stages_is_refused_for_any_bn_family(tmp_path):
    from catdog.validation import check_train_config

    def cfg(arch):
        c = compose_train([f"model.arch={arch}", "model.weights=null", "averaging=swa", "model.finetune.blocks=2"])
        resolve_preprocessing(c)
        return c

    with pytest.raises(ConfigError, match="averaging=swa resets the BatchNorm statistics"):
        check_train_config(cfg("resnet18"))
    check_train_config(cfg("convnext_tiny"))  # LayerNorm only: nothing to reset


def test_offline_message_names_the_file_of_any_arch(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailableError) as err:
        build_network("convnext_tiny", weights="imagenet")
    msg = str(err.value)
    assert "convnext_tiny-983f1562.pth" in msg and str(tmp_path / "hub" / "checkpoints") in msg
    assert "model.weights=/path/to/convnext_tiny-983f1562.pth" in msg


def test_local_weights_file_of_another_family_loads(tmp_path):
    source = torchvision.models.resnet18()
    path = tmp_path / "resnet18-local.pth"
    torch.save(source.state_dict(), path)  # torchvision's format, with its 1000-class fc
    net = build_network("resnet18", num_classes=2, weights=str(path), head="native")
    torch.testing.assert_close(net.model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    torch.testing.assert_close(net.model.bn1.running_var, source.bn1.running_var)
    with pytest.raises(Exception, match=r"resnet18-local\.pth does not match model\.arch=resnet34"):
        build_network("resnet34", weights=str(path))


def test_vit_weights_follow_the_image_size(monkeypatch):
    """ViT weights for 224 px loaded into a 32 px model: torchvision's interpolation of the position embedding."""
    state = torchvision.models.vit_b_16().state_dict()
    monkeypatch.setattr("catdog.models.networks.imagenet_state_dict", lambda arch: state)
    net = build_network("vit_b_16", weights="imagenet", image_size=32, head="native")
    assert net.model.encoder.pos_embedding.shape == (1, 1 + 2 * 2, 768)
    torch.testing.assert_close(net.model.conv_proj.weight, state["conv_proj.weight"])
    assert net.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 2)


def test_ensemble_of_two_architectures_at_their_own_sizes(tmp_path):
    """Members of different architectures and image sizes: each sees its own preprocessing; probabilities average."""
    from catdog.prediction import predict

    data = make_flat(tmp_path / "data", per_class=4, test=3)
    train(tiny_train_cfg(data, tmp_path / "vgg", "calibrate=false"))
    train(tiny_train_cfg(data, tmp_path / "resnet", "model.arch=resnet18", "model.width=1.0", "data.image_size=48",
                         "model.head=native", "+trainer.limit_train_batches=1", "calibrate=false"))  # fmt: skip
    members = [tmp_path / run / "checkpoints" / "best.ckpt" for run in ("vgg", "resnet")]
    out = {}
    for name, ckpts in (("vgg", members[:1]), ("resnet", members[1:]), ("both", members)):
        overrides = [f"ckpt=[{','.join(map(str, ckpts))}]", "num_workers=0", "device=cpu", "precision=32"]
        predict(compose_predict(overrides, output_dir=tmp_path / name))
        rows = (tmp_path / name / "submission.csv").read_text().splitlines()[1:]
        out[name] = np.array([float(r.split(",")[1]) for r in rows])
    np.testing.assert_allclose(out["both"], (out["vgg"] + out["resnet"]) / 2, atol=1e-6)
    assert load_classifier(members[1]).hparams.image_size == 48


def test_checkpoints_of_the_first_vgg_layout_still_load(tmp_path):
    """catdog's first network kept VGG's conv stack as ``net.backbone`` and the head (pool, flatten, layers) as
    ``net.head``; such checkpoints load and predict the same."""
    model = ClassifierModule(["cat", "dog"], arch="vgg16_bn", width=0.0625, head="vgg", head_hidden=8, image_size=32)
    trainer = __import__("pytorch_lightning").Trainer(logger=False, enable_checkpointing=False, max_epochs=0)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "new.ckpt")
    ckpt = torch.load(tmp_path / "new.ckpt", weights_only=True)
    old = {}
    for key, value in ckpt["state_dict"].items():
        if key.startswith("net.model.features."):
            key = "net.backbone." + key.removeprefix("net.model.features.")
        else:
            index, rest = key.removeprefix("net.model.classifier.").split(".", 1)
            key = f"net.head.{int(index) + 2}.{rest}"
        old[key] = value
    ckpt["state_dict"] = old
    torch.save(ckpt, tmp_path / "old.ckpt")
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    expected = model.eval().predict_proba(x)
    torch.testing.assert_close(load_classifier(tmp_path / "old.ckpt").predict_proba(x), expected)
    reloaded = ClassifierModule.load_from_checkpoint(tmp_path / "old.ckpt", map_location="cpu").eval()
    torch.testing.assert_close(reloaded.predict_proba(x), expected)


def test_stage_list_is_logged_once_at_the_start(flat_data, tmp_path, caplog):
    import logging

    import catdog.builders as builders

    builders._described.discard("resnet18")
    cfg = tiny_train_cfg(flat_data, tmp_path / "run", "model.arch=resnet18", "model.width=1.0")
    with caplog.at_level(logging.INFO, logger="catdog.builders"):
        dm = build_datamodule(cfg)
        dm.setup("fit")
        model = build_model(cfg, dm.classes)
        builders._check_network(cfg, model)
        builders._check_network(cfg, model)
    lines = [r.message for r in caplog.records if r.message.startswith("resnet18: 4 stages")]
    assert len(lines) == 1 and "1 layer1 (+ conv1, bn1)" in lines[0] and "head fc" in lines[0]


def test_kfold_run_started_before_interpolation_existed_still_resumes(tmp_path):
    """A k-fold folder's kfold.json written without data.interpolation matches a bilinear run, not a bicubic one."""
    from catdog.runs.layout import KFOLD_SETTINGS
    from catdog.training import check_kfold_settings

    cfg = compose_train(["model.weights=null", "data.folds=3"], output_dir=tmp_path)
    resolve_preprocessing(cfg)
    check_kfold_settings(cfg, tmp_path)
    path = tmp_path / KFOLD_SETTINGS
    saved = json.loads(path.read_text())
    del saved["data"]["interpolation"]
    path.write_text(json.dumps(saved))
    check_kfold_settings(cfg, tmp_path)  # the same run: resumes
    cfg.data.interpolation = "bicubic"
    with pytest.raises(ConfigError, match=r"differs in data\.interpolation"):
        check_kfold_settings(cfg, tmp_path)
