"""The range test's pure parts: the learning-rate ramp, the smoothing, the suggestion and the checks."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from catdog.errors import ConfigError
from catdog.lr_find import check_tune, lowest, lr_schedule, smooth, steepest, valley


def test_schedule_runs_exponentially_from_min_to_max():
    lrs = lr_schedule(1e-5, 1.0, 11)
    assert lrs[0] == pytest.approx(1e-5) and lrs[-1] == pytest.approx(1.0)
    np.testing.assert_allclose(lrs[1:] / lrs[:-1], 10**0.5)


def test_smoothing_is_bias_corrected():
    assert smooth([2.0] * 5) == pytest.approx([2.0] * 5)
    assert smooth([1.0, 3.0])[1] == pytest.approx((0.98 * 0.02 * 1 + 0.02 * 3) / (1 - 0.98**2))


def _curve(n: int = 120):
    """A range test's loss: flat, falling fastest at lr = 1e-3, lowest near 1e-1, then blowing up."""
    lrs = lr_schedule(1e-6, 10.0, n)
    x = np.log10(lrs)
    return lrs, 1.0 - 0.8 / (1 + np.exp(-(x + 3) * 3)) + np.where(x > -1, (x + 1) ** 2 * 5, 0)


def test_steepest_is_where_the_loss_falls_fastest_before_its_minimum():
    lrs, losses = _curve()
    assert 10**-3.3 < steepest(lrs.tolist(), losses.tolist()) < 10**-2.7
    noisy_start = losses.copy()
    noisy_start[2] = 0.1  # a dip in the first tenth, where the average settles, is not the minimum
    assert 10**-3.3 < steepest(lrs.tolist(), noisy_start.tolist()) < 10**-2.7
    assert lowest(lrs.tolist(), noisy_start.tolist()) == lrs[int(np.argmin(losses))]
    assert steepest(lrs[:8].tolist(), losses[:8].tolist()) is None


def test_valley_lies_on_the_way_down_to_the_minimum():
    lrs, losses = _curve()
    found = valley(lrs.tolist(), losses.tolist())
    lowest = lrs[int(np.argmin(losses))]
    assert 1e-5 < found < lowest / 10
    assert valley(lrs[:8].tolist(), losses[:8].tolist()) is None
    rising = valley(lrs.tolist(), [0.5 + 0.01 * i for i in range(len(lrs))])
    assert rising == lrs[0]  # nothing falls: the smallest learning rate


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"tune": "lr-find"}, "tune must be null or 'lr_find'"),
        ({"tune": "lr_find", "lr_find": {"min_lr": 1.0, "max_lr": 0.1}}, "0 < min_lr < max_lr"),
        ({"tune": "lr_find", "lr_find": {"steps": 5}}, "steps must be an integer >= 10"),
        ({"tune": "lr_find", "lr_find": {"stop_factor": 1}}, "stop_factor must be a number > 1"),
        ({"tune": "lr_find", "lr_find": {"step": 50}}, "unknown key"),
    ],
)
def test_check_tune_names_the_key(cfg, message):
    with pytest.raises(ConfigError, match=message):
        check_tune(OmegaConf.create(cfg))
