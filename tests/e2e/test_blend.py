"""predict.py blend=oof: k-fold runs blended with weights and a temperature fitted on their out-of-fold rows."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from catdog.blending import LOG_EPS, cross_fitted_blend, fit_oof_blend, log_probs, read_oof_run
from catdog.errors import CheckpointError
from catdog.models.calibration import cross_fitted
from catdog.prediction import predict
from catdog.submission import PROB_FORMAT, read_submission
from tests.conftest import compose_predict, run_script

CLASSES = ["cat", "dog"]
PREDICT = ["num_workers=0", "device=cpu", "batch_size=8"]
#: Significant digits of a probability in a submission (only P(dog) is written for two classes).
DIGITS = int(PROB_FORMAT.strip(".g"))
#: A float32 softmax row sums to 1 within 3 roundings (of the sum of the exponentials, of its reciprocal and of each
#: product; the exponentials' own errors cancel in the normalization), whether the model ran in fp32 or under bf16
#: autocast (the logits are cast to float32 first); with tta=0 no view average adds any, and the mean of the fold
#: models is taken in float64. So the P(cat) a blend used can differ from 1 - P(dog) by this much.
ROW_SUM = 3 * 2.0**-24


def _half_unit(x: np.ndarray) -> np.ndarray:
    """Half a unit in the last written digit of each value: how far it can be from the value computed."""
    exponent = np.floor(np.log10(np.where(x > 0, x, 1.0)))
    return 0.5 * 10.0 ** (exponent - (DIGITS - 1))


def _blended_dog(p_cat, p_dog, weights, t):
    """P(dog) of ``softmax(sum_m w_m log p_m / T)``, which grows with every member's P(dog) and falls with every
    member's P(cat) (w >= 0, T > 0)."""
    log_odds = sum(w * (np.log(np.clip(d, LOG_EPS, 1)) - np.log(np.clip(c, LOG_EPS, 1)))
                   for w, c, d in zip(weights, p_cat, p_dog)) / t  # fmt: skip
    return 0.5 * (1 + np.tanh(log_odds / 2))


def _predict(tmp_path, name, *args):
    out = tmp_path / name / "submission.csv"
    predict(compose_predict([*PREDICT, f"output={out}", *args], output_dir=tmp_path / name))
    return out


def test_blend_writes_the_submission_with_the_weights_fitted_out_of_fold(kfold_pair, tmp_path):
    a, b, _ = kfold_pair
    out = _predict(tmp_path, "blend", f"ckpt=[{a},{b}]", "blend=oof")
    record = json.loads((out.parent / "blend.json").read_text())
    weights, t = record["weights"], record["temperature"]
    assert min(weights) >= 0 and sum(weights) == pytest.approx(1) and t > 0
    assert [m["run"] for m in record["members"]] == [str(a), str(b)]
    assert {"logloss", "acc", "logloss_cross_fitted", "weight"} <= set(record["members"][0])
    assert record["predictions"] == str(out)
    # the submission is the fitted blend of each run's own (uncalibrated) fold ensemble, recomputed from the runs'
    # submissions: what those hold is each run's P(dog) rounded to DIGITS digits, and 1 - P(dog) for the P(cat) the
    # blend used (ROW_SUM). The blend rises with P(dog) and falls with P(cat), so the written inputs' extremes bound
    # it; the blend's own P(dog) is then rounded to DIGITS digits, and both sides are evaluated in float64 (rounding
    # of log-odds up to 2 * 34.5 / T in size, times the slope of P(dog), at most 1/4).
    runs = [_predict(tmp_path, name, f"ckpt={run}", "calibrate=false") for name, run in (("a", a), ("b", b))]
    ids, blended = read_submission(out, CLASSES)
    dog = []
    for run in runs:
        run_ids, p = read_submission(run, CLASSES)
        assert run_ids == ids
        dog.append(p[:, 1])
    dog = np.stack(dog)
    half = _half_unit(dog)
    low = _blended_dog(1 - dog + half + ROW_SUM, dog - half, weights, t)
    high = _blended_dog(1 - dog - half - ROW_SUM, dog + half, weights, t)
    slack = _half_unit(blended[:, 1]) + 0.25 * 8 * np.finfo(np.float64).eps * 2 * -np.log(LOG_EPS) / t
    assert np.all(low - slack <= blended[:, 1]) and np.all(blended[:, 1] <= high + slack), (low, blended, high)


