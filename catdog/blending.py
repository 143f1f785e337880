"""Out-of-fold blending of k-fold runs: ``predict.py ckpt=[RUN_A,RUN_B,...] blend=oof``.

Every k-fold run holds an honest prediction for each of its labelled images (``oof.csv``: the fold model that did not
train on it). Runs made on the same images and folds can therefore be blended with weights fitted on those rows:

    p_blend  =  softmax( sum_m a_m * log p_m ),   a_m >= 0

is fitted by minimizing the log loss (a convex problem in ``a``), and read as non-negative weights ``w = a / sum(a)``
summing to 1 and one temperature ``T = 1 / sum(a)``: ``softmax(sum_m w_m log p_m / T)``, a weighted geometric mean
of the members' probabilities, temperature-scaled. Each member's own temperature is not used (the blend's T replaces
them). The blend's out-of-fold score is cross-fitted: the rows of each fold are scored with weights and T fitted on the
other folds' rows only, the same footing as each member's ``logloss_cross_fitted`` (its temperature fitted on the
other folds).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from catdog.errors import CheckpointError, ConfigError
from catdog.metrics import log_loss
from catdog.models.calibration import T_MAX, T_MIN, cross_fitted
from catdog.runs.layout import MANIFEST_NAME, OOF_NAME, markdown_table, read_json, read_oof

log = logging.getLogger(__name__)

BLEND_MODES = ("mean", "oof")
#: log(p) of a probability of 0 (a member that is certain and wrong) is clipped here.
LOG_EPS = 1e-15


def check_blend(value) -> str:
    if value not in BLEND_MODES:
        raise ConfigError(
            f"blend must be 'mean' (average the members) or 'oof' (weights fitted on k-fold runs' out-of-fold "
            f"predictions), got {value!r}"
        )
    return value


@dataclass(frozen=True)
class OofRun:
    """One k-fold run as blending sees it: its out-of-fold rows and its member checkpoints."""

    run: Path
    paths: list[str]
    labels: list[str]
    folds: list[str]
    probs: np.ndarray
    classes: list[str]
    checkpoints: list[Path]


def read_oof_run(run: str | Path) -> OofRun:
    """A finished k-fold run folder (``manifest.json`` and ``oof.csv``), rows sorted by path."""
    run = Path(run)
    if run.is_file():
        raise CheckpointError(f"blend=oof blends k-fold run folders, not single checkpoints: {run}")
    manifest = read_json(run / MANIFEST_NAME)
    if manifest is None or not (run / OOF_NAME).is_file():
        raise CheckpointError(
            f"blend=oof blends finished k-fold runs: {run} has no {MANIFEST_NAME} and {OOF_NAME} (train with "
            "ensemble.size=K and let every fold finish)"
        )
    rows, probs, labels, classes = read_oof(run / OOF_NAME)
    order = sorted(range(len(rows)), key=lambda i: rows[i][0])
    return OofRun(
        run=run,
        paths=[rows[i][0] for i in order],
        labels=[labels[i] for i in order],
        folds=[rows[i][2] for i in order],
        probs=probs[order],
        classes=classes,
        checkpoints=[run / m["checkpoint"] for m in manifest["members"]],
    )


def _first(items, limit: int = 3) -> str:
    items = sorted(items)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(str(i) for i in items[:limit]) + more


def check_same_rows(runs: Sequence[OofRun]) -> None:
    """Refuse runs that were not made on the same images, labels, classes and folds, naming the first difference."""
    if len(runs) < 2:
        raise ConfigError(f"blend=oof needs two or more k-fold runs (ckpt=[RUN_A,RUN_B]), got {len(runs)}")
    ref = runs[0]
    for other in runs[1:]:
        pair = f"{ref.run} and {other.run}"
        if other.classes != ref.classes:
            raise ConfigError(f"blend=oof: {pair} have different classes ({ref.classes} vs {other.classes})")
        if other.paths != ref.paths:
            only_ref, only_other = set(ref.paths) - set(other.paths), set(other.paths) - set(ref.paths)
            raise ConfigError(
                f"blend=oof: {pair} were not trained on the same images: {len(only_ref)} only in the first "
                f"({_first(only_ref) or '-'}), {len(only_other)} only in the second ({_first(only_other) or '-'})"
            )
        diff = [p for p, a, b in zip(ref.paths, ref.labels, other.labels) if a != b]
        if diff:
            raise ConfigError(f"blend=oof: {pair} label {len(diff)} image(s) differently, e.g. {_first(diff)}")
        diff = [p for p, a, b in zip(ref.paths, ref.folds, other.folds) if a != b]
        if diff:
            raise ConfigError(
                f"blend=oof: {pair} put {len(diff)} image(s) in different folds (e.g. {_first(diff)}): their "
                "out-of-fold rows are not comparable. Train them with the same data.folds and data.seed (seed= "
                "alone may differ)"
            )


def log_probs(probs: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.log(np.clip(np.asarray(probs, dtype=np.float64), LOG_EPS, 1.0)))


def blend_probs(logps: torch.Tensor, weights: Sequence[float], temperature: float) -> torch.Tensor:
    """``softmax(sum_m w_m log p_m / T)`` of member log-probabilities ``logps`` (M, N, K), in double precision."""
    w = torch.as_tensor(list(weights), dtype=torch.float64).view(-1, 1, 1)
    return F.softmax((w * logps.double()).sum(0) / temperature, dim=1)


def fit_blend(logps: torch.Tensor, targets: torch.Tensor, max_iter: int = 200) -> tuple[list[float], float]:
    """Weights (non-negative, summing to 1) and temperature minimizing the log loss of :func:`blend_probs` on
    ``targets``: LBFGS on ``log a`` of the coefficients ``a = w / T`` (double precision); T is kept in the range of
    a single model's temperature (:data:`catdog.models.calibration.T_MIN` .. ``T_MAX``)."""
    z = logps.detach().clone().double()
    y = targets.detach().clone().long()
    m = z.shape[0]
    theta = torch.full((m,), -np.log(m), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([theta], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy((theta.exp().view(-1, 1, 1) * z).sum(0), y)
        loss.backward()
        return loss

    with torch.inference_mode(False), torch.enable_grad():
        opt.step(closure)
    a = theta.detach().exp()
    if not bool(torch.isfinite(a).all()) or float(a.sum()) <= 0:
        return [1.0 / m] * m, 1.0
    total = float(a.sum())
    weights = (a / total).tolist()
    return weights, min(max(1.0 / total, T_MIN), T_MAX)


def cross_fitted_blend(
    logps: torch.Tensor, targets: torch.Tensor, folds: Sequence[str]
) -> tuple[torch.Tensor, dict[str, tuple[list[float], float]]]:
    """Each fold's rows blended with weights and T fitted on the other folds' rows: (probabilities in row order,
    ``{fold: (weights, T)}``)."""
    folds = np.asarray(folds)
    probs = torch.empty(logps.shape[1:], dtype=torch.float64)
    fits = {}
    for fold in sorted(set(folds.tolist())):
        rows = torch.from_numpy(folds == fold)
        others = ~rows
        if not bool(others.any()):
            raise ConfigError("blend=oof needs runs with two or more folds")
        weights, t = fit_blend(logps[:, others], targets[others])
        probs[rows] = blend_probs(logps[:, rows], weights, t)
        fits[fold] = (weights, t)
    return probs, fits


@dataclass(frozen=True)
class Blend:
    """A fitted blend: the runs, their weights and temperature, and the record written as ``blend.json``."""

    runs: list[OofRun]
    weights: list[float]
    temperature: float
    record: dict

    def apply(self, run_probs: Sequence[np.ndarray]) -> np.ndarray:
        """The blend of each run's probabilities (one array per run, in the order of :attr:`runs`)."""
        logps = torch.stack([log_probs(p) for p in run_probs])
        return blend_probs(logps, self.weights, self.temperature).numpy()

    def table(self) -> str:
        header = ("", "images", "acc", "logloss", "logloss_cross_fitted", "weight")
        rows = [
            (m["run"], m["images"], f"{m['acc']:.4f}", f"{m['logloss']:.4f}",
             f"{m['logloss_cross_fitted']:.4f}", f"{m['weight']:.3f}")
            for m in self.record["members"]
        ]  # fmt: skip
        b = self.record["blend"]
        rows.append(
            (f"blend (T = {self.temperature:.3f})", b["images"], f"{b['acc_cross_fitted']:.4f}",
             f"{b['logloss_in_sample']:.4f} in-sample", f"{b['logloss_cross_fitted']:.4f}", "1")
        )  # fmt: skip
        return markdown_table(header, rows)


def fit_oof_blend(runs: Sequence[str | Path]) -> Blend:
    """Read the k-fold runs, check that they share their images and folds, and fit the blend on their out-of-fold
    rows; the record holds every member's and the blend's out-of-fold log loss and accuracy."""
    oof = [read_oof_run(r) for r in runs]
    check_same_rows(oof)
    ref = oof[0]
    index = {c: i for i, c in enumerate(ref.classes)}
    targets = torch.tensor([index[y] for y in ref.labels])
    logps = torch.stack([log_probs(r.probs) for r in oof])
    weights, temperature = fit_blend(logps, targets)
    in_sample = blend_probs(logps, weights, temperature)
    crossed, fits = cross_fitted_blend(logps, targets, ref.folds)
    part_of = {f: i for i, f in enumerate(sorted(set(ref.folds)))}
    parts = torch.tensor([part_of[f] for f in ref.folds])
    members = []
    for r, w, logp in zip(oof, weights, logps):
        p = torch.from_numpy(r.probs)
        member_crossed, _ = cross_fitted(logp, targets, parts)
        members.append(
            {
                "run": str(r.run), "checkpoints": [str(c) for c in r.checkpoints], "weight": w, "images": len(targets),
                "logloss": log_loss(p, targets), "acc": _acc(p, targets),
                "logloss_cross_fitted": log_loss(member_crossed, targets),
            }
        )  # fmt: skip
    record = {
        "kind": "catdog-blend",
        "classes": ref.classes,
        "folds": len(set(ref.folds)),
        "members": members,
        "weights": weights,
        "temperature": temperature,
        "blend": {
            "images": len(targets),
            "logloss_in_sample": log_loss(in_sample, targets),
            "acc_in_sample": _acc(in_sample, targets),
            "logloss_cross_fitted": log_loss(crossed, targets),
            "acc_cross_fitted": _acc(crossed, targets),
            "per_fold_fits": {f: {"weights": w, "temperature": t} for f, (w, t) in fits.items()},
        },
        "note": (
            "logloss: each member's out-of-fold rows as predicted; logloss_cross_fitted: each fold's rows scaled "
            "(member: one temperature; blend: weights and temperature) with values fitted on the other folds' rows. "
            "logloss_in_sample: the blend with the weights and temperature fitted on all rows (the ones applied)."
        ),
    }
    return Blend(oof, weights, temperature, record)


def _acc(probs: torch.Tensor, targets: torch.Tensor) -> float:
    return float((probs.argmax(1) == targets).double().mean())
