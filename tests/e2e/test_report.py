"""Run reports: the numbers behind each picture, the pictures as PNG files, a self-contained HTML page."""

import html
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from catdog.inference import load_classifier
from catdog.metrics import confusion_counts
from catdog.prediction import predict
from catdog.report import figures as fg
from catdog.report import gradcam as gc
from catdog.report.build import gradcam_items, write_evaluation_report, write_folder_report
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
    caption = numbers["captions"]["gradcam.png"]  # whose maps they are, under the picture
    assert caption == (
        "Grad-CAM for the class predicted, of the model whose prediction is shown: the run's best checkpoint, "
        f"{run / 'checkpoints' / 'best.ckpt'}."
    )
    assert f"<p>{html.escape(caption)}</p>" in (run / "report.html").read_text()
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


@pytest.fixture(scope="module")
def kfold(tmp_path_factory):
    """A 2-fold run with its report, trained once for this module's tests: (data root, run folder)."""
    root = tmp_path_factory.mktemp("kfold_report")
    data = make_flat(root / "data", per_class=6, test=0)
    train(tiny_train_cfg(data, root / "kfold", "ensemble.size=2", "report=true"))
    return data, root / "kfold"


def test_kfold_report_and_per_fold_table(kfold):
    _, run = kfold
    numbers = assert_report(
        run / "report.html",
        {"folds.png", "confusion.png", "mistakes.png", "label_issues.png", "reliability.png", "roc.png", "gradcam.png"},
    )
    manifest = json.loads((run / "manifest.json").read_text())
    # each image explained by the fold model that did not train on it
    fold_of = {line.split(",")[0]: line.split(",")[2] for line in (run / "oof.csv").read_text().splitlines()[1:]}
    for e in numbers["gradcam"]:
        assert e["checkpoint"] == str(run / f"fold_{fold_of[e['name']]}" / "checkpoints" / "best.ckpt")
        assert e["explained_by"] == f"fold {fold_of[e['name']]}'s model"
    caption = numbers["captions"]["gradcam.png"]  # picture by picture: the folds differ
    assert caption.startswith("Grad-CAM for the class predicted, of the fold model whose out-of-fold prediction is")
    assert all(f"{e['name']}: fold {fold_of[e['name']]}'s model" in caption for e in numbers["gradcam"])
    assert [r["fold"] for r in numbers["folds"]] == [0, 1, "oof"]
    assert numbers["folds"][-1]["logloss"] == pytest.approx(manifest["oof"]["logloss"])
    assert numbers["images"] == manifest["oof"]["images"] == 12
    assert (run / "fold_0" / "report.html").is_file()  # every fold has its own report too


def test_labelled_prediction_writes_the_evaluation_pictures(tmp_path):
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
    assert numbers["captions"]["gradcam.png"] == f"Grad-CAM for the class predicted, of one model: {ckpt}."
    assert numbers["images"] == scores["images"]
    assert numbers["accuracy"] == pytest.approx(scores["accuracy"])


def test_an_ensembles_evaluation_says_whose_grad_cam_it_shows(kfold, tmp_path):
    data, run = kfold
    members = [run / f"fold_{k}" / "checkpoints" / "best.ckpt" for k in (0, 1)]
    # predict.py on the k-fold run: the caption names the checkpoint(s) whose maps the pictures show
    overrides = [f"ckpt={run}", f"input={data / 'train'}", "labelled=true", "num_workers=0", "device=cpu"]
    predict(compose_predict(overrides, output_dir=tmp_path / "p"))
    numbers = json.loads((tmp_path / "p" / "evaluation" / "summary.json").read_text())
    caption = numbers["captions"]["gradcam.png"]
    used = {c for e in numbers["gradcam"] for c in e.get("checkpoints", [e.get("checkpoint")])}
    assert used <= {str(m) for m in members} and all(c in caption for c in used)
    assert ("of one model" in caption) == (len(used) == 1)
    # given every member: the mean of their maps, said so
    names = sorted(p.name for p in (data / "train").iterdir())
    paths = [str(data / "train" / n) for n in names]
    targets = np.array([n.startswith("dog") for n in names], dtype=np.int64)
    probs = np.random.default_rng(0).dirichlet([1.0, 1.0], size=len(names))
    classes = ["cat", "dog"]
    page = write_evaluation_report(
        tmp_path / "e", tmp_path / "e.html", probs, targets, classes, names, paths, "ensemble", checkpoint=members
    )
    numbers = assert_report(page, {"confusion.png", "mistakes.png", "reliability.png", "roc.png", "gradcam.png"})
    assert numbers["captions"]["gradcam.png"] == (
        "Grad-CAM for the class the ensemble predicted, whose prediction is shown: the mean of the maps of its 2 "
        f"members ({members[0]}, {members[1]})."
    )
    assert all(e["checkpoints"] == [str(m) for m in members] and "checkpoint" not in e for e in numbers["gradcam"])
    items = gradcam_items(probs, targets, classes, names, paths, lambda i: members)
    assert [i["name"] for i in items] == [e["name"] for e in numbers["gradcam"]]
    rows = [names.index(i["name"]) for i in items]
    maps = []
    for member in members:
        model = load_classifier(member)
        crops = gc.eval_crops(model, [paths[r] for r in rows])
        maps.append(gc.grad_cam(model, crops, [int(np.argmax(probs[r])) for r in rows]))
    for k, item in enumerate(items):
        mean = (maps[0][k].astype(np.float64) + maps[1][k]) / 2
        expected = mean / mean.max() if mean.max() > 0 else mean
        # the same maps (the same deterministic passes), averaged in float64 and rounded once to float32
        np.testing.assert_allclose(item["cam"], expected, rtol=0, atol=2.0**-24)
