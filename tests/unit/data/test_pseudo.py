"""data.pseudo: reading a submission of test predictions and choosing the confident ones."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from catdog.data.pseudo import (
    check_pseudo,
    check_teacher,
    find_teacher,
    load_pseudo,
    pseudo_record,
)
from catdog.errors import ConfigError, DatasetError
from catdog.runs.layout import save_config_record, trained_images
from catdog.submission import read_submission, write_submission
from tests.conftest import compose_predict, make_flat

CLASSES = ["cat", "dog"]


def _submission(path, ids, p_dog):
    probs = np.stack([1 - np.asarray(p_dog), np.asarray(p_dog)], axis=1)
    return write_submission(path, ids, probs, CLASSES)


def test_read_submission_reads_back_what_predict_writes(tmp_path):
    path = _submission(tmp_path / "s.csv", ["2", "10", "1"], [0.25, 0.999, 1e-7])
    ids, probs = read_submission(path, CLASSES)
    assert ids == ["1", "2", "10"]
    np.testing.assert_allclose(probs[:, 1], [1e-7, 0.25, 0.999])
    np.testing.assert_allclose(probs.sum(axis=1), 1)
    three = write_submission(tmp_path / "m.csv", ["a"], np.array([[0.2, 0.3, 0.5]]), ["x", "y", "z"])
    assert read_submission(three, ["x", "y", "z"])[1].tolist() == [[0.2, 0.3, 0.5]]


@pytest.mark.parametrize(
    "text, message",
    [
        ("id,prob\n1,0.5\n", "header"),
        ("id,label\n1,1.5\n", "line 2"),
        ("id,label\n1,0.5\n2,x\n", "line 3"),
        ("id,label\n1,0.5\n1,0.4\n", "appear more than once"),
        ("id,label\n", "no predictions"),
    ],
)
def test_a_bad_submission_is_refused_naming_the_key_and_line(tmp_path, text, message):
    path = tmp_path / "s.csv"
    path.write_text(text)
    with pytest.raises(DatasetError, match=f"data.pseudo.labels={path}.*{message}|{message}"):
        read_submission(path, CLASSES, key="data.pseudo.labels")


def test_only_confident_predictions_are_kept_with_hard_or_soft_targets(tmp_path):
    root = make_flat(tmp_path / "data", per_class=2, test=4)
    labels = _submission(tmp_path / "sub.csv", ["1", "2", "3", "4"], [0.99, 0.5, 0.02, 0.9])
    hard = load_pseudo({"labels": str(labels), "threshold": 0.95}, root, CLASSES, [])
    assert [p.rsplit("/", 1)[1] for p in hard.paths] == ["1.jpg", "3.jpg"]
    assert hard.targets.tolist() == [[0, 1], [1, 0]] and hard.candidates == 4
    soft = load_pseudo({"labels": str(labels), "threshold": 0.9, "soft": True}, root, CLASSES, [])
    np.testing.assert_allclose(soft.targets[:, 1], [0.99, 0.02, 0.9])
    record = pseudo_record(soft, CLASSES)
    assert record["used_per_class"] == {"cat": 1, "dog": 2} and record["used"] == 3 and record["candidates"] == 4
    assert load_pseudo(None, root, CLASSES, []) is None


def test_ids_without_images_and_labelled_images_are_refused(tmp_path):
    root = make_flat(tmp_path / "data", per_class=2, test=2)
    missing = _submission(tmp_path / "a.csv", ["1", "2", "77"], [0.99, 0.99, 0.99])
    with pytest.raises(DatasetError, match=r"1 of 3 id\(s\) name no image in .*test .*77"):
        load_pseudo({"labels": str(missing)}, root, CLASSES, [])
    train = sorted(str(p) for p in (root / "train").iterdir())
    own = _submission(tmp_path / "b.csv", ["cat.0"], [0.01])
    with pytest.raises(DatasetError, match="also labelled training images"):
        load_pseudo({"labels": str(own), "images": str(root / "train")}, root, CLASSES, train)


@pytest.mark.parametrize(
    "value, message",
    [
        ({"threshold": 1.5}, "threshold must be a probability"),
        ({"soft": "yes"}, "soft must be true or false"),
        ({"label": "x.csv"}, "unknown key"),
        ({"labels": 3}, "labels must be a path"),
        ({"labels": "/nonexistent/teacher.csv"}, "labels=/nonexistent/teacher.csv: no such file"),
    ],
)
def test_check_pseudo_names_the_key(value, message):
    with pytest.raises(ConfigError, match=message):
        check_pseudo(value)


def test_test_images_byte_identical_to_labelled_ones_are_left_out(tmp_path, caplog):
    root = make_flat(tmp_path / "data", per_class=3, test=3)
    shutil.copyfile(root / "train" / "dog.1.jpg", root / "test" / "7.jpg")  # a labelled image under a test name
    labels = _submission(tmp_path / "sub.csv", ["1", "2", "3", "7"], [0.01, 0.99, 0.5, 0.99])
    labelled = sorted(str(p) for p in (root / "train").iterdir())
    with caplog.at_level(logging.INFO, logger="catdog.data.pseudo"):
        used = load_pseudo({"labels": str(labels)}, root, CLASSES, labelled)
    assert [p.rsplit("/", 1)[1] for p in used.paths] == ["1.jpg", "2.jpg"] and used.copies == 1
    assert "1 of the 3 confident prediction(s) are for images byte-identical to labelled ones" in caplog.text
    assert f"(e.g. {root / 'test' / '7.jpg'})" in caplog.text
    record = pseudo_record(used, CLASSES)
    assert record["labelled_copies"] == 1 and record["used"] == 2 and record["candidates"] == 4


def _teacher_run(run, rows, header="path,label,split", fold=None):
    """A finished run folder as the teacher check reads it: a checkpoint, ``split.csv`` and ``result.json``."""
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.ckpt").write_bytes(b"")
    (run / "split.csv").write_text("\n".join([header, *(",".join(r) for r in rows)]) + "\n")
    (run / "result.json").write_text(json.dumps({"fold": fold, "best_checkpoint": "checkpoints/best.ckpt"}))
    return run


def _predicted(folder, ckpt, p_dog, ids=("1", "2")):
    """``folder/submission.csv`` and the record predict.py keeps beside it (``.hydra/config.yaml``)."""
    save_config_record(compose_predict([f"ckpt={ckpt}"], output_dir=folder), folder)
    return _submission(folder / "submission.csv", list(ids), p_dog)


def test_the_teacher_is_read_from_the_predict_record_and_its_training_images_checked(tmp_path, caplog):
    root = make_flat(tmp_path / "data", per_class=2, test=2)
    rows = [("train/cat.0.jpg", "cat", "train"), ("train/dog.0.jpg", "dog", "train"), ("train/cat.1.jpg", "cat", "val"),
            ("test/1.jpg", "cat", "pseudo")]  # fmt: skip
    run = _teacher_run(tmp_path / "teacher", rows)
    loose = tmp_path / "loose.ckpt"
    loose.write_bytes(b"")
    labels = _predicted(tmp_path / "pred", f"[{run},{loose}]", [0.01, 0.99])
    pseudo = load_pseudo({"labels": str(labels)}, root, CLASSES, [])
    teacher = pseudo.teacher
    assert teacher.runs == [str(run.resolve())] and teacher.untraced == [str(loose.resolve())]
    assert teacher.trained == {"train/cat.0.jpg", "train/dog.0.jpg"}
    assert teacher.record == str(tmp_path / "pred" / ".hydra" / "config.yaml")
    own_split = [str(root / "train" / "cat.1.jpg"), str(root / "train" / "dog.1.jpg")]
    with caplog.at_level(logging.INFO, logger="catdog.data.pseudo"):
        clean = check_teacher(pseudo, own_split, root)
    assert clean.seen_validation == 0 and not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "1 teacher checkpoint(s) are outside a run folder" in caplog.text
    validation = [str(root / "train" / "cat.0.jpg"), str(root / "train" / "dog.1.jpg")]
    with caplog.at_level(logging.WARNING, logger="catdog.data.pseudo"):
        checked = check_teacher(pseudo, validation, root)
    assert checked.seen_validation == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    said = f"data.pseudo.labels={labels}: its teacher ({run.resolve()}) trained on 1 of this run's 2 validation images"
    assert len(warnings) == 1 and warnings[0].startswith(f"{said} (e.g. train/cat.0.jpg)")
    record = pseudo_record(checked, CLASSES)["teacher"]
    assert record == {
        "record": teacher.record, "ckpt": [str(run), str(loose)], "runs": [str(run.resolve())],
        "untraced": [str(loose.resolve())], "trained_on_validation": 1,
    }  # fmt: skip


def test_a_kfold_teacher_trained_on_every_fold_but_its_own(tmp_path):
    rows = [("a.jpg", "cat", "0"), ("b.jpg", "dog", "1"), ("c.jpg", "cat", "2")]
    fold = _teacher_run(tmp_path / "kfold" / "fold_1", rows, "path,label,fold", fold=1)
    assert trained_images(fold) == {"a.jpg", "c.jpg"}
    alone = _teacher_run(tmp_path / "alone", rows, "path,label,fold", fold=2)  # data.folds=3 data.fold=2
    assert trained_images(alone) == {"a.jpg", "b.jpg"}


def test_a_teacher_that_cannot_be_told_is_recorded_as_null(tmp_path, caplog):
    root = make_flat(tmp_path / "data", per_class=2, test=2)
    run = _teacher_run(tmp_path / "teacher", [("train/cat.0.jpg", "cat", "train")])
    cases = {
        "no record": (_submission(tmp_path / "alone.csv", ["1", "2"], [0.01, 0.99]), "no record of the predict.py"),
        "latest": (_predicted(tmp_path / "latest", "latest", [0.01, 0.99]), "names ckpt=latest"),
        "gone": (_predicted(tmp_path / "gone", tmp_path / "gone.ckpt", [0.01, 0.99]), "are not found"),
    }
    other = _predicted(tmp_path / "other", run, [0.01, 0.99])
    cases["another output"] = (other.rename(tmp_path / "other" / "copy.csv"), "no record of the predict.py")
    for labels, why in cases.values():
        assert find_teacher(labels)[0] is None and why in find_teacher(labels)[1]
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="catdog.data.pseudo"):
            pseudo = load_pseudo({"labels": str(labels)}, root, CLASSES, [])
        assert f"data.pseudo.labels={labels}: the model that made these predictions is not known" in caplog.text
        assert check_teacher(pseudo, [str(root / "train" / "cat.0.jpg")], root).seen_validation is None
        assert pseudo_record(pseudo, CLASSES)["teacher"] is None
