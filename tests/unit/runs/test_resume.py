"""catdog/runs/resume.py: the resume command, a k-fold folder's settings."""

import json

import pytest

from catdog.builders import resolve_preprocessing
from catdog.errors import ConfigError
from catdog.runs.layout import KFOLD_SETTINGS
from catdog.runs.resume import check_kfold_settings, resume_command
from tests.conftest import compose_train


def test_kfold_run_started_before_interpolation_existed_still_resumes(tmp_path):
    """A k-fold folder's kfold.json written without data.interpolation matches a bilinear run, not a bicubic one."""
    cfg = compose_train(["model.weights=null", "data.folds=3"], output_dir=tmp_path)
    resolve_preprocessing(cfg)
    check_kfold_settings(cfg, tmp_path)
    path = tmp_path / KFOLD_SETTINGS
    saved = json.loads(path.read_text())
    del saved["data"]["interpolation"]
    path.write_text(json.dumps(saved))
    check_kfold_settings(cfg, tmp_path)  # the same run: resumes
    cfg.data.interpolation = "bicubic"
    with pytest.raises(ConfigError, match=r"differs in data\.interpolation"):
        check_kfold_settings(cfg, tmp_path)


def test_resume_command_repeats_the_overrides_in_the_same_folder(tmp_path):
    cmd = resume_command(tmp_path / "a b", ["experiment=demo", "model.optimizer.lr=0.1", "hydra.run.dir=old"])
    assert cmd == f"python train.py experiment=demo model.optimizer.lr=0.1 'hydra.run.dir={tmp_path / 'a b'}'"


def test_kfold_run_started_before_pseudo_labels_csv_data_and_class_weights_still_resumes(tmp_path):
    """kfold.json without data.pseudo, data.exclude, data.csv, data.csv_columns, data.sampler and model.class_weights
    matches a run that leaves them at their defaults, and not one that sets one of them."""
    cfg = compose_train(["model.weights=null", "data.folds=3"], output_dir=tmp_path)
    resolve_preprocessing(cfg)
    check_kfold_settings(cfg, tmp_path)
    path = tmp_path / KFOLD_SETTINGS
    saved = json.loads(path.read_text())
    for key in ("pseudo", "exclude", "csv", "csv_columns", "csv_outside_dir", "sampler"):
        del saved["data"][key]
    del saved["model"]["class_weights"]
    path.write_text(json.dumps(saved))
    check_kfold_settings(cfg, tmp_path)
    cfg.data.sampler = "balanced"
    with pytest.raises(ConfigError, match=r"differs in data\.sampler"):
        check_kfold_settings(cfg, tmp_path)
