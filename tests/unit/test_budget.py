"""catdog/budget.py: the epoch plan fitted to measured step times, the scaled ramp, the checks of
trainer.budget_minutes."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from types import SimpleNamespace

import pytest
from pytorch_lightning.callbacks import Timer

import catdog.budget as budget
from catdog.budget import (
    Measured,
    Timings,
    backstop_s,
    candidate_sizes,
    check_budget,
    check_epochs,
    correct_plan,
    fit_to_budget,
    plan_epochs,
    scaled_progressive,
)
from catdog.errors import ConfigError
from tests.conftest import compose_train

PROGRESSIVE = {"start_size": 64, "epochs": 13, "multiple": 16}


def test_plan_ends_nearest_the_budget_and_at_most_a_little_past_it():
    step_s = {64: 0.5, 80: 0.8, 96: 1.2}
    timings = Timings(step_s, 100, 20.0, 96, PROGRESSIVE, 17)

    def miss(epochs):  # how far from the budget a run of ``epochs`` ends
        return 60 + timings.estimate_s(epochs) - 1800

    plan = plan_epochs(1800, 60, timings)
    e = plan["max_epochs"]
    assert miss(e) <= budget.OVERSHOOT * 1800 and abs(miss(e)) <= abs(miss(e - 1))
    assert miss(e + 1) > budget.OVERSHOOT * 1800 or abs(miss(e + 1)) > abs(miss(e))
    assert plan["progressive_epochs"] == round(13 * e / 17)
    assert plan["estimate_s"] == pytest.approx(60 + timings.estimate_s(e), abs=0.1)
    # a machine twice as slow gets fewer epochs, never none
    slower = plan_epochs(1800, 60, Timings({k: 2 * v for k, v in step_s.items()}, 100, 20.0, 96, PROGRESSIVE, 17))
    assert slower["max_epochs"] < e
    assert plan_epochs(10, 60, timings)["max_epochs"] == 1


def test_one_epoch_past_the_budget_is_taken_when_it_ends_nearer():
    timings = Timings({96: 1.0}, 100, 0.0, 96, None, None)  # 100 s an epoch, 15 s to finish
    assert plan_epochs(1000, 0, timings)["max_epochs"] == 10  # 1015 s: 1.5 % past, nearer than 9 epochs' 915 s
    assert plan_epochs(1000, 40, timings)["max_epochs"] == 9  # 1055 s would be 5.5 % past: 955 s


def test_epoch_estimate_adds_each_epochs_size_validation_and_the_final_pass():
    step_s = {64: 1.0, 80: 2.0, 96: 3.0}
    # 4 epochs, ramp 64 -> 96 over 2 epochs (scaled from 2 of 4): sizes 64, 80, 96, 96
    assert Timings(step_s, 10, 5.0, 96, {**PROGRESSIVE, "epochs": 2}, 4).estimate_s(4) == pytest.approx(
        10 * (1 + 2 + 3 + 3) + 5 * 5.0 + budget.FINAL_OVERHEAD_S
    )


def test_each_sizes_warm_up_is_paid_once():
    """The first steps at a size (allocations, kernel choice, compilation) cost extra once per size the run uses."""
    step_s, first_s = {64: 1.0, 80: 2.0, 96: 3.0}, {64: 7.0, 80: 11.0, 96: 13.0}
    plain = Timings(step_s, 10, 5.0, 96, {**PROGRESSIVE, "epochs": 2}, 4)
    warm = Timings(step_s, 10, 5.0, 96, {**PROGRESSIVE, "epochs": 2}, 4, first_s)
    assert warm.estimate_s(4) == pytest.approx(plain.estimate_s(4) + 7 + 11 + 13)
    assert warm.estimate_s(1) == pytest.approx(plain.estimate_s(1) + 7)  # one epoch: the start size only


def test_the_estimate_after_the_epochs_already_trained():
    """Epochs 2 and 3 at 96 px (the ramp reaches it at epoch 2), its warm-up (96 px not trained yet), their validation
    passes and the final scoring."""
    ramp = {**PROGRESSIVE, "epochs": 2}
    warm = Timings({64: 1.0, 80: 2.0, 96: 3.0}, 10, 5.0, 96, ramp, None, {64: 7.0, 80: 11.0, 96: 13.0})
    assert warm.estimate_s(4, done=2) == pytest.approx(10 * (3 + 3) + 13 + 3 * 5.0 + budget.FINAL_OVERHEAD_S)
    assert warm.estimate_s(4, done=3) == pytest.approx(10 * 3 + 2 * 5.0 + budget.FINAL_OVERHEAD_S)  # 96 px seen


def _fixed_ramp_timings():
    """A plan's timings with its ramp as planned: 64 px for epochs 0-2, 80 px for 3-5, 96 px from epoch 6."""
    return Timings({64: 0.5, 80: 0.8, 96: 1.2}, 100, 20.0, 96, {**PROGRESSIVE, "epochs": 6}, None, {64: 4.0, 80: 6.0})


