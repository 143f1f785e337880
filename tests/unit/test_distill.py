"""catdog/distill.py: which row teaches which image, blends and lists of runs as teachers, the kept targets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import catdog.oof_views as oof_views
from catdog.blending import blend_probs, log_probs
from catdog.distill import (
    distill_record,
    load_teacher,
    read_teacher_runs,
    targets_digest,
    targets_text,
)
from catdog.errors import CheckpointError, ConfigError
from catdog.models.distillation import check_distill
from catdog.runs.resume import DISTILL_KEY, RUN_SETTINGS_KEY, check_same_teacher

PATHS = [f"train/{c}.{i}.jpg" for c in ("cat", "dog") for i in range(3)]
LABELS = ["cat", "cat", "cat", "dog", "dog", "dog"]
FOLDS = ["0", "1", "0", "1", "0", "1"]


def _kfold_run(folder, p_dog, folds=FOLDS, paths=PATHS):
    """A finished 2-fold run: manifest.json, a checkpoint per fold and oof.csv with P(dog) ``p_dog`` per image."""
    members = []
    for fold in (0, 1):
        ckpt = folder / f"fold_{fold}" / "checkpoints" / "best.ckpt"
        ckpt.parent.mkdir(parents=True)
        ckpt.write_bytes(f"{folder.name} fold {fold}".encode())
        members.append({"checkpoint": f"fold_{fold}/checkpoints/best.ckpt", "fold": fold})
    (folder / "manifest.json").write_text(json.dumps({"kind": "catdog-ensemble", "members": members}))
    rows = [f"{p},{y},{f},{1 - q!r},{q!r}" for p, y, f, q in zip(paths, LABELS, folds, p_dog)]
    (folder / "oof.csv").write_text("path,label,fold,p_cat,p_dog\n" + "\n".join(rows) + "\n")
    return folder


def _distill(teacher, **kw):
    return check_distill({"teacher": teacher, **kw})


def test_each_image_is_taught_by_its_out_of_fold_row(tmp_path):
    p_dog = [0.1, 0.2, 0.3, 0.6, 0.7, 0.8]
    run = _kfold_run(tmp_path / "a", p_dog)
    teacher = load_teacher(_distill(str(run)), tmp_path / "data")
    student = ["train/dog.1.jpg", "train/cat.0.jpg"]
    assert teacher.rows_for(student)[:, 1].tolist() == [0.7, 0.1]
    assert teacher.seen(["train/cat.2.jpg", "test/1.jpg"]) == 1
    with pytest.raises(ConfigError, match=r"no out-of-fold row for 1 of the student's 2 training images \(e.g. x.jpg"):
        teacher.rows_for(["train/cat.0.jpg", "x.jpg"])


def test_with_tta_each_row_is_predicted_by_the_fold_model_that_did_not_train_on_it(tmp_path, monkeypatch):
    """Every image's views come from the model of the fold the image was held out of, never from a model that trained
    on it; the rows are kept in the teacher's folder and a changed teacher checkpoint makes them again."""
    run = _kfold_run(tmp_path / "a", [0.5] * 6)
    monkeypatch.setattr(oof_views, "load_classifier", lambda path: int(path.parent.parent.name[-1]))
    calls = []

    def predict(fold_model, paths):  # P(dog) says which fold's model made the row
        calls.append(fold_model)
        return np.array([[1 - 0.1 * (fold_model + 1), 0.1 * (fold_model + 1)]] * len(paths))

    distill = _distill(str(run), tta=3)
    teacher = load_teacher(distill, tmp_path / "data", predict, {"precision": "None"})
    made_by = (teacher.rows_for(PATHS)[:, 1] * 10).round().astype(int) - 1
    assert made_by.tolist() == [int(f) for f in FOLDS] and sorted(calls) == [0, 1]
    assert (run / "oof_tta3_zoom.csv").is_file() and "with tta=3" in teacher.runs[0].fitted_on()
    calls.clear()
    load_teacher(distill, tmp_path / "data", predict, {"precision": "None"})
    assert calls == []  # kept
    (run / "fold_1" / "checkpoints" / "best.ckpt").write_bytes(b"retrained")
    load_teacher(distill, tmp_path / "data", predict, {"precision": "None"})
    assert sorted(calls) == [0, 1]  # the teacher changed: predicted again


