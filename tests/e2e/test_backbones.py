"""Any torchvision classifier as the backbone: heads, stages, staged fine-tuning, preprocessing, checkpoints."""

import numpy as np
import pytest
import torch

from catdog.checkpoints import read_checkpoint
from catdog.errors import ConfigError
from catdog.inference import load_classifier
from catdog.models.module import ClassifierModule
from catdog.training import train
from tests.conftest import FAMILIES, compose_predict, make_flat, tiny_train_cfg

# (arch, stages, extra overrides): the smallest member of each family at the smallest size it takes.


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