def _elapsed_after(timings, spent, epochs, ratios=None, val=1.0):
    """Seconds since the run started after ``epochs`` epochs whose sizes took ``ratios`` x their estimates."""
    t = timings.scaled({k: (ratios or {}).get(k, 1.0) for k in timings.step_s}, val)
    full = t.estimate_s(epochs)  # these epochs as if the run ended after them
    return spent + full - t.val_s - budget.FINAL_OVERHEAD_S


def test_check_epochs_are_the_second_at_each_size_before_the_last_ones():
    sizes = _fixed_ramp_timings().sizes(12)
    assert sizes == [64] * 3 + [80] * 3 + [96] * 6
    assert check_epochs(sizes) == [1, 4, 7]
    assert check_epochs(sizes[:8]) == [1, 4]  # epoch 7 would leave one epoch: settled
    assert check_epochs([96] * 5) == [1]


def test_a_plan_that_runs_as_estimated_is_kept():
    timings = _fixed_ramp_timings()
    plan = plan_epochs(1800, 60, timings)
    corrected = correct_plan(plan, timings, {64: 1.0}, 1.0, 0.0, _elapsed_after(timings, 60, 2), 2)
    assert corrected["max_epochs"] == plan["max_epochs"]
    assert corrected["estimate_s"] == pytest.approx(plan["estimate_s"], abs=0.2)
    assert corrected["corrected"] == {
        "planned_epochs": plan["max_epochs"], "planned_estimate_s": plan["estimate_s"],
        "checks": [{"after_epoch": 1, "train_ratio": {"64": 1.0}, "val_ratio": 1.0, "epoch_s": 0.0,
                    "max_epochs": plan["max_epochs"], "estimate_s": corrected["estimate_s"]}],
    }  # fmt: skip


@pytest.mark.parametrize("ratio", [0.8, 1.3])
def test_a_plan_is_corrected_by_each_sizes_measured_pace_from_the_time_left(ratio):
    """After epoch 1 (64 px at ``ratio`` x its estimate) the sizes not trained yet are taken to run at that ratio
    too; after epoch 4 (80 px at 1.0x) 80 and 96 px run as estimated: each check re-plans from the time really
    spent, keeping the planned ramp."""
    timings = _fixed_ramp_timings()
    plan = plan_epochs(1800, 60, timings)
    elapsed = _elapsed_after(timings, 60, 2, {64: ratio})
    first = correct_plan(plan, timings, {64: ratio}, 1.0, 0.0, elapsed, 2)
    scaled = {64: ratio, 80: ratio, 96: ratio}
    assert first["max_epochs"] == plan_epochs(1800, elapsed, timings.scaled(scaled, 1.0), done=2, least=7)["max_epochs"]
    assert (first["max_epochs"] > plan["max_epochs"]) == (ratio < 1)
    assert first["progressive_epochs"] == plan["progressive_epochs"]  # the ramp as planned
    elapsed = _elapsed_after(timings, 60, 5, {64: ratio})
    second = correct_plan(first, timings, {64: ratio, 80: 1.0}, 1.0, 0.0, elapsed, 5)
    expected = plan_epochs(1800, elapsed, timings.scaled({64: ratio, 80: 1.0, 96: 1.0}, 1.0), done=5, least=7)
    assert second["max_epochs"] == expected["max_epochs"]
    assert [c["after_epoch"] for c in second["corrected"]["checks"]] == [1, 4]
    assert second["corrected"]["planned_epochs"] == plan["max_epochs"]