def test_a_list_of_runs_teaches_their_mean_and_a_blend_its_weights_and_temperature(tmp_path):
    a = _kfold_run(tmp_path / "a", [0.1, 0.2, 0.3, 0.6, 0.7, 0.8])
    b = _kfold_run(tmp_path / "b", [0.3, 0.4, 0.1, 0.9, 0.5, 0.6])
    mean = load_teacher(_distill([str(a), str(b)]), tmp_path)
    np.testing.assert_allclose(mean.rows_for(PATHS)[:, 1], [0.2, 0.3, 0.2, 0.75, 0.6, 0.7], rtol=0, atol=1e-15)
    record = {
        "kind": "catdog-blend", "members": [{"run": str(a)}, {"run": str(b)}], "weights": [1.5, 0.4],
        "temperature": 0.8,
    }  # fmt: skip
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "blend.json").write_text(json.dumps(record))
    for named in (str(tmp_path / "pred" / "blend.json"), str(tmp_path / "pred")):
        blended = load_teacher(_distill(named), tmp_path)
        runs = [read_teacher_runs(str(r))[1][0] for r in (a, b)]
        want = blend_probs(torch.stack([log_probs(r.probs) for r in runs]), [1.5, 0.4], 0.8).numpy()
        np.testing.assert_array_equal(blended.rows_for(PATHS), want)
        assert (blended.weights, blended.temperature) == ([1.5, 0.4], 0.8)


def test_teachers_that_cannot_teach_out_of_fold_are_refused(tmp_path):
    single = tmp_path / "single"
    single.mkdir()
    (single / "result.json").write_text("{}")
    with pytest.raises(ConfigError, match="is a single run.*ensemble.size=K"):
        read_teacher_runs(str(single))
    with pytest.raises(ConfigError, match="not a finished k-fold run folder"):
        read_teacher_runs(str(tmp_path / "nothing"))
    a = _kfold_run(tmp_path / "a", [0.5] * 6)
    other = _kfold_run(tmp_path / "b", [0.5] * 5, FOLDS[:5], PATHS[:5])
    with pytest.raises(ConfigError, match="not trained on the same images"):
        read_teacher_runs([str(a), str(other)])


def test_the_record_labels_the_students_validation_in_sample_where_the_teacher_saw_it(tmp_path):
    run = _kfold_run(tmp_path / "a", [0.1, 0.2, 0.55, 0.6, 0.7, 0.8])
    distill = _distill(str(run))
    teacher = load_teacher(distill, tmp_path)
    text = targets_text(PATHS[:4], LABELS[:4], teacher.rows_for(PATHS[:4]), teacher.classes)
    assert text.splitlines()[0] == "path,label,p_cat,p_dog" and text.splitlines()[1] == "train/cat.0.jpg,cat,0.9,0.1"
    seen = distill_record(distill, teacher, targets_digest(text), 4, teacher.seen(PATHS[4:]), 2)
    assert seen["validation_seen_by_teacher"] == 2 and "in-sample with respect to the teacher" in seen["note"]
    assert seen["targets_digest"] == targets_digest(text) != targets_digest(text.replace("0.9", "0.8"))
    unseen = distill_record(distill, teacher, "d", 4, 0, 2)
    assert "no validation image" in unseen["note"]
    assert seen["teacher_out_of_fold"]["acc"] == pytest.approx(5 / 6)  # cat.2's row is wrong (P(dog) 0.55)


def test_a_resume_with_other_teacher_targets_is_refused():
    ckpt = {RUN_SETTINGS_KEY: {DISTILL_KEY: "abc"}}
    check_same_teacher("last.ckpt", ckpt, "abc")
    check_same_teacher("last.ckpt", {RUN_SETTINGS_KEY: {}}, None)
    with pytest.raises(CheckpointError, match="digest abc, this run's have def"):
        check_same_teacher("last.ckpt", ckpt, "def")
    with pytest.raises(CheckpointError, match="digest None"):
        check_same_teacher("last.ckpt", {RUN_SETTINGS_KEY: {}}, "def")
