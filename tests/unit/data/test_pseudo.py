"""data.pseudo: reading a submission of test predictions and choosing the confident ones."""

from __future__ import annotations

import numpy as np
import pytest

from catdog.data.pseudo import check_pseudo, load_pseudo, pseudo_record
from catdog.errors import ConfigError, DatasetError
from catdog.submission import read_submission, write_submission
from tests.conftest import make_flat

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
