"""Run reports: the numbers behind each picture, the pictures as PNG files, a self-contained HTML page."""

import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from catdog.metrics import confusion_counts
from catdog.report import figures as fg
from catdog.report.build import write_folder_report
from catdog.training import train
from tests.conftest import compose_predict, make_flat, tiny_train_cfg


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG file; fails if it is not one."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


def assert_report(html_path: Path, pictures: set[str]) -> dict:
    """The HTML embeds exactly ``pictures`` (each also a PNG file of sensible size beside it) and references no
    other file; returns the numbers of summary.json."""
    folder = html_path.with_suffix("") if html_path.name != "report.html" else html_path.parent / "report"
    text = html_path.read_text()
    assert set(re.findall(r"alt='([^']+)'", text)) == pictures
    for ref in re.findall(r"(?:src|href)=['\"]([^'\"]+)['\"]", text):
        assert ref.startswith("data:image/png;base64,") or (html_path.parent / ref).is_file(), ref[:80]
    for name in pictures:
        w, h = png_size(folder / name)
        assert 200 <= w <= 2000 and 200 <= h <= 2000, (name, w, h)
    return json.loads((folder / "summary.json").read_text())


def test_run_report_holds_every_picture_from_the_runs_numbers(tmp_path):
    data = make_flat(tmp_path / "data", per_class=10, test=0)
    run = tmp_path / "run"
    overrides = ["trainer.max_epochs=2", "model.finetune.head_epochs=1", "model.finetune.blocks=2", "report=true"]
    train(tiny_train_cfg(data, run, *overrides))
    numbers = assert_report(
        run / "report.html",
        {"curves.png", "confusion.png", "mistakes.png", "reliability.png", "roc.png", "gradcam.png"},
    )
    # Grad-CAM of the best checkpoint: the most confident mistakes first, then a few sure right answers per class.
    explained = numbers["gradcam"]
    assert {e["checkpoint"] for e in explained} == {str(run / "checkpoints" / "best.ckpt")}
    assert [e["name"] for e in explained if e["true"] != e["predicted"]] == [m["name"] for m in numbers["mistakes"]][
        : len([e for e in explained if e["true"] != e["predicted"]])
    ]
    assert {e["predicted"] for e in explained if e["true"] == e["predicted"]} <= {"cat", "dog"}
    # The numbers behind the pictures are those of the run's own oof.csv and result.json.
    rows = [line.split(",") for line in (run / "oof.csv").read_text().splitlines()[1:]]
    probs = np.array([[float(r[3]), float(r[4])] for r in rows])
    targets = np.array([["cat", "dog"].index(r[1]) for r in rows])
    assert numbers["confusion"] == confusion_counts(targets, probs.argmax(1), 2).tolist()
    assert sum(map(sum, numbers["confusion"])) == len(rows) == numbers["images"]
    assert numbers["auc"] == pytest.approx(fg.roc_data(probs[:, 1], targets == 1)["auc"])
    result = json.loads((run / "result.json").read_text())
    t = result["calibration"]["temperature"]
    assert numbers["ece"]["before"] == pytest.approx(fg.reliability_data(probs, targets)["ece"])
    assert numbers["ece"][f"after T = {t:.3f} (fitted on these images: in-sample)"] == pytest.approx(
        fg.reliability_data(fg.scale_probs(probs, t), targets)["ece"]
    )
    assert numbers["unfreeze_epoch"] == 1
    assert sorted(numbers["history"]["val/logloss"]) == ["0", "1"]
    # Rebuilding it from the folder alone gives the same numbers.
    (run / "report.html").unlink()
    write_folder_report(run, data)
    rebuilt = json.loads((run / "report" / "summary.json").read_text())
    assert rebuilt["confusion"] == numbers["confusion"] and rebuilt["gradcam"] == numbers["gradcam"]


def test_kfold_report_and_per_fold_table(tmp_path):
    data = make_flat(tmp_path / "data", per_class=6, test=0)
    run = tmp_path / "kfold"
    train(tiny_train_cfg(data, run, "ensemble.size=2", "report=true"))
    numbers = assert_report(
        run / "report.html",
        {"folds.png", "confusion.png", "mistakes.png", "label_issues.png", "reliability.png", "roc.png", "gradcam.png"},
    )
    manifest = json.loads((run / "manifest.json").read_text())
    # each image explained by the fold model that did not train on it
    fold_of = {line.split(",")[0]: line.split(",")[2] for line in (run / "oof.csv").read_text().splitlines()[1:]}
    for e in numbers["gradcam"]:
        assert e["checkpoint"] == str(run / f"fold_{fold_of[e['name']]}" / "checkpoints" / "best.ckpt")
    assert [r["fold"] for r in numbers["folds"]] == [0, 1, "oof"]
    assert numbers["folds"][-1]["logloss"] == pytest.approx(manifest["oof"]["logloss"])
    assert numbers["images"] == manifest["oof"]["images"] == 12
    assert (run / "fold_0" / "report.html").is_file()  # every fold has its own report too


def test_labelled_prediction_writes_the_evaluation_pictures(tmp_path):
    from catdog.prediction import predict

    data = make_flat(tmp_path / "data", per_class=6, test=0)
    train(tiny_train_cfg(data, tmp_path / "run"))
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    overrides = [f"ckpt={ckpt}", f"input={tmp_path / 'run' / 'split.csv'}", "labelled=true", "num_workers=0"]
    scores = predict(compose_predict([*overrides, "device=cpu"], output_dir=tmp_path / "p"))
    numbers = assert_report(
        tmp_path / "p" / "evaluation.html",
        {"confusion.png", "mistakes.png", "reliability.png", "roc.png", "gradcam.png"},
    )
    assert {e["checkpoint"] for e in numbers["gradcam"]} == {str(ckpt)}
    assert numbers["images"] == scores["images"]
    assert numbers["accuracy"] == pytest.approx(scores["accuracy"])
