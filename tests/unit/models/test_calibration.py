"""catdog/models/calibration.py: temperature scaling fitted on held-out predictions."""

import pytest
import torch
import torch.nn.functional as F

from catdog.metrics import log_loss
from catdog.models.calibration import calibration_record, fit_temperature


def _overconfident(n=4000, scale=3.0, seed=0):
    """Labels drawn from softmax(z); the model reports ``scale * z`` (over-confident for scale > 1)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=g) * 2
    y = torch.multinomial(F.softmax(z, 1), 1, generator=g).squeeze(1)
    return F.log_softmax(z * scale, 1), y


def test_temperature_fixes_an_overconfident_model():
    logp, y = _overconfident(scale=3.0)
    t = fit_temperature(logp, y)
    assert 2.6 < t < 3.4
    rec = calibration_record(logp, y)
    assert rec["logloss_after"] < rec["logloss_before"] - 0.05
    assert rec["logloss_before"] == pytest.approx(log_loss(logp.exp(), y), abs=1e-6)
    # Under-confident models get T < 1; accuracy never changes.
    logp, y = _overconfident(scale=0.5, seed=1)
    assert 0.4 < fit_temperature(logp, y) < 0.6


def test_no_sharpening_from_a_validation_set_without_errors():
    # Every prediction right: the loss falls without limit as T -> 0, so the fit must not sharpen.
    logp, y = _overconfident(n=200, scale=0.5, seed=2)
    right = logp.argmax(1) == y
    logp, y = logp[right], y[right]
    assert fit_temperature(logp, y) == 1.0
    rec = calibration_record(logp, y)
    assert rec["errors"] == 0 and rec["logloss_after"] == rec["logloss_before"]
    # One mistake back in the set and the fit works again (this model is under-confident: T < 1).
    logp2, y2 = _overconfident(n=4000, scale=0.5, seed=2)
    assert calibration_record(logp2, y2)["errors"] > 0
    assert fit_temperature(logp2, y2) < 0.7
