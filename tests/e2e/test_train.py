import csv
import json
import re

import pytest
import torch

from catdog.builders import build_datamodule, build_model, build_trainer
from catdog.checkpoints import read_checkpoint
from catdog.errors import ConfigError
from catdog.inference import load_classifier
from catdog.models.module import ClassifierModule
from catdog.training import train
from tests.conftest import run_script, tiny_train_cfg


@pytest.mark.parametrize("arch", ["vgg16", "vgg16_bn"])
def test_train_one_epoch_writes_checkpoints(arch, flat_data, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_train_cfg(flat_data, out, f"model.arch={arch}")
    value = train(cfg)
    assert 0 < value < 10  # the best val/logloss, returned for sweepers
    assert (out / "checkpoints" / "best.ckpt").is_file()
    assert (out / "checkpoints" / "last.ckpt").is_file()
    result = json.loads((out / "result.json").read_text())
    assert result["val/logloss"] == pytest.approx(value) and result["epochs"] == 1
    split = (out / "split.csv").read_text().splitlines()
    assert split[0] == "path,label,split" and len(split) == 21
    assert len((out / "oof.csv").read_text().splitlines()) == 1 + sum(line.endswith(",val") for line in split)
    with open(out / "csv" / "metrics.csv") as f:
        speeds = [float(r["train/images_per_s"]) for r in csv.DictReader(f) if r.get("train/images_per_s")]
    assert len(speeds) == 1 and speeds[0] > 0  # one training epoch, timed without its validation
    assert result["train_images"] == 16 and 0 < result["fit_time_s"] <= result["wall_time_s"]


def test_fast_dev_run_folder_layout(folder_data, tmp_path):
    cfg = tiny_train_cfg(folder_data, tmp_path / "run", "trainer.fast_dev_run=true", "optimized_metric=null")
    assert train(cfg) is None


def test_checkpoint_loads_on_its_own_and_predicts_the_same(flat_data, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_train_cfg(flat_data, out)
    train(cfg)
    ckpt_path = out / "checkpoints" / "best.ckpt"
    raw = read_checkpoint(ckpt_path)  # weights_only=True: only plain values and tensors inside
    assert raw["hyper_parameters"]["classes"] == ["cat", "dog"]
    assert raw["hyper_parameters"]["weights"] is None
    model = load_classifier(ckpt_path)
    lightning_way = ClassifierModule.load_from_checkpoint(ckpt_path, map_location="cpu").eval()
    x = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    again = load_classifier(ckpt_path)
    torch.testing.assert_close(model(x), again(x))
    torch.testing.assert_close(model(x), lightning_way(x))
    assert model.datamodule_hparams["dir"] == str(flat_data)


def _fit(cfg, epochs):
    dm = build_datamodule(cfg)
    dm.setup("fit")
    model = build_model(cfg, dm.classes)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = build_trainer(cfg, max_epochs=epochs, logger=False, enable_checkpointing=False, callbacks=[])
    trainer.fit(model, datamodule=dm)
    return model, before


def test_staged_finetuning_freezes_backbone_and_bn_stats(flat_data, tmp_path):
    cfg = tiny_train_cfg(
        flat_data, tmp_path, "model.finetune.head_epochs=1", "model.finetune.blocks=1", "model.arch=vgg16_bn"
    )
    model, before = _fit(cfg, epochs=1)
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert any(k.startswith("net.model.classifier.") for k in changed)
    # Head-only stage: no backbone weight and no BN running statistic moved.
    assert not any(k.startswith("net.model.features.") for k in changed), sorted(changed)[:5]

    model, before = _fit(cfg, epochs=2)
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    last_block = {f"net.model.features.{i}." for i in range(34, 44)}  # block 5 of vgg16_bn
    first_block = {f"net.model.features.{i}." for i in range(7)}
    assert any(k.startswith(tuple(last_block)) and "running_mean" in k for k in changed)
    assert any(k.startswith(tuple(last_block)) and k.endswith("weight") for k in changed)
    assert not any(k.startswith(tuple(first_block)) for k in changed)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("data.batch_size=0", "data.batch_size"),
        ("data.val_fraction=1.5", "data.val_fraction"),
        ("model.arch=resnet50", "model.arch"),
        ("trainer.max_epochs=0", "trainer.max_epochs"),
        ("data.on_bad_image=ignore", "data.on_bad_image"),
        ("data.image_size=8", "data.image_size"),
    ],
)
def test_bad_config_fails_before_reading_data(override, key, tmp_path):
    cfg = tiny_train_cfg(tmp_path / "does-not-exist", tmp_path, override)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        train(cfg)


def test_cli_demo_then_predict_latest(tmp_path):
    """The README's two commands, shrunk: train the demo, then predict with the checkpoint it made. Output to a
    pipe gets progress as plain log lines (no carriage returns), and the run folder its report."""
    args = ["data.dir=" + str(tmp_path / "demo"), "trainer.max_epochs=1"]
    args.append("paths.log_dir=" + str(tmp_path / "out"))
    run = run_script("train.py", ["experiment=demo", *args], cwd=tmp_path)  # catdog's deprecations are errors
    assert run.returncode == 0, run.stderr[-3000:]
    run_dirs = list((tmp_path / "out" / "demo").iterdir())
    assert len(run_dirs) == 1
    assert (run_dirs[0] / ".hydra" / "config.yaml").is_file()
    assert (run_dirs[0] / "checkpoints" / "best.ckpt").is_file()
    assert "\r" not in run.stdout + run.stderr
    assert re.search(r"epoch 0/0: train/loss [\d.]+, val/logloss [\d.]+, val/acc [\d.]+", run.stdout + run.stderr)
    assert (run_dirs[0] / "report.html").is_file()
    pred = run_script("predict.py", ["ckpt=latest", "tta=2", "paths.log_dir=" + str(tmp_path / "out")], cwd=tmp_path)
    assert pred.returncode == 0, pred.stderr[-3000:]
    sub = next((tmp_path / "out" / "predict").glob("*/submission.csv"))
    lines = sub.read_text().splitlines()
    assert lines[0] == "id,label" and len(lines) == 51  # the demo set has 50 test images
