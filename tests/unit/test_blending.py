"""Out-of-fold blending: the fit (pure functions) and the checks on the runs blended (small run folders written
here)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from catdog.blending import (
    blend_probs,
    check_blend,
    check_same_rows,
    cross_fitted_blend,
    fit_blend,
    fit_oof_blend,
    log_probs,
    read_oof_run,
)
from catdog.errors import CheckpointError, ConfigError
from catdog.metrics import log_loss
from catdog.models.calibration import fit_temperature
from catdog.runs.layout import MANIFEST_KIND, csv_text, write_json

CLASSES = ["cat", "dog"]


def _members(n: int = 400, seed: int = 0):
    """Targets, and two members that each see a different half of the evidence (so that together they know more)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    a, b = rng.normal(0, 1, n) + (2 * y - 1), rng.normal(0, 1, n) + (2 * y - 1)

    def probs(z):
        p1 = 1 / (1 + np.exp(-z))
        return np.stack([1 - p1, p1], axis=1)

    return y, probs(a), probs(b)


def _separable_members(n: int = 400, seed: int = 0):
    """Targets, and two members that get every row right, each of them surer on another half of the rows."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    first = np.arange(n) < n // 2
    a = np.where(first, rng.uniform(2, 4, n), rng.uniform(0.1, 0.5, n)) * (2 * y - 1)
    b = np.where(first, rng.uniform(0.1, 0.3, n), rng.uniform(1, 3, n)) * (2 * y - 1)
    p_a, p_b = 1 / (1 + np.exp(-a)), 1 / (1 + np.exp(-b))
    return y, np.stack([1 - p_a, p_a], axis=1), np.stack([1 - p_b, p_b], axis=1)


def _beta_gap(logp: torch.Tensor, targets: torch.Tensor, t: float) -> float:
    """How far ``1 / t`` can be from the ``1 / T`` minimizing the log loss L of ``softmax(logp / T)``: L is convex in
    ``beta = 1 / T`` (L'' is the mean over rows of the variance of ``logp`` under the predicted probabilities), so a
    point with slope L' lies within |L'| / L'' of the minimizer; twice that allows L'' to fall by half over so short a
    step."""
    beta = torch.tensor(1.0 / t, dtype=torch.float64, requires_grad=True)
    (slope,) = torch.autograd.grad(F.cross_entropy(beta * logp, targets), beta, create_graph=True)
    (curvature,) = torch.autograd.grad(slope, beta)
    return 2 * abs(float(slope.detach())) / float(curvature)


def write_run(folder, probs, labels, folds, paths=None, classes=CLASSES):
    """A finished k-fold run folder as blending reads it: oof.csv and manifest.json."""
    folder.mkdir(parents=True)
    paths = paths or [f"train/{classes[y]}.{i}.jpg" for i, y in enumerate(labels)]
    rows = [(p, classes[y], f, *map(repr, row)) for p, y, f, row in zip(paths, labels, folds, probs.tolist())]
    (folder / "oof.csv").write_text(csv_text(("path", "label", "fold", *(f"p_{c}" for c in classes)), rows))
    members = [{"checkpoint": f"fold_{f}/checkpoints/best.ckpt", "fold": f} for f in sorted(set(folds))]
    write_json(folder / "manifest.json", {"kind": MANIFEST_KIND, "classes": classes, "members": members})
    return folder


def test_fit_blend_puts_the_weight_on_the_member_that_knows_something():
    y, good, _ = _members()
    noise = np.random.default_rng(1).uniform(0.05, 0.95, len(y))
    useless = np.stack([1 - noise, noise], axis=1)
    fit = fit_blend(torch.stack([log_probs(good), log_probs(useless)]), torch.from_numpy(y))
    weights = fit.weights
    assert weights[0] > 0.9 and min(weights) >= 0 and sum(weights) == pytest.approx(1)
    assert 0.05 <= fit.temperature <= 20
    assert fit.uninformative == [False, False]  # noise is not uniform: it is fitted, and found nearly useless


def test_a_member_with_the_same_probability_for_every_class_gets_weight_0_and_the_other_its_own_temperature(
    tmp_path, caplog
):
    y, good, _ = _members()
    uniform = np.full_like(good, 0.5)
    folds = [i % 2 for i in range(len(y))]
    runs = [write_run(tmp_path / "good", good, y, folds), write_run(tmp_path / "uniform", uniform, y, folds)]
    with caplog.at_level(logging.WARNING, logger="catdog.blending"):
        blend = fit_oof_blend(runs)
    # softmax ignores a row's constant: the uniform member adds nothing whatever its coefficient, so it gets none
    assert blend.weights == [1.0, 0.0]
    # and the blend is the good member with the temperature calibration fits it alone; each fit stops near the
    # minimizer (LBFGS: a gradient under its tolerance, or a loss that no longer changes), and 1/T is rounded
    targets = torch.from_numpy(y)
    logp = log_probs(good)
    t = fit_temperature(logp, targets)
    tol = _beta_gap(logp, targets, blend.temperature) + _beta_gap(logp, targets, t) + 4 * np.finfo(float).eps / t
    assert abs(1 / blend.temperature - 1 / t) <= tol, (blend.temperature, t, tol)
    # said in the record, the table and the log
    assert [m["uninformative"] for m in blend.record["members"]] == [False, True]
    assert all(f["weights"] == [1.0, 0.0] for f in blend.record["blend"]["per_fold_fits"].values())
    assert "| 0.000 (uninformative) |" in blend.table()
    assert f"{runs[1]} gives every class the same probability" in caplog.text
    fit = fit_blend(torch.stack([logp, log_probs(uniform)]), targets)
    assert fit.weights == [1.0, 0.0] and fit.uninformative == [False, True] and not fit.separated


def test_rows_the_blend_gets_all_right_keep_t_1_and_the_weights_best_at_t_1(tmp_path, caplog):
    y, a, b = _separable_members()
    folds = [i % 2 for i in range(len(y))]
    runs = [write_run(tmp_path / "A", a, y, folds), write_run(tmp_path / "B", b, y, folds)]
    with caplog.at_level(logging.WARNING, logger="catdog.blending"):
        blend = fit_oof_blend(runs)
    # as calibration's fit_temperature on rows without a mistake: the log loss would fall without limit as T -> 0,
    # and neither member makes one
    assert blend.temperature == 1.0
    targets = torch.from_numpy(y)
    logps = torch.stack([log_probs(a), log_probs(b)])

    def loss(w):
        return log_loss(blend_probs(logps, [w, 1 - w], 1.0), targets)

    # the weights minimize the log loss at T = 1 (to LBFGS's tolerance on the change of the loss, 1e-9); both count
    assert loss(blend.weights[0]) <= min(loss(w) for w in np.linspace(0, 1, 101)) + 1e-9
    assert 0.1 < blend.weights[0] < 0.9 and sum(blend.weights) == pytest.approx(1)
    # said in the record, the table and the log
    assert blend.record["separated"] is True
    assert all(f["separated"] and f["temperature"] == 1.0 for f in blend.record["blend"]["per_fold_fits"].values())
    assert "blend (T = 1.000, the members' own: no row wrong)" in blend.table()
    assert "no out-of-fold row is wrong with the fitted weights" in caplog.text and "T not fitted" in caplog.text
    fit = fit_blend(logps, targets)
    assert fit.separated and fit.temperature == 1.0


def test_blending_two_complementary_members_beats_either_with_its_own_temperature():
    y, a, b = _members()
    targets = torch.from_numpy(y)
    logps = torch.stack([log_probs(a), log_probs(b)])
    fit = fit_blend(logps, targets)
    weights = fit.weights
    blended = log_loss(blend_probs(logps, weights, fit.temperature), targets)
    alone = [log_loss(blend_probs(logps[i : i + 1], [1.0], fit_blend(logps[i : i + 1], targets).temperature), targets)
             for i in range(2)]  # fmt: skip
    assert blended < min(alone) - 0.05
    assert weights == pytest.approx([0.5, 0.5], abs=0.1)


def test_cross_fitted_blend_scores_each_fold_with_a_fit_from_the_other_folds():
    y, a, b = _members(300)
    folds = [str(i % 3) for i in range(len(y))]
    logps, targets = torch.stack([log_probs(a), log_probs(b)]), torch.from_numpy(y)
    probs, fits = cross_fitted_blend(logps, targets, folds)
    assert set(fits) == {"0", "1", "2"}
    rows = np.array(folds) == "1"
    others = torch.from_numpy(~rows)
    fit = fit_blend(logps[:, others], targets[others])
    assert fits["1"] == fit
    expected = blend_probs(logps[:, rows], fit.weights, fit.temperature)
    assert torch.allclose(probs[torch.from_numpy(rows)], expected)


def test_fit_oof_blend_records_members_and_the_cross_fitted_blend(tmp_path):
    y, a, b = _members(400)
    folds = [i % 2 for i in range(len(y))]
    runs = [write_run(tmp_path / "A", a, y, folds), write_run(tmp_path / "B", b, y, folds)]
    blend = fit_oof_blend(runs)
    record = blend.record
    assert [m["run"] for m in record["members"]] == [str(r) for r in runs]
    assert record["weights"] == blend.weights and sum(blend.weights) == pytest.approx(1)
    best = min(m["logloss_cross_fitted"] for m in record["members"])
    assert record["blend"]["logloss_cross_fitted"] < best
    assert record["blend"]["logloss_in_sample"] <= record["blend"]["logloss_cross_fitted"] + 0.02
    assert len(blend.runs[0].checkpoints) == 2
    # apply() is the fitted formula on new predictions
    np.testing.assert_allclose(
        blend.apply([a[:5], b[:5]]),
        blend_probs(torch.stack([log_probs(a[:5]), log_probs(b[:5])]), blend.weights, blend.temperature).numpy(),
    )
    assert "blend (T = " in blend.table()
    assert record["separated"] is False and not any(m["uninformative"] for m in record["members"])
    assert "the one fold model that did not train on it" in record["fitted_on"] and "tta=0" in record["fitted_on"]


def test_runs_on_other_images_folds_labels_or_classes_are_refused_naming_the_difference(tmp_path):
    y, a, b = _members(20)
    folds = [i % 2 for i in range(20)]
    names = [f"train/{CLASSES[v]}.{i}.jpg" for i, v in enumerate(y)]
    ref = read_oof_run(write_run(tmp_path / "A", a, y, folds, paths=names))
    other_folds = read_oof_run(write_run(tmp_path / "B", b, y, [1 - f for f in folds]))
    with pytest.raises(ConfigError, match=r"20 image\(s\) in different folds .*data\.seed"):
        check_same_rows([ref, other_folds])
    paths = [f"train/x.{i}.jpg" for i in range(20)]
    other_images = read_oof_run(write_run(tmp_path / "C", b, y, folds, paths=paths))
    with pytest.raises(ConfigError, match="not trained on the same images: 20 only in the first"):
        check_same_rows([ref, other_images])
    flipped = y.copy()
    flipped[3] = 1 - flipped[3]
    relabelled = read_oof_run(write_run(tmp_path / "D", b, flipped, folds, paths=names))
    with pytest.raises(ConfigError, match=r"label 1 image\(s\) differently"):
        check_same_rows([ref, relabelled])
    with pytest.raises(ConfigError, match="two or more k-fold runs"):
        check_same_rows([ref])


def test_only_finished_kfold_run_folders_can_be_blended(tmp_path):
    ckpt = tmp_path / "best.ckpt"
    ckpt.write_bytes(b"")
    with pytest.raises(CheckpointError, match="not single checkpoints"):
        read_oof_run(ckpt)
    (tmp_path / "run").mkdir()
    with pytest.raises(CheckpointError, match="has no manifest.json and oof.csv"):
        read_oof_run(tmp_path / "run")
    with pytest.raises(ConfigError, match="blend must be 'mean'"):
        check_blend("average")
