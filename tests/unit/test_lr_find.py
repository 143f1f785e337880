"""The range test's pure parts: the learning-rate ramp, the smoothing, the suggestion and the checks."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from catdog.errors import ConfigError
from catdog.lr_find import (
    SKIP_END,
    check_tune,
    lowest,
    lr_schedule,
    no_suggestion,
    smooth,
    steepest,
    summary,
    valley,
)


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
    low = int(np.argmin(losses))
    assert 1e-5 < found < lrs[low] / 10
    # the loss falls from the start: after the first tenth (12 points) the fall runs from point 12 to the minimum, and
    # the valley is fastai's point a third and a sixth of the way down (int parts of each)
    third = (low - 12) / 3
    assert found == lrs[12 + int(third) + int(third / 2)]
    assert valley(lrs[:8].tolist(), losses[:8].tolist()) is None


def test_a_fall_at_the_first_step_only_gives_no_suggestion():
    lrs = lr_schedule(1e-6, 1.0, 30).tolist()
    losses = [1.0, 0.9] + [0.9 + 0.01 * i for i in range(1, 29)]
    assert valley(lrs, losses) is None  # not the largest learning rate, 1.0


@pytest.mark.parametrize("losses", [[0.7] * 30, [0.5 + 0.01 * i for i in range(30)]], ids=["flat", "rising"])
def test_no_falling_stretch_gives_no_suggestion(losses):
    assert valley(lr_schedule(1e-6, 1.0, 30).tolist(), losses) is None


def test_a_one_step_fall_suggests_the_rate_before_it():
    lrs = lr_schedule(1e-6, 1.0, 30).tolist()
    losses = [1 + 0.01 * i for i in range(30)]
    losses[4] = losses[3] - 0.001  # the one fall, from the first point after the first tenth (3 points)
    assert valley(lrs, losses) == lrs[3]


def test_valley_leaves_out_the_first_tenth_and_the_last_points():
    n = 60
    lrs = lr_schedule(1e-6, 1.0, n).tolist()
    losses = [2.0 + 0.001 * i for i in range(n)]  # rising, but for:
    losses[20:30] = [1.99 - 0.01 * k for k in range(10)]  # the valley
    losses[:6] = [3.0 - 0.1 * k for k in range(6)]  # a fall in the first tenth (6 points), where the average settles
    losses[-SKIP_END:] = [1.5 - 0.1 * k for k in range(SKIP_END)]  # and one in the last points, below the valley
    found = valley(lrs, losses)
    assert lrs[20] <= found <= lrs[29]
    # the longest fall left: one rising point before the valley (any of 6..19) and its 10 points, ending at 29; it
    # starts 11 - 1 points before its end, and the valley is int(10 / 3) + int(10 / 6) points further on
    assert found == lrs[19 + 3 + 1]


def test_valley_stops_at_the_first_loss_that_is_not_finite():
    n = 60
    lrs = lr_schedule(1e-6, 1.0, n).tolist()
    losses = [2.0 + 0.001 * i for i in range(n)]
    losses[10:14] = [1.9, 1.8, 1.7, 1.6]
    losses[20] = float("nan")
    losses[21:50] = [1.5 - 0.01 * k for k in range(29)]  # a longer fall, after the loss stopped being finite
    assert lrs[10] <= valley(lrs, losses) <= lrs[13]


def test_without_a_suggestion_the_summary_says_why_and_gives_no_command():
    record = {"suggestion": None, "no_suggestion": no_suggestion([0.7] * 30), "command": None}
    text = summary(record, "run/lr_find.png")
    assert "never falls" in text and "lr_find.min_lr" in text and "run/lr_find.png" in text
    assert "python train.py" not in text and "model.optimizer.lr=" not in text
    assert "8 steps are too few" in no_suggestion([0.7] * 8)
    found = {"suggestion": 3e-3, "steepest": 1e-3, "min_loss_lr": 0.1, "configured_lr": 0.01,
             "command": "python train.py model.optimizer.lr=0.003"}  # fmt: skip
    assert "suggested model.optimizer.lr=0.003" in summary(found, "run/lr_find.png")
    assert summary(found, "run/lr_find.png").endswith("\n  python train.py model.optimizer.lr=0.003")


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
