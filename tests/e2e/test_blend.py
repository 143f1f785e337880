"""predict.py blend=oof: k-fold runs blended with weights and a temperature fitted on their out-of-fold rows."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from catdog.blending import cross_fitted_blend, log_probs, read_oof_run
from catdog.errors import CheckpointError
from catdog.models.calibration import cross_fitted
from catdog.prediction import predict
from catdog.submission import read_submission
from tests.conftest import compose_predict, run_script

CLASSES = ["cat", "dog"]
PREDICT = ["num_workers=0", "device=cpu", "batch_size=8"]


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
    # the submission is the fitted blend of each run's own (uncalibrated) fold ensemble
    runs = [_predict(tmp_path, name, f"ckpt={run}", "calibrate=false") for name, run in (("a", a), ("b", b))]
    p = [read_submission(r, CLASSES)[1] for r in runs]
    logits = sum(w * np.log(np.clip(q, 1e-15, 1)) for w, q in zip(weights, p)) / t
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    ids, blended = read_submission(out, CLASSES)
    np.testing.assert_allclose(blended, expected, atol=2e-8)


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
    assert diff.mean() <= noise, (diff.mean(), noise)


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
