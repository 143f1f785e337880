"""train.py distill.teacher=RUN: a student trained on the labels and a k-fold teacher's out-of-fold probabilities."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil

import pytest

from catdog.checkpoints import read_checkpoint
from catdog.errors import CheckpointError
from catdog.runs.resume import DISTILL_KEY, RUN_SETTINGS_KEY
from catdog.training import train
from tests.conftest import tiny_train_cfg
from tests.e2e.conftest import LEARNS, train_until_interrupted


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _lying_teacher(run, folder):
    """A copy of k-fold run ``run`` whose out-of-fold rows give every image the other class, with probability 0.95."""
    shutil.copytree(run, folder)
    rows = _rows(folder / "oof.csv")
    other = {"cat": "0.05,0.95", "dog": "0.95,0.05"}  # p_cat,p_dog of the class an image is not
    lines = [f"{r['path']},{r['label']},{r['fold']},{other[r['label']]}" for r in rows]
    (folder / "oof.csv").write_text("path,label,fold,p_cat,p_dog\n" + "\n".join(lines) + "\n")
    return folder


def test_a_student_learns_what_its_teacher_says_from_the_out_of_fold_rows(kfold_pair, tmp_path):
    """alpha=1: the student learns the teacher's probabilities, not the labels; its targets are the teacher's
    out-of-fold rows of its training images, kept in its folder with their digest, and its validation figures are
    labelled in-sample with respect to the teacher."""
    run, _, data = kfold_pair
    teacher = _lying_teacher(run, tmp_path / "teacher")
    common = [*LEARNS, "data.seed=0", "report=false"]
    train(tiny_train_cfg(data, tmp_path / "plain", *common))
    train(
        tiny_train_cfg(
            data,
            tmp_path / "student",
            *common,
            f"distill.teacher={teacher}",
            "distill.alpha=1.0",
            "distill.temperature=1.0",
        )
    )
    plain = json.loads((tmp_path / "plain" / "result.json").read_text())
    student = json.loads((tmp_path / "student" / "result.json").read_text())
    # the last epoch's validation (the best checkpoint is chosen on the labels, so it is the student's least wrong)
    assert plain["metrics"]["val/acc"] >= 0.8 and student["metrics"]["val/acc"] <= 0.2

    record = student["distill"]
    kept = (tmp_path / "student" / "distill_targets.csv").read_text()
    assert record["targets_digest"] == hashlib.sha1(kept.encode()).hexdigest()
    oof = {r["path"]: r for r in _rows(teacher / "oof.csv")}
    split = _rows(tmp_path / "student" / "split.csv")
    trained = sorted(r["path"] for r in split if r["split"] == "train")
    targets = _rows(tmp_path / "student" / "distill_targets.csv")
    assert sorted(r["path"] for r in targets) == trained and record["images"] == len(trained)
    assert all(r["p_dog"] == oof[r["path"]]["p_dog"] for r in targets)  # each image's own out-of-fold row
    val = [r for r in split if r["split"] == "val"]
    assert record["validation_seen_by_teacher"] == len(val) > 0 and "in-sample" in record["note"]
    assert record["teacher"] == [str(teacher)] and record["tta"] == 0 and "oof.csv" in record["rows"]


def test_a_student_with_teacher_views_mixing_and_the_device_pipeline_resumes_only_with_its_teacher(
    kfold_pair, tmp_path
):
    run, _, data = kfold_pair
    teacher = tmp_path / "teacher"
    shutil.copytree(run, teacher)
    extra = [
        "data.seed=0", "report=false", "trainer.max_epochs=2", "data.pipeline=device",
        f"data.cache_dir={tmp_path / 'cache'}", "model.mixing={mixup_alpha: 0.4, cutmix_alpha: 0.4, prob: 1.0}",
        f"distill.teacher={teacher}", "distill.tta=1",
    ]  # fmt: skip
    train_until_interrupted(tiny_train_cfg(data, tmp_path / "student", *extra), 1, (KeyboardInterrupt, SystemExit))
    assert (teacher / "oof_tta1_zoom.csv").is_file()  # the teacher's views, kept in its folder
    last = tmp_path / "student" / "checkpoints" / "last.ckpt"
    digest = read_checkpoint(last)[RUN_SETTINGS_KEY][DISTILL_KEY]

    other = _lying_teacher(run, tmp_path / "other")
    swapped = [*extra[:-2], f"distill.teacher={other}"]
    with pytest.raises(CheckpointError, match="teacher targets with digest"):
        train(tiny_train_cfg(data, tmp_path / "student", *swapped))
    train(tiny_train_cfg(data, tmp_path / "student", *extra))  # the same teacher: its kept views, resumed
    result = json.loads((tmp_path / "student" / "result.json").read_text())
    assert result["epochs"] == 2 and result["distill"]["targets_digest"] == digest
    assert result["distill"]["tta"] == 1 and "oof_tta1_zoom.csv" in result["distill"]["rows"]
