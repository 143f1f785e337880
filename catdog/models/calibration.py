"""Temperature scaling (Guo et al., 2017): one scalar T, fitted on held-out predictions, that divides the logits.

It changes no decision (argmax is the same for every T > 0), only how sure the probabilities are, which is what
log loss scores. It is fitted on the validation images of the run (for k-fold: each fold on its own out-of-fold
images), never on the images the model trained on, where a model is always over-confident. A log loss measured with
T on the images that fitted it is in-sample (optimistic); :func:`cross_fitted` gives the out-of-sample figure.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from catdog.checkpoints import CALIBRATION_KEY
from catdog.metrics import log_loss

#: Fitted temperatures are kept in this range (a degenerate fit, e.g. on perfectly separated data, stays finite).
T_MIN, T_MAX = 0.05, 20.0


def scale_logits(logits: torch.Tensor, temperature: float | None) -> torch.Tensor:
    """``logits / temperature``; unchanged for ``None``. Also right for log-probabilities: softmax removes the
    per-row constant that separates them from logits."""
    if temperature is None or temperature == 1.0:
        return logits
    return logits / temperature


def calibrated_probs(logp: torch.Tensor, temperature: float | None) -> torch.Tensor:
    """``softmax(logp / T)`` in double precision."""
    return F.softmax(scale_logits(logp.double(), temperature), dim=1)


def nll(logp: torch.Tensor, targets: torch.Tensor, temperature: float | None = None) -> float:
    """Kaggle's log loss (:func:`catdog.metrics.log_loss`) of ``softmax(logp / T)``."""
    return log_loss(calibrated_probs(logp, temperature), targets)


def errors(logp: torch.Tensor, targets: torch.Tensor) -> int:
    """How many rows of ``logp`` put their largest value on another class than ``targets``."""
    return int((logp.argmax(dim=1) != targets.to(logp.device)).sum())


def fit_temperature(logp: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> float:
    """The T > 0 that minimizes the log loss of ``softmax(logp / T)`` on ``targets``, by LBFGS on log T (double
    precision), clamped to [T_MIN, T_MAX].

    When no prediction is wrong the log loss keeps falling as T -> 0, so the fit says nothing about unseen images
    except "sharpen without limit", and one mistake on the test set would then cost the clip's maximum (34.5 nats
    at Kaggle's 1e-15). Such a set gives T = 1 (no scaling)."""
    if len(targets) == 0:
        raise ValueError("cannot fit a temperature on zero predictions")
    if errors(logp, targets) == 0:
        return 1.0
    # Clones: validation outputs are inference-mode tensors, which autograd cannot use.
    z = logp.detach().clone().double()
    y = targets.detach().clone().long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    with torch.inference_mode(False), torch.enable_grad():
        opt.step(closure)
    t = float(log_t.detach().exp())
    if not math.isfinite(t):
        return 1.0
    return min(max(t, T_MIN), T_MAX)


def cross_fitted(
    logp: torch.Tensor, targets: torch.Tensor, parts: torch.Tensor
) -> tuple[torch.Tensor, dict[int, float]]:
    """Out-of-sample calibrated probabilities: the rows of each part (``parts``: one part id per row) scaled with a
    temperature fitted on the rows of every other part, so no row is scored with a T it helped fit. Returns the
    probabilities (in row order) and each part's temperature."""
    parts = torch.as_tensor(parts)
    probs = torch.empty(logp.shape, dtype=torch.float64)
    temperatures = {}
    for part in sorted(set(parts.tolist())):
        rows, others = parts == part, parts != part
        t = fit_temperature(logp[others], targets[others]) if bool(others.any()) else 1.0
        probs[rows] = calibrated_probs(logp[rows], t)
        temperatures[part] = t
    return probs, temperatures


#: The validation set of a single run is cut into this many parts for the cross-fitted calibrated log loss.
CROSS_FIT_PARTS = 5


def calibration_record(logp: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Fit T on (``logp``, ``targets``): ``{"temperature", "logloss_before", "logloss_after", "logloss_cross_fitted",
    "cross_fit_parts", "images", "errors"}``. ``logloss_after`` is in-sample (T fitted on the same rows it scores);
    ``logloss_cross_fitted`` scores each of :data:`CROSS_FIT_PARTS` interleaved parts of the rows with a T fitted on
    the others, an estimate of the calibrated log loss on images that fitted nothing. ``errors``: misclassified
    images; with none, T is 1 (see :func:`fit_temperature`)."""
    t = fit_temperature(logp, targets)
    n_parts = min(CROSS_FIT_PARTS, len(targets))
    cross, _ = cross_fitted(logp, targets, torch.arange(len(targets)) % max(1, n_parts))
    return {
        "temperature": t,
        "logloss_before": nll(logp, targets),
        "logloss_after": nll(logp, targets, t),
        "logloss_cross_fitted": log_loss(cross, targets),
        "cross_fit_parts": n_parts,
        "images": len(targets),
        "errors": errors(logp, targets),
    }


def temperature_scaled(probs: np.ndarray, temperature: float | None) -> torch.Tensor:
    """``softmax(log(probs) / T)`` in double precision (log-probabilities scale like logits)."""
    logp = torch.from_numpy(np.log(np.clip(probs, 1e-300, 1.0)))
    return calibrated_probs(logp, temperature)


def checkpoint_temperature(ckpt: dict[str, Any]) -> float | None:
    """The fitted temperature saved in a checkpoint, or None when it has none."""
    record = ckpt.get(CALIBRATION_KEY)
    return valid_temperature(record.get("temperature") if isinstance(record, dict) else None)


def valid_temperature(t) -> float | None:
    """``t`` as a temperature: a positive number, else None (none fitted)."""
    return float(t) if isinstance(t, (int, float)) and t > 0 else None
