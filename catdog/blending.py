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

What the weights mean. softmax ignores a constant added to a row, so only each member's centred log-probabilities
``log p_m - mean_k log p_m`` (its log-odds between the classes) count, and the fit is made on those. A weight is a
coefficient on log-odds, not a share of the vote: a sharper member (larger log-odds) needs a smaller weight for the
same say. A member whose centred log-probabilities are zero on every row (the same probability for every class)
changes nothing whatever its coefficient: it is left out of the fit and reported with weight 0, ``uninformative``.
When members' log-odds are (nearly) proportional to each other, as two runs of one recipe come close to, the rows
pin down only the sum of their coefficients, and the split is where the optimizer stopped, starting from equal
coefficients: such weights say "use both", not which member is better.

Separated rows. When the fitted blend gets every row right, the log loss keeps falling as T -> 0: the rows say
nothing about unseen images except "sharpen without limit". The blend then fits no scale of its own: each member is
scaled by the temperature :func:`catdog.models.calibration.fit_temperature` gives it on the same rows (which keeps
T = 1 for a member without a mistake there, the same test, :func:`catdog.models.calibration.errors`), and only the
weights of the members so scaled are fitted. Members without a mistake thus give T = 1; a member with some keeps
the sharpening its own mistakes allow, and as each member alone, so scaled, is one of the blends the fit weighs, the
fitted blend does no worse on the rows than the best of them. The record says ``separated``.

