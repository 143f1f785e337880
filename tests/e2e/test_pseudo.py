"""data.pseudo in single and k-fold runs: confident test predictions train, never validate."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from catdog.errors import ConfigError
from catdog.submission import write_submission
from catdog.training import train
from tests.conftest import make_flat, tiny_train_cfg


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
