"""data.pseudo in single and k-fold runs: confident test predictions train, never validate."""

from __future__ import annotations

import csv
import json
import logging
import shutil

import numpy as np
import pytest

from catdog.errors import ConfigError
from catdog.submission import write_submission
from catdog.training import train
from tests.conftest import make_class_folders, make_flat, make_image, run_script, tiny_train_cfg


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def with_teacher(tmp_path):
    data = make_flat(tmp_path / "data", per_class=6, test=6)
    p_dog = np.array([0.99, 0.02, 0.7, 0.97, 0.5, 0.01])
    teacher = write_submission(
        tmp_path / "teacher.csv", [str(i + 1) for i in range(6)], np.stack([1 - p_dog, p_dog], 1), ["cat", "dog"]
    )
    return data, teacher


@pytest.mark.parametrize("soft", [False, True])
def test_single_run_trains_on_pseudo_labels_and_records_them(with_teacher, tmp_path, soft):
    data, teacher = with_teacher
    run = tmp_path / "run"
    args = [f"data.pseudo.labels={teacher}", "data.pseudo.threshold=0.95", f"data.pseudo.soft={str(soft).lower()}"]
    train(tiny_train_cfg(data, run, *args))
    result = json.loads((run / "result.json").read_text())
    assert result["pseudo"]["used_per_class"] == {"cat": 2, "dog": 2} and result["pseudo"]["candidates"] == 6
    assert result["pseudo"]["soft"] is soft
    assert result["pseudo"]["teacher"] is None  # teacher.csv has no predict.py record beside it
    used = _rows(run / "pseudo.csv")
    assert sorted(r["path"] for r in used) == ["test/1.jpg", "test/2.jpg", "test/4.jpg", "test/6.jpg"]
    assert float(next(r for r in used if r["path"] == "test/1.jpg")["target_dog"]) == (0.99 if soft else 1.0)
    split = _rows(run / "split.csv")
    assert {r["path"] for r in split if r["split"] == "pseudo"} == {r["path"] for r in used}
    assert not [r for r in _rows(run / "oof.csv") if r["path"].startswith("test/")]
    assert result["train_images"] == 4 + len([r for r in split if r["split"] == "train"])


def test_kfold_folds_get_the_pseudo_labels_for_training_only(with_teacher, tmp_path):
    data, teacher = with_teacher
    train(tiny_train_cfg(data, tmp_path / "plain", "ensemble.size=2"))
    train(tiny_train_cfg(data, tmp_path / "run", "ensemble.size=2", f"data.pseudo.labels={teacher}"))
    for fold in ("fold_0", "fold_1"):  # the folds' split.csv list the labelled images only, in the same folds
        assert (tmp_path / "run" / fold / "split.csv").read_text() == (
            tmp_path / "plain" / fold / "split.csv"
        ).read_text()
    oof = _rows(tmp_path / "run" / "oof.csv")
    assert [r["path"] for r in oof] == [r["path"] for r in _rows(tmp_path / "plain" / "oof.csv")]
    for fold in (0, 1):
        result = json.loads((tmp_path / "run" / f"fold_{fold}" / "result.json").read_text())
        assert result["pseudo"]["used"] == 4


def test_soft_pseudo_labels_with_mixing_are_refused(with_teacher, tmp_path):
    data, teacher = with_teacher
    cfg = tiny_train_cfg(data, tmp_path / "run", f"data.pseudo.labels={teacher}", "data.pseudo.soft=true",
                         "model.mixing.mixup_alpha=0.2")  # fmt: skip
    with pytest.raises(ConfigError, match="data.pseudo.soft=true cannot be combined with model.mixing"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_test_image_byte_identical_to_a_validation_image_is_not_pseudo_labelled(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=4)
    for i in range(4):
        make_image(data / "test" / f"{i + 1}.png", i % 2, seed=900 + i)
    shutil.copyfile(data / "validation" / "dog" / "v0.png", data / "test" / "5.png")
    p_dog = np.array([0.01, 0.99, 0.02, 0.98, 0.99])
    teacher = write_submission(
        tmp_path / "teacher.csv", [str(i + 1) for i in range(5)], np.stack([1 - p_dog, p_dog], 1), ["cat", "dog"]
    )
    run = tmp_path / "run"
    train(tiny_train_cfg(data, run, f"data.pseudo.labels={teacher}"))
    used = [r["path"] for r in _rows(run / "pseudo.csv")]
    assert used == [f"test/{i}.png" for i in range(1, 5)]
    assert [r["path"] for r in _rows(run / "split.csv") if r["split"] == "pseudo"] == used
    result = json.loads((run / "result.json").read_text())
    assert result["pseudo"]["labelled_copies"] == 1 and result["pseudo"]["used"] == 4
    assert result["train_images"] == 8 + 4


def test_the_teacher_run_is_recorded_and_a_warning_says_it_trained_on_validation_images(tmp_path, caplog):
    data = make_flat(tmp_path / "data", per_class=6, test=4)
    train(tiny_train_cfg(data, tmp_path / "teacher", "data.seed=1"))
    predicted = run_script(
        "predict.py", [f"ckpt={tmp_path / 'teacher'}", f"hydra.run.dir={tmp_path / 'pred'}", "num_workers=0",
                       "device=cpu"], tmp_path,
    )  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr
    labels = tmp_path / "pred" / "submission.csv"
    student = tmp_path / "student"
    with caplog.at_level(logging.WARNING, logger="catdog.data.pseudo"):
        train(tiny_train_cfg(data, student, "data.seed=2", f"data.pseudo.labels={labels}", "data.pseudo.threshold=0.5"))
    taught = {r["path"] for r in _rows(tmp_path / "teacher" / "split.csv") if r["split"] == "train"}
    seen = sorted(r["path"] for r in _rows(student / "split.csv") if r["split"] == "val" and r["path"] in taught)
    assert seen  # data.seed=1 and data.seed=2 make other splits
    teacher = json.loads((student / "result.json").read_text())["pseudo"]["teacher"]
    assert teacher["runs"] == [str((tmp_path / "teacher").resolve())] and teacher["ckpt"] == str(tmp_path / "teacher")
    assert teacher["record"] == str(tmp_path / "pred" / ".hydra" / "config.yaml")
    assert teacher["trained_on_validation"] == len(seen) and teacher["untraced"] == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "its teacher" in r.message]
    assert len(warnings) == 1 and f"trained on {len(seen)} of this run's 2 validation images" in warnings[0]