def test_an_epochs_time_outside_training_and_validation_counts_for_every_epoch_left():
    timings = _fixed_ramp_timings()
    plan = plan_epochs(1800, 60, timings)
    elapsed = _elapsed_after(timings, 60, 2)
    corrected = correct_plan(plan, timings, {64: 1.0}, 1.0, 30.0, elapsed, 2)  # 30 s of checkpoints an epoch
    expected = plan_epochs(1800, elapsed, dataclasses.replace(timings, epoch_s=30.0), done=2, least=7)
    assert corrected["max_epochs"] == expected["max_epochs"] < plan["max_epochs"]
    assert timings.estimate_s(10, 4) + 6 * 30.0 == dataclasses.replace(timings, epoch_s=30.0).estimate_s(10, 4)


def test_a_correction_keeps_a_full_size_epoch_and_never_drops_trained_ones():
    timings = _fixed_ramp_timings()
    plan = plan_epochs(1800, 60, timings)
    late = correct_plan(plan, timings, {64: 50.0}, 1.0, 0.0, 1790, 2)  # 50x slower, budget nearly spent
    assert late["max_epochs"] == 7  # the ramp's 6 epochs and one at full size


def test_step_seconds_are_the_steady_state_and_the_warm_up_its_excess():
    marks = [0.0, 5.0, 6.0, 6.5, 7.0, 7.5, 8.0]  # gaps 5, 1 (warm-up), then 0.5 each
    assert budget._step_seconds(marks, 2) == (0.5, pytest.approx(5 + 1 - 2 * 0.5))


def _stubs(image_size=96, progressive=None):
    trainer = SimpleNamespace(fit_loop=SimpleNamespace(max_epochs=None), callbacks=[])
    datamodule = SimpleNamespace(hparams=SimpleNamespace(image_size=image_size, progressive=progressive))
    return trainer, datamodule


def test_gradient_accumulation_costs_every_batch(monkeypatch):
    """With accumulate_grad_batches=4 an epoch still runs all its 100 batches: 52 s an epoch (100 x 0.5 s and a 2 s
    validation pass) ends nearest 600 s with 11 epochs (11 x 52 + 2 + 15 = 589 s; 12 epochs, 641 s, pass 612 s);
    counting 25 steps an epoch planned 40."""
    monkeypatch.setattr(budget, "measure", lambda *a: Measured({96: 0.5}, {96: 0.0}, 2.0, 100))
    for accumulate in (1, 4):
        cfg = compose_train(["trainer.budget_minutes=10", f"trainer.accumulate_grad_batches={accumulate}"])
        trainer, datamodule = _stubs()
        plan = fit_to_budget(cfg, trainer, None, datamodule, None, time.time())
        assert plan["max_epochs"] == trainer.fit_loop.max_epochs == cfg.trainer.max_epochs == 11


def test_a_budget_too_short_for_one_epoch_says_so(caplog):
    timings = Timings({96: 0.5}, 100, 10.0, 96, None, None)  # one epoch: 50 + 2 x 10 + 15 = 85 s
    with caplog.at_level(logging.WARNING, logger="catdog.budget"):
        plan = plan_epochs(60, 0, timings)
    assert plan["max_epochs"] == 1
    assert "trainer.budget_minutes=1 is too short for one epoch: it is estimated at 1.4 min" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="catdog.budget"):
        plan_epochs(600, 0, timings)
    assert "too short" not in caplog.text


def test_the_backstop_is_a_little_past_the_budget_unless_max_time_is_set(monkeypatch):
    monkeypatch.setattr(budget, "measure", lambda *a: Measured({96: 0.5}, {96: 0.0}, 2.0, 100))
    cfg = compose_train(["trainer.budget_minutes=10"])
    trainer, datamodule = _stubs()
    plan = fit_to_budget(cfg, trainer, None, datamodule, None, time.time() - 30)
    (timer,) = [c for c in trainer.callbacks if isinstance(c, Timer)]
    assert timer._interval == "epoch"
    # 1.05 x 600 s, less the 30 s spent before the fit and the final validation pass and overhead
    expected = budget.BACKSTOP * 600 - 30 - 2.0 - budget.FINAL_OVERHEAD_S
    assert timer._duration == pytest.approx(expected, abs=1.0) and backstop_s(plan, 30) == pytest.approx(expected)
    cfg = compose_train(["trainer.budget_minutes=10", "+trainer.max_time=00:01:00:00"])
    trainer, datamodule = _stubs()
    fit_to_budget(cfg, trainer, None, datamodule, None, time.time())
    assert not any(isinstance(c, Timer) for c in trainer.callbacks)


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
