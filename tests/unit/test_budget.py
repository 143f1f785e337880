"""catdog/budget.py: the epoch plan fitted to measured step times, the scaled ramp, the checks of
trainer.budget_minutes."""

from __future__ import annotations

import json

import pytest

import catdog.budget as budget
from catdog.budget import Timings, candidate_sizes, check_budget, plan_epochs, scaled_progressive
from catdog.errors import ConfigError
from tests.conftest import compose_train

PROGRESSIVE = {"start_size": 64, "epochs": 13, "multiple": 16}


def test_plan_fits_the_most_epochs_in_the_budget():
    step_s = {64: 0.5, 80: 0.8, 96: 1.2}
    timings = Timings(step_s, 100, 20.0, 96, PROGRESSIVE, 17)
    estimate_s = timings.estimate_s
    plan = plan_epochs(1800, 60, timings)
    e = plan["max_epochs"]
    left = budget.SAFETY * 1800 - 60
    assert estimate_s(e) <= left < estimate_s(e + 1)
    assert plan["progressive_epochs"] == round(13 * e / 17)
    assert plan["estimate_s"] == pytest.approx(60 + estimate_s(e), abs=0.1)
    # a machine twice as slow gets fewer epochs, never none
    slower = plan_epochs(1800, 60, Timings({k: 2 * v for k, v in step_s.items()}, 100, 20.0, 96, PROGRESSIVE, 17))
    assert slower["max_epochs"] < e
    assert plan_epochs(10, 60, timings)["max_epochs"] == 1


def test_epoch_estimate_adds_each_epochs_size_validation_and_the_final_pass():
    step_s = {64: 1.0, 80: 2.0, 96: 3.0}
    # 4 epochs, ramp 64 -> 96 over 2 epochs (scaled from 2 of 4): sizes 64, 80, 96, 96
    assert Timings(step_s, 10, 5.0, 96, {**PROGRESSIVE, "epochs": 2}, 4).estimate_s(4) == pytest.approx(
        10 * (1 + 2 + 3 + 3) + 5 * 5.0 + budget.FINAL_OVERHEAD_S
    )


def test_ramp_and_candidate_sizes():
    assert scaled_progressive(PROGRESSIVE, 34, 17)["epochs"] == 26
    assert scaled_progressive(PROGRESSIVE, 3, 17)["epochs"] == 2
    assert scaled_progressive(None, 34, 17) is None
    assert candidate_sizes(96, PROGRESSIVE) == [64, 80, 96]
    assert candidate_sizes(176, {"start_size": 112, "epochs": 24, "multiple": 16}) == [112, 128, 144, 160, 176]
    assert candidate_sizes(96, None) == [96]


@pytest.mark.parametrize("value", [0, -5, "30", True])
def test_budget_must_be_positive_minutes(value):
    cfg = compose_train([f"trainer.budget_minutes={json.dumps(value)}"])
    with pytest.raises(ConfigError, match="trainer.budget_minutes must be a number of minutes > 0"):
        check_budget(cfg)


def test_budget_refused_for_processes_it_cannot_plan(monkeypatch):
    cfg = compose_train(["trainer.budget_minutes=30", "trainer.devices=2", "data.folds=3"])
    with pytest.raises(ConfigError, match="set trainer.max_epochs"):
        check_budget(cfg)
