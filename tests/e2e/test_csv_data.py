"""data.csv end to end: train from a CSV with the user's split, predict a CSV of ids, score a labelled CSV."""

from __future__ import annotations

import csv
import json

from catdog.prediction import predict
from catdog.training import train
from tests.conftest import compose_predict, make_csv_data, tiny_train_cfg


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
