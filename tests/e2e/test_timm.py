"""timm backbones end to end: build, train, save, predict and explain with two timm families."""

from __future__ import annotations

import csv
import json

import pytest

from catdog.inference import load_classifier
from catdog.prediction import predict
from catdog.training import train
from tests.conftest import compose_predict, extra_marks, make_flat, tiny_train_cfg

pytestmark = extra_marks("timm", "timm")


@pytest.mark.parametrize("arch", ["timm/resnet10t", "timm/vit_tiny_patch16_224"])
def test_a_timm_model_trains_saves_predicts_and_is_explained(arch, tmp_path):
    data = make_flat(tmp_path / "data", per_class=6, test=4)
    run = tmp_path / "run"
    train(tiny_train_cfg(data, run, f"model.arch={arch}", "model.width=1.0", "report=true"))
    ckpt = run / "checkpoints" / "best.ckpt"
    model = load_classifier(ckpt)
    assert model.hparams.arch == arch and model.hparams.interpolation == "bicubic"  # timm's pretrained config
    out = tmp_path / "pred" / "submission.csv"
    predict(compose_predict([f"ckpt={ckpt}", f"output={out}", "num_workers=0", "device=cpu"]))
    with open(out, newline="") as f:
        assert len(list(csv.DictReader(f))) == 4
    explained = json.loads((run / "report" / "summary.json").read_text())["gradcam"]
    assert explained and (run / "report" / "gradcam.png").is_file()
