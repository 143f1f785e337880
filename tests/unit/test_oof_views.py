"""catdog/oof_views.py: out-of-fold rows predicted again with TTA, each by its own fold's model, kept and reused."""

from __future__ import annotations

import json

import numpy as np
import pytest

import catdog.oof_views as oof_views
from catdog.blending import OofRun
from catdog.oof_views import oof_with_views, views_name


def _run(tmp_path) -> OofRun:
    run = tmp_path / "run"
    checkpoints = []
    for fold in (0, 1):
        path = run / f"fold_{fold}" / "checkpoints" / "best.ckpt"
        path.parent.mkdir(parents=True)
        path.write_bytes(f"weights of fold {fold}".encode())
        checkpoints.append(path)
    paths = ["train/cat.0.jpg", "train/cat.1.jpg", "train/dog.0.jpg", "train/dog.1.jpg"]
    return OofRun(
        run=run, paths=paths, labels=["cat", "cat", "dog", "dog"], folds=["0", "1", "1", "0"],
        probs=np.full((4, 2), 0.5), classes=["cat", "dog"], checkpoints=checkpoints, member_folds=[0, 1],
    )  # fmt: skip


@pytest.fixture
def predictions(monkeypatch):
    """predict(model, paths): P(dog) 0.1 from fold 0's model, 0.8 from fold 1's; the calls made."""
    calls = []
    monkeypatch.setattr(oof_views, "load_classifier", lambda path: path.parent.parent.name)

    def predict(model, paths):
        calls.append((model, paths))
        p = 0.1 if model == "fold_0" else 0.8
        return np.array([[1 - p, p]] * len(paths))

    return predict, calls


def test_each_row_is_predicted_by_its_own_folds_model_and_kept(tmp_path, predictions):
    predict, calls = predictions
    run = _run(tmp_path)
    root = tmp_path / "data"
    viewed = oof_with_views(run, root, 5, "zoom", {"precision": "None"}, predict)
    assert calls == [
        ("fold_0", [str(root / "train/cat.0.jpg"), str(root / "train/dog.1.jpg")]),
        ("fold_1", [str(root / "train/cat.1.jpg"), str(root / "train/dog.0.jpg")]),
    ]
    assert viewed.probs[:, 1].tolist() == [0.1, 0.8, 0.8, 0.1] and (viewed.tta, viewed.views) == (5, "zoom")
    assert "oof_tta5_zoom.csv" in viewed.fitted_on() and "with tta=5 (zoom views)" in viewed.fitted_on()
    kept = run.run / views_name(5, "zoom")
    assert kept.read_text().splitlines()[1] == "train/cat.0.jpg,cat,0,0.9,0.1"
    assert json.loads(kept.with_suffix(".json").read_text())["tta"] == 5
    calls.clear()
    again = oof_with_views(run, root, 5, "zoom", {"precision": "None"}, predict)
    assert calls == [] and np.array_equal(again.probs, viewed.probs)


def test_the_kept_rows_are_made_again_when_what_made_them_changed(tmp_path, predictions):
    predict, calls = predictions
    run = _run(tmp_path)
    oof_with_views(run, tmp_path, 5, "zoom", {"precision": "None"}, predict)
    for change in (
        lambda: oof_with_views(run, tmp_path, 5, "zoom", {"precision": "torch.bfloat16"}, predict),
        lambda: oof_with_views(run, tmp_path, 5, "crops", {"precision": "None"}, predict),
        lambda: (run.checkpoints[1].write_bytes(b"retrained"), oof_with_views(run, tmp_path, 5, "zoom", {}, predict)),
    ):
        calls.clear()
        change()
        assert len(calls) == 2


def test_without_tta_the_rows_are_the_runs_own(tmp_path, predictions):
    predict, calls = predictions
    run = _run(tmp_path)
    assert oof_with_views(run, tmp_path, 0, "zoom", {}, predict) is run and calls == []
