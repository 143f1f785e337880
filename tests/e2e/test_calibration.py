"""Temperature scaling: fitted on held-out predictions only, saved with the run, applied by predict.py; probabilities
written with enough digits to read back exactly."""

import csv
import json

import numpy as np
import pytest
import torch

from catdog.checkpoints import read_checkpoint
from catdog.inference import load_classifier
from catdog.metrics import log_loss
from catdog.models.calibration import calibrated_probs, fit_temperature
from catdog.models.module import ClassifierModule
from catdog.prediction import predict
from catdog.runs.layout import read_oof
from catdog.training import train
from tests.conftest import compose_predict, make_flat, tiny_train_cfg


def test_temperature_round_trips_through_checkpoint_and_predict(tmp_path):
    data = make_flat(tmp_path / "data", per_class=10, test=4)
    run = tmp_path / "run"
    train(tiny_train_cfg(data, run, "trainer.max_epochs=2"))
    result = json.loads((run / "result.json").read_text())
    rec = result["calibration"]
    t = rec["temperature"]
    assert t != 1.0 and rec["logloss_before"] == pytest.approx(result["val/logloss"], abs=1e-12)
    assert result["val/logloss_calibrated_in_sample"] == rec["logloss_after"] <= rec["logloss_before"] + 1e-12
    # Fitted on exactly the validation predictions in oof.csv (not on training images).
    _, probs, labels, classes = read_oof(run / "oof.csv")
    y = torch.tensor([classes.index(v) for v in labels])
    logp = torch.from_numpy(np.log(probs))
    assert fit_temperature(logp, y) == pytest.approx(t, rel=1e-6)
    assert rec["images"] == len(labels)
    # The cross-fitted figure scores each of (up to) 5 parts with a temperature fitted on the others, never on itself.
    n = min(5, len(y))
    parts = torch.arange(len(y)) % n
    scaled = torch.cat(
        [calibrated_probs(logp[parts == k], fit_temperature(logp[parts != k], y[parts != k])) for k in range(n)]
    )
    order = torch.cat([torch.nonzero(parts == k).flatten() for k in range(n)])
    expected = log_loss(scaled, y[order])
    assert rec["cross_fit_parts"] == n
    assert result["val/logloss_cross_fitted"] == rec["logloss_cross_fitted"] == pytest.approx(expected, rel=1e-5)

    best = run / "checkpoints" / "best.ckpt"
    assert read_checkpoint(best)["calibration"]["temperature"] == t
    assert load_classifier(best).temperature == t
    assert ClassifierModule.load_from_checkpoint(best, map_location="cpu").temperature == t

    def submission(name, *extra):
        cfg = compose_predict(
            [f"ckpt={best}", "num_workers=0", "device=cpu", "precision=32", *extra], output_dir=tmp_path / name
        )
        predict(cfg)
        with open(tmp_path / name / "submission.csv") as f:
            return np.array([float(r[1]) for r in list(csv.reader(f))[1:]])

    calibrated, raw = submission("cal"), submission("raw", "calibrate=false")
    assert not np.allclose(calibrated, raw)
    logit = np.log(raw) - np.log1p(-raw)  # two classes: P(dog) = sigmoid(logit difference)
    np.testing.assert_allclose(calibrated, 1 / (1 + np.exp(-logit / t)), rtol=1e-5, atol=1e-7)


def test_kfold_temperatures_are_fitted_per_fold_on_its_own_validation_images(tmp_path):
    data = make_flat(tmp_path / "data", per_class=9, test=0)
    run = tmp_path / "kfold"
    train(tiny_train_cfg(data, run, "ensemble.size=3", "trainer.max_epochs=2"))
    manifest = json.loads((run / "manifest.json").read_text())
    with open(run / "scores.csv") as f:
        scores = {r["fold"]: r for r in csv.DictReader(f)}
    for member in manifest["members"]:
        fold = member["fold"]
        fold_dir = run / f"fold_{fold}"
        result = json.loads((fold_dir / "result.json").read_text())
        t = result["calibration"]["temperature"]
        assert member["temperature"] == t
        assert load_classifier(run / member["checkpoint"]).temperature == t
        # Refitting on the fold's out-of-fold predictions gives its temperature back ...
        rows, probs, labels, classes = read_oof(fold_dir / "oof.csv")
        y = torch.tensor([classes.index(v) for v in labels])
        assert fit_temperature(torch.from_numpy(np.log(probs)), y) == pytest.approx(t, rel=1e-6)
        # ... and those images are exactly the ones the fold did not train on.
        with open(fold_dir / "split.csv") as f:
            split = {r["path"]: int(r["fold"]) for r in csv.DictReader(f)}
        assert {r[0] for r in rows} == {p for p, k in split.items() if k == fold}
        # scores.csv holds the in-memory figures exactly.
        assert float(scores[str(fold)]["logloss"]) == result["val/logloss"]
        assert float(scores[str(fold)]["temperature"]) == t
    oof = scores["oof"]
    assert float(oof["logloss"]) == manifest["oof"]["logloss"]
    in_sample = float(oof["logloss_calibrated_in_sample"])
    assert in_sample == manifest["oof"]["logloss_calibrated_in_sample"]
    # The out-of-fold calibrated score: each fold's rows scaled with a temperature fitted on the other folds' rows.
    folds = [read_oof(run / f"fold_{m['fold']}" / "oof.csv") for m in manifest["members"]]
    logps = [torch.from_numpy(np.log(f[1])) for f in folds]
    ys = [torch.tensor([f[3].index(v) for v in f[2]]) for f in folds]
    scaled, targets = [], []
    for k, member in enumerate(manifest["members"]):
        t_other = fit_temperature(torch.cat(logps[:k] + logps[k + 1 :]), torch.cat(ys[:k] + ys[k + 1 :]))
        assert member["temperature_cross_fitted"] == pytest.approx(t_other, rel=1e-6)
        assert float(scores[str(member["fold"])]["temperature_cross_fitted"]) == member["temperature_cross_fitted"]
        scaled.append(calibrated_probs(logps[k], t_other))
        targets.append(ys[k])
    cross = log_loss(torch.cat(scaled), torch.cat(targets))
    assert (
        float(oof["logloss_cross_fitted"]) == manifest["oof"]["logloss_cross_fitted"] == pytest.approx(cross, rel=1e-6)
    )
    assert cross >= in_sample - 1e-9  # each fold's own temperature is the best one for its rows
    assert "logloss_cross_fitted:" in (run / "scores.md").read_text()


def test_no_calibration_when_switched_off(flat_data, tmp_path):
    run = tmp_path / "run"
    train(tiny_train_cfg(flat_data, run, "calibrate=false"))
    assert "calibration" not in json.loads((run / "result.json").read_text())
    assert load_classifier(run / "checkpoints" / "best.ckpt").temperature is None