def test_with_tta_the_blend_is_fitted_on_out_of_fold_rows_with_the_same_views(kfold_pair, tmp_path, caplog):
    """tta=1: each run's out-of-fold rows are predicted again with one zoom view, each image by the fold model that
    did not train on it (the same numbers predict.py gives that model on its fold's split.csv), kept in the run folder
    and reused; blend.json says what the blend was fitted on and applied to."""
    a, b, _ = kfold_pair
    for run in (a, b):
        for kept in ("oof_tta1_zoom.csv", "oof_tta1_zoom.json"):
            (run / kept).unlink(missing_ok=True)
    with caplog.at_level(logging.INFO):
        out = _predict(tmp_path, "tta", f"ckpt=[{a},{b}]", "blend=oof", "tta=1", "ensemble=logit")
    record = json.loads((out.parent / "blend.json").read_text())
    assert record["fitted_on"] == (
        "out-of-fold rows (oof_tta1_zoom.csv): each image predicted once, by the one fold model that did not train on "
        "it, with tta=1 (zoom views)"
    )
    assert record["applied_to"] == (
        "each run's 2 fold models combined by ensemble=logit (renormalized mean of their log-probabilities), each "
        "model with the plain pass and 1 augmented view(s) (tta=1, tta_views=zoom)"
    )
    assert record["tta"] == 1
    assert not [r for r in caplog.records if r.levelno == logging.WARNING and "blend=oof" in r.getMessage()]
    plain, viewed = read_oof_run(a), read_oof_run(a)
    rows = {r.split(",")[0]: r.split(",") for r in (a / "oof_tta1_zoom.csv").read_text().splitlines()[1:]}
    assert sorted(rows) == plain.paths and [rows[p][2] for p in plain.paths] == plain.folds
    p_dog = np.array([float(rows[p][4]) for p in plain.paths])
    assert not np.allclose(p_dog, plain.probs[:, 1], atol=1e-4)  # the views changed them
    # fold 0's rows are what predict.py gives fold 0's model on the images of its fold
    scored = _predict(
        tmp_path,
        "fold0",
        f"ckpt={a / 'fold_0' / 'checkpoints' / 'best.ckpt'}",
        f"input={a / 'fold_0' / 'split.csv'}",
        "labelled=true",
        "tta=1",
        "calibrate=false",
    ).with_name("predictions.csv")
    scored_rows = {r.split(",")[0]: float(r.split(",")[1]) for r in scored.read_text().splitlines()[1:]}
    fold0 = {Path(p).stem: p for p, f in zip(viewed.paths, viewed.folds) if f == "0"}  # its ids: the file stems
    assert sorted(scored_rows) == sorted(fold0)
    ours = np.array([float(rows[fold0[i]][4]) for i in sorted(fold0)])
    theirs = np.array([scored_rows[i] for i in sorted(fold0)])
    assert np.all(np.abs(ours - theirs) <= _half_unit(theirs) + ROW_SUM)  # predictions.csv's 9 digits
    caplog.clear()
    with caplog.at_level(logging.INFO):
        again = _predict(tmp_path, "again", f"ckpt=[{a},{b}]", "blend=oof", "tta=1", "ensemble=logit")
    assert "kept from an earlier prediction" in caplog.text
    assert json.loads((again.parent / "blend.json").read_text())["weights"] == record["weights"]


def test_a_blend_applied_with_other_views_than_its_rows_warns(kfold_pair, caplog):
    run = read_oof_run(kfold_pair[0])
    blend = fit_oof_blend([run, read_oof_run(kfold_pair[1])])
    with caplog.at_level(logging.WARNING, logger="catdog.blending"):
        blend.announce("prob", 2, "zoom")
    assert "fitted on out-of-fold predictions with tta=0 and are applied with tta=2" in caplog.text


def test_blend_is_no_worse_out_of_fold_than_the_best_member_beyond_noise(kfold_pair):
    runs = [read_oof_run(r) for r in kfold_pair[:2]]
    targets = torch.tensor([CLASSES.index(y) for y in runs[0].labels])
    folds = runs[0].folds
    logps = torch.stack([log_probs(r.probs) for r in runs])
    blend, _ = cross_fitted_blend(logps, targets, folds)
    parts = torch.tensor([int(f) for f in folds])
    members = [cross_fitted(logp, targets, parts)[0] for logp in logps]

    def per_image(p):
        return -torch.log(p[torch.arange(len(targets)), targets].clamp(1e-15, 1)).numpy()

    best = min(members, key=lambda p: per_image(p).mean())
    diff = per_image(blend) - per_image(best)
    noise = 2 * diff.std(ddof=1) / np.sqrt(len(diff))
    # Besides the images' noise, the fits': k coefficients fitted by maximum likelihood on n rows score about k / 2n
    # nats per row worse out of sample than the best of their kind (half AIC's correction). The blend fits one
    # coefficient per run, a run's calibration one temperature, each on the other folds' rows.
    fitted_on = min(len(folds) - folds.count(f) for f in set(folds))
    fitting = (len(runs) - 1) / (2 * fitted_on)
    assert diff.mean() <= noise + fitting, (diff.mean(), noise, fitting)


def test_runs_on_other_folds_are_refused_in_one_line(kfold_pair, tmp_path):
    a, b, _ = kfold_pair
    moved = tmp_path / "moved"
    shutil.copytree(b, moved)
    lines = (moved / "oof.csv").read_text().splitlines()
    path, label, fold, *rest = lines[1].split(",")
    lines[1] = ",".join([path, label, str(1 - int(fold)), *rest])
    (moved / "oof.csv").write_text("\n".join(lines) + "\n")
    out = run_script("predict.py", [f"ckpt=[{a},{moved}]", "blend=oof", *PREDICT], tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode == 2 and "Traceback" not in text  # a configuration error
    assert f"put 1 image(s) in different folds (e.g. {path})" in text
    assert not list(tmp_path.glob("outputs/**/submission.csv"))


def test_blend_needs_kfold_run_folders(kfold_pair, tmp_path):
    a, _, _ = kfold_pair
    with pytest.raises(CheckpointError, match="not single checkpoints"):
        _predict(tmp_path, "one", f"ckpt=[{a},{a / 'fold_0' / 'checkpoints' / 'best.ckpt'}]", "blend=oof")
