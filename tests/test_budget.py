"""trainer.budget_minutes: epochs fitted to measured step times, the ramp scaled, a resume keeps the plan."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import open_dict

import catdog.budget as budget
from catdog.budget import Timings, candidate_sizes, check_budget, plan_epochs, scaled_progressive
from catdog.builders import build_datamodule, build_model, build_trainer
from catdog.checkpoints import read_checkpoint
from catdog.errors import ConfigError
from catdog.runs.resume import RUN_SETTINGS_KEY
from catdog.training import train
from tests.conftest import compose_train, make_flat, tiny_train_cfg

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


def test_a_run_with_a_budget_trains_the_planned_epochs_and_a_resume_keeps_them(tmp_path, monkeypatch):
    data = make_flat(tmp_path / "data", per_class=8, test=0)
    measured = []

    def fake_measure(trainer, model, datamodule, sizes):
        measured.append(sizes)
        # a real batch went through: the device and the sizes are the run's
        assert trainer.strategy.root_device == torch.device("cpu")
        return {s: 0.05 * s / 32 for s in sizes}, 0.1, 3

    monkeypatch.setattr(budget, "measure", fake_measure)
    monkeypatch.setattr(budget, "FINAL_OVERHEAD_S", 0.0)
    extra = [
        "trainer.budget_minutes=0.05", "trainer.max_epochs=4", "data.image_size=48",
        "data.progressive={start_size: 32, epochs: 2, multiple: 8}",
    ]  # fmt: skip
    cfg = tiny_train_cfg(data, tmp_path / "run", *extra)
    with open_dict(cfg):
        cfg.callbacks["stop"] = {"_target_": "tests.helpers.InterruptAt", "epoch": 2}
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        train(cfg)
    assert measured == [[32, 40, 48]]
    saved = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")[RUN_SETTINGS_KEY]
    plan = saved[budget.PLAN_KEY]
    assert plan["max_epochs"] > 2 and saved["trainer.max_epochs"] == plan["max_epochs"]
    assert plan["progressive_epochs"] == max(1, round(2 * plan["max_epochs"] / 4))

    def must_not_measure(*args):
        raise AssertionError("a resumed run measured again instead of keeping its plan")

    monkeypatch.setattr(budget, "measure", must_not_measure)
    train(tiny_train_cfg(data, tmp_path / "run", *extra))
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["epochs"] == plan["max_epochs"] and result["budget_plan"] == plan


@pytest.mark.parametrize("pipeline", ["workers", "device"])
def test_measure_times_real_steps_at_each_size_and_leaves_the_run_untouched(tmp_path, pipeline):
    data = make_flat(tmp_path / "data", per_class=12, test=0)
    cfg = tiny_train_cfg(
        data, tmp_path / "run", f"data.pipeline={pipeline}", "data.image_size=48",
        "data.progressive={start_size: 32, epochs: 2, multiple: 8}", f"data.cache_dir={tmp_path / 'cache'}",
    )  # fmt: skip
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    model = build_model(cfg, datamodule.classes)
    trainer = build_trainer(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    step_s, val_s, _ = budget.measure(trainer, model, datamodule, [32, 40, 48])
    assert sorted(step_s) == [32, 40, 48] and all(0 < v < 10 for v in step_s.values()) and val_s > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