What is fitted and what is applied. The rows that fit the weights and T are out-of-fold: each image predicted once,
by the one fold model that did not train on it, with the prediction's TTA (``oof.csv``'s plain pass at ``tta=0``;
made again with the views by :mod:`catdog.oof_views` otherwise, and kept in the run folder). ``predict.py`` applies
them to each run's K fold models combined (``ensemble=prob``: the mean of their probabilities; ``logit``: the
renormalized mean of their log-probabilities). No out-of-fold row of a K-model average exists (every labelled image
trained K - 1 of the K models), and the average is a little less sure of itself than one model: on the shared
images the held-out T of two 2-fold runs' blend was 0.88x the fitted one at ``tta=0``, worth 0.002 nats
(``docs/results.md``). ``blend.json`` says both (``fitted_on``, ``applied_to``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from catdog.errors import CheckpointError, ConfigError
from catdog.metrics import log_loss
from catdog.models.calibration import T_MAX, T_MIN, cross_fitted, errors, fit_temperature
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
    #: the fold each of :attr:`checkpoints` was trained for (its manifest's ``fold``)
    member_folds: list[int | None] = dataclasses.field(default_factory=list)
    #: the TTA the rows were predicted with (``oof.csv``: 0; :mod:`catdog.oof_views`: the prediction's)
    tta: int = 0
    views: str | None = None

    def fitted_on(self) -> str:
        """What the rows are (``blend.json``'s ``fitted_on``)."""
        where = "oof.csv" if not self.tta else f"oof_tta{self.tta}_{self.views}.csv"
        passes = "in one plain pass (tta=0)" if not self.tta else f"with tta={self.tta} ({self.views} views)"
        return (
            f"out-of-fold rows ({where}): each image predicted once, by the one fold model that did not train on it, "
            f"{passes}"
        )


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
        member_folds=[m.get("fold") for m in manifest["members"]],
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


def centred(logps: torch.Tensor) -> torch.Tensor:
    """``log p - mean_k log p`` of every row of ``logps`` (last dimension: the classes), in double precision: the part
    of log-probabilities that softmax sees."""
    z = logps.double()
    return z - z.mean(dim=-1, keepdim=True)


def uninformative(logps: torch.Tensor) -> list[bool]:
    """For each member of ``logps`` (M, N, K): True when its centred log-probabilities (:func:`centred`) are zero on
    every row, to within twice the rounding of the centring (the float64 mean of K equal numbers x lies within
    K/2 epsilons of x, relative): it gives every class the same probability, so no weight changes what it adds to a
    blend."""
    z = logps.double()
    tol = z.shape[-1] * torch.finfo(torch.float64).eps * z.abs().amax(dim=-1, keepdim=True)
    return [bool(v) for v in (centred(z).abs() <= tol).flatten(1).all(dim=1)]


@dataclass(frozen=True)
class BlendFit:
    """What :func:`fit_blend` found: the weights (non-negative, summing to 1) and temperature of :func:`blend_probs`,
    which members were left out as :func:`uninformative` (weight 0), and whether the rows were separated (T from the
    members' own temperatures, see the module docstring)."""

    weights: list[float]
    temperature: float
    uninformative: list[bool]
    separated: bool


def _minimize(param: torch.Tensor, loss_of, max_iter: int) -> torch.Tensor:
    """``param`` after LBFGS (strong Wolfe line search) on ``loss_of(param)``, detached."""
    opt = torch.optim.LBFGS([param], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_of(param)
        loss.backward()
        return loss

    with torch.inference_mode(False), torch.enable_grad():
        opt.step(closure)
    return param.detach()


def fit_blend(logps: torch.Tensor, targets: torch.Tensor, max_iter: int = 200) -> BlendFit:
    """Weights (non-negative, summing to 1) and temperature minimizing the log loss of :func:`blend_probs` on
    ``targets``: LBFGS on ``log a`` of the coefficients ``a = w / T`` of the members' centred log-probabilities (double
    precision); T is kept in the range of a single model's temperature (:data:`catdog.models.calibration.T_MIN` ..
    ``T_MAX``).

    :func:`uninformative` members take no part and get weight 0. When the fitted blend gets every row right
    (:func:`catdog.models.calibration.errors` is 0), the rows are separated: each member is scaled by its own
    :func:`catdog.models.calibration.fit_temperature` on the rows (1 for a member without a mistake), and the weights
    (non-negative, summing to 1) of the members so scaled minimize the log loss; the result is read as above,
    ``T = 1 / sum_m (w_m / T_m)``."""
    with torch.inference_mode(False):  # clones autograd can use, even of inference-mode tensors
        z = centred(logps.detach().clone())
        y = targets.detach().clone().long()
    m = z.shape[0]
    flags = uninformative(logps)
    used = [i for i in range(m) if not flags[i]]
    if not used:
        return BlendFit([1.0 / m] * m, 1.0, flags, False)
    zu = z[used]
    theta = torch.full((len(used),), -np.log(len(used)), dtype=torch.float64, requires_grad=True)
    a = _minimize(theta, lambda t: F.cross_entropy((t.exp().view(-1, 1, 1) * zu).sum(0), y), max_iter).exp()
    if not bool(torch.isfinite(a).all()) or float(a.sum()) <= 0:
        return BlendFit(_spread([1.0 / len(used)] * len(used), used, m), 1.0, flags, False)
    separated = errors((a.view(-1, 1, 1) * zu).sum(0), y) == 0
    if separated:
        own = torch.tensor([fit_temperature(member, y) for member in zu], dtype=torch.float64)
        w = _convex_weights(zu / own.view(-1, 1, 1), y, max_iter)
        a = w / own
        # T = sum(w) / sum(w / T_m): exactly 1 when every T_m is, whatever the rounding of sum(w)
        temperature = float(w.sum() / a.sum())
    else:
        temperature = min(max(1.0 / float(a.sum()), T_MIN), T_MAX)
    weights = (a / a.sum()).tolist()
    return BlendFit(_spread(weights, used, m), temperature, flags, separated)


def _convex_weights(z: torch.Tensor, y: torch.Tensor, max_iter: int) -> torch.Tensor:
    """The weights ``w`` (a softmax of free parameters: non-negative, summing to 1) minimizing the log loss of
    ``softmax(sum_m w_m z_m)``, from equal weights."""
    if z.shape[0] == 1:
        return torch.ones(1, dtype=torch.float64)
    phi = torch.zeros(z.shape[0], dtype=torch.float64, requires_grad=True)
    phi = _minimize(phi, lambda p: F.cross_entropy((p.softmax(0).view(-1, 1, 1) * z).sum(0), y), max_iter)
    w = phi.softmax(0)
    return w if bool(torch.isfinite(w).all()) else torch.full_like(w, 1.0 / len(w))


def _spread(weights: list[float], used: list[int], m: int) -> list[float]:
    """``weights`` of the members ``used`` as a list over all ``m`` members, 0 for the others."""
    out = [0.0] * m
    for i, w in zip(used, weights):
        out[i] = w
    return out


def cross_fitted_blend(
    logps: torch.Tensor, targets: torch.Tensor, folds: Sequence[str]
) -> tuple[torch.Tensor, dict[str, BlendFit]]:
    """Each fold's rows blended with weights and T fitted on the other folds' rows: (probabilities in row order,
    ``{fold: fit}``)."""
    folds = np.asarray(folds)
    probs = torch.empty(logps.shape[1:], dtype=torch.float64)
    fits = {}
    for fold in sorted(set(folds.tolist())):
        rows = torch.from_numpy(folds == fold)
        others = ~rows
        if not bool(others.any()):
            raise ConfigError("blend=oof needs runs with two or more folds")
        fit = fit_blend(logps[:, others], targets[others])
        probs[rows] = blend_probs(logps[:, rows], fit.weights, fit.temperature)
        fits[fold] = fit
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
            (m["run"], m["images"], f"{m['acc']:.4f}", f"{m['logloss']:.4f}", f"{m['logloss_cross_fitted']:.4f}",
             f"{m['weight']:.3f}" + (" (uninformative)" if m["uninformative"] else ""))
            for m in self.record["members"]
        ]  # fmt: skip
        b = self.record["blend"]
        kept = ", the members' own: no row wrong" if self.record["separated"] else ""
        rows.append(
            (f"blend (T = {self.temperature:.3f}{kept})", b["images"], f"{b['acc_cross_fitted']:.4f}",
             f"{b['logloss_in_sample']:.4f} in-sample", f"{b['logloss_cross_fitted']:.4f}", "1")
        )  # fmt: skip
        return markdown_table(header, rows)

    def announce(self, mode: str, tta: int, views: str) -> str:
        """Log what the weights and T were fitted on (the runs' rows, :meth:`OofRun.fitted_on`) and what predict.py
        applies them to: each run's fold models combined by ``ensemble=mode``, each with ``tta`` augmented views of
        ``tta_views=views``, with a warning where the rows had other views. Returns the latter (``blend.json``'s
        ``applied_to``)."""
        models = "/".join(str(k) for k in sorted({len(r.checkpoints) for r in self.runs}))
        combined = "mean of their probabilities" if mode == "prob" else "renormalized mean of their log-probabilities"
        passes = f"the plain pass and {tta} augmented view(s) (tta={tta}, tta_views={views})" if tta else "tta=0"
        applied = f"each run's {models} fold models combined by ensemble={mode} ({combined}), each model with {passes}"
        log.info("blend=oof: fitted on %s; applied to %s", self.record["fitted_on"], applied)
        fitted = self.runs[0]
        if (fitted.tta, fitted.views if fitted.tta else None) != (tta, views if tta else None):
            log.warning(
                "blend=oof: the weights and T were fitted on out-of-fold predictions with tta=%d and are applied with "
                "tta=%d: averaged views are less sure of themselves, so the fitted T need not suit them", fitted.tta,
                tta,
            )  # fmt: skip
        return applied


def fit_oof_blend(runs: Sequence[str | Path | OofRun]) -> Blend:
    """Read the k-fold runs (folders, or their rows already read: :func:`read_oof_run`, or made with TTA by
    :mod:`catdog.oof_views`), check that they share their images and folds, and fit the blend on their out-of-fold
    rows; the record holds every member's and the blend's out-of-fold log loss and accuracy, which members were
    uninformative and whether the rows were separated (see the module docstring)."""
    oof = [r if isinstance(r, OofRun) else read_oof_run(r) for r in runs]
    check_same_rows(oof)
    ref = oof[0]
    index = {c: i for i, c in enumerate(ref.classes)}
    targets = torch.tensor([index[y] for y in ref.labels])
    logps = torch.stack([log_probs(r.probs) for r in oof])
    fit = fit_blend(logps, targets)
    in_sample = blend_probs(logps, fit.weights, fit.temperature)
    crossed, fits = cross_fitted_blend(logps, targets, ref.folds)
    part_of = {f: i for i, f in enumerate(sorted(set(ref.folds)))}
    parts = torch.tensor([part_of[f] for f in ref.folds])
    members = []
    for r, w, flag, logp in zip(oof, fit.weights, fit.uninformative, logps):
        p = torch.from_numpy(r.probs)
        member_crossed, _ = cross_fitted(logp, targets, parts)
        members.append(
            {
                "run": str(r.run), "checkpoints": [str(c) for c in r.checkpoints], "weight": w, "uninformative": flag,
                "images": len(targets), "logloss": log_loss(p, targets), "acc": _acc(p, targets),
                "logloss_cross_fitted": log_loss(member_crossed, targets),
            }
        )  # fmt: skip
        if flag:
            log.warning(
                "blend=oof: %s gives every class the same probability on every out-of-fold row: it carries no "
                "information and gets weight 0", r.run,
            )  # fmt: skip
    if fit.separated:
        log.warning(
            "blend=oof: no out-of-fold row is wrong with the fitted weights, so any smaller T looks better on them: "
            "T not fitted; each run scaled by its own temperature on the rows (1 without a mistake, as for a single "
            "run) and only the weights fitted (T = %.3f)",
            fit.temperature,
        )
    record = {
        "kind": "catdog-blend",
        "classes": ref.classes,
        "folds": len(set(ref.folds)),
        "members": members,
        "weights": fit.weights,
        "temperature": fit.temperature,
        "separated": fit.separated,
        "fitted_on": ref.fitted_on(),
        "blend": {
            "images": len(targets),
            "logloss_in_sample": log_loss(in_sample, targets),
            "acc_in_sample": _acc(in_sample, targets),
            "logloss_cross_fitted": log_loss(crossed, targets),
            "acc_cross_fitted": _acc(crossed, targets),
            "per_fold_fits": {fold: asdict(f) for fold, f in fits.items()},
        },
        "note": (
            "logloss: each member's out-of-fold rows as predicted; logloss_cross_fitted: each fold's rows scaled "
            "(member: one temperature; blend: weights and temperature) with values fitted on the other folds' rows. "
            "logloss_in_sample: the blend with the weights and temperature fitted on all rows (the ones applied). "
            "weights: coefficients on each member's log-odds (sharper members need less for the same say), 0 for an "
            "uninformative member (the same probability for every class on every row); members with nearly "
            "proportional log-odds share a weight the rows do not split. separated: no row wrong with the fitted "
            "weights, so T was not fitted: each member scaled by its own temperature on the rows (1 without a "
            "mistake) and only the weights fitted."
        ),
    }
    return Blend(oof, fit.weights, fit.temperature, record)


def _acc(probs: torch.Tensor, targets: torch.Tensor) -> float:
    return float((probs.argmax(1) == targets).double().mean())
