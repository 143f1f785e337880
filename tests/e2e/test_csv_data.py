"""data.csv end to end: train from a CSV with the user's split, predict a CSV of ids, score a labelled CSV."""

from __future__ import annotations

import csv
import json

import pytest

from catdog.errors import ConfigError, DatasetError
from catdog.prediction import predict
from catdog.training import train
from tests.conftest import compose_predict, make_csv_data, make_image, tiny_train_cfg


def test_train_and_predict_from_csv_files(tmp_path):
    data = tmp_path / "data"
    rows = [(f"photos/{i:03d}.png", ["cat", "dog"][i % 2], "val" if i < 4 else "train") for i in range(16)]
    labels = make_csv_data(data, rows, header="file,species,split")
    columns = ["data.csv_columns.image=file", "data.csv_columns.label=species"]
    train(tiny_train_cfg(data, tmp_path / "run", f"data.csv={labels}", *columns))
    split = (tmp_path / "run" / "split.csv").read_text().splitlines()
    assert sorted(line for line in split if line.endswith(",val")) == [
        f"photos/{i:03d}.png,{['cat', 'dog'][i % 2]},val" for i in range(4)
    ]
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    ids = data / "ids.csv"
    ids.write_text("file\nphotos/007.png\nphotos/003.png\n")
    out = tmp_path / "pred" / "submission.csv"
    predict(compose_predict([f"ckpt={ckpt}", f"input={ids}", f"output={out}", "num_workers=0", "device=cpu"]))
    with open(out, newline="") as f:
        assert [r["id"] for r in csv.DictReader(f)] == ["photos/003.png", "photos/007.png"]  # the ids as written
    scored = tmp_path / "eval" / "predictions.csv"
    predict(compose_predict([f"ckpt={ckpt}", f"input={labels}", "labelled=true", f"output={scored}",
                             "num_workers=0", "device=cpu"]))  # fmt: skip
    assert json.loads((scored.parent / "evaluation.json").read_text())["images"] == 16


def test_images_outside_data_dir_train_only_when_allowed_and_are_not_predicted(tmp_path):
    data = tmp_path / "data"
    rows = [(f"img/{i}.png", ["cat", "dog"][i % 2]) for i in range(8)] + [("../far/x.png", "dog")]
    labels = make_csv_data(data, rows)
    with pytest.raises(DatasetError, match=rf"{labels}, column 'image': 1 row\(s\) name an image outside {data} "):
        train(tiny_train_cfg(data, tmp_path / "refused", f"data.csv={labels}"))
    assert not (tmp_path / "refused" / "checkpoints").exists()
    with pytest.raises(ConfigError, match="data.csv_outside_dir must be true or false, got 'yes'"):
        train(tiny_train_cfg(data, tmp_path / "bad", f"data.csv={labels}", "data.csv_outside_dir=yes"))
    run = tmp_path / "run"
    train(tiny_train_cfg(data, run, f"data.csv={labels}", "data.csv_outside_dir=true"))
    assert "../far/x.png" in (run / "split.csv").read_text()
    make_image(tmp_path / "secret.png", 1)
    ids = data / "ids.csv"
    ids.write_text(f"image\nimg/1.png\n../secret.png\n{tmp_path / 'secret.png'}\n")
    out = tmp_path / "pred" / "submission.csv"
    args = [f"ckpt={run / 'checkpoints' / 'best.ckpt'}", f"input={ids}", f"output={out}", "num_workers=0", "device=cpu"]
    with pytest.raises(DatasetError, match=r"2 row\(s\) name an image outside .*line 3: '../secret.png', line 4: "):
        predict(compose_predict(args))
    assert not out.exists()
    ids.write_text("image\nimg/1.png\n../secret.png\n")
    predict(compose_predict([*args, "data.csv_outside_dir=true"]))  # the opt-in is the predict command's own
    assert sorted(r.split(",")[0] for r in out.read_text().splitlines()[1:]) == ["../secret.png", "img/1.png"]
