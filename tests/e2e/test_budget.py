"""trainer.budget_minutes: epochs fitted to measured step times, the ramp scaled, a resume keeps the plan."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

import catdog.budget as budget
from catdog.builders import build_datamodule, build_model, build_trainer
from catdog.checkpoints import read_checkpoint
from catdog.runs.resume import RUN_SETTINGS_KEY
from catdog.training import train
from tests.conftest import make_flat, tiny_train_cfg
from tests.e2e.conftest import train_until_interrupted


def test_a_run_with_a_budget_trains_the_planned_epochs_and_a_resume_keeps_them(tmp_path, monkeypatch):
    data = make_flat(tmp_path / "data", per_class=8, test=0)
    measured = []

    def fake_measure(cfg, trainer, model, datamodule, sizes):
        measured.append(sizes)
        # a real batch went through: the device and the sizes are the run's
        assert trainer.strategy.root_device == torch.device("cpu")
        # seconds long enough that the real time spent before planning is a negligible part of the budget
        return budget.Measured({s: 5.0 * s / 32 for s in sizes}, {s: 0.0 for s in sizes}, 10.0, 3)

    monkeypatch.setattr(budget, "measure", fake_measure)
    monkeypatch.setattr(budget, "FINAL_OVERHEAD_S", 0.0)
    # the made-up step times are not this machine's: neither the backstop nor the check after epoch 1 (tested
    # below) may act on them
    monkeypatch.setattr(budget, "BACKSTOP", 1000.0)
    monkeypatch.setattr(budget, "check_epochs", lambda sizes: [])
    extra = [
        "trainer.budget_minutes=5", "trainer.max_epochs=4", "data.image_size=48",
        "data.progressive={start_size: 32, epochs: 2, multiple: 8}",
    ]  # fmt: skip
    train_until_interrupted(tiny_train_cfg(data, tmp_path / "run", *extra), 2, (KeyboardInterrupt, SystemExit))
    assert measured == [[32, 40, 48]]
    saved = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")[RUN_SETTINGS_KEY]
    plan = saved[budget.PLAN_KEY]
    assert "corrected" not in plan
    assert plan["max_epochs"] > 2 and saved["trainer.max_epochs"] == plan["max_epochs"]
    share = max(1, round(2 * plan["max_epochs"] / 4))  # the configured 2 of 4 epochs, scaled; a quarter more at most
    assert share <= plan["progressive_epochs"] <= share + math.ceil(0.25 * share)

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
    progressive = dict(datamodule.hparams.progressive)
    measured = budget.measure(cfg, trainer, model, datamodule, [32, 40, 48])
    assert sorted(measured.step_s) == sorted(measured.first_s) == [32, 40, 48]
    assert all(0 < v < 10 for v in measured.step_s.values()) and measured.val_s > 0
    assert all(v >= 0 for v in measured.first_s.values())
    assert measured.batches == len(datamodule.train_dataloader())
    assert datamodule.hparams.image_size == 48 and datamodule.hparams.progressive == progressive
    assert datamodule.trainer is trainer
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())


def test_the_backstop_ends_a_run_whose_plan_underestimated_the_machine(tmp_path, monkeypatch, caplog):
    """Step times 1000x too fast plan hundreds of epochs into a 12 s budget: the fit stops at the end of the first
    epoch past the budget, and the run still scores its best checkpoint and writes its result. The check while
    training is kept from acting (it would correct the plan after epoch 1): the backstop alone stops the fit."""
    data = make_flat(tmp_path / "data", per_class=8, test=0)
    monkeypatch.setattr(budget, "measure", lambda *a: budget.Measured({48: 1e-4}, {48: 0.0}, 1e-4, 3))
    monkeypatch.setattr(budget, "check_epochs", lambda sizes: [])
    monkeypatch.setattr(budget, "FINAL_OVERHEAD_S", 0.0)
    cfg = tiny_train_cfg(data, tmp_path / "run", "trainer.budget_minutes=0.2", "data.image_size=48")
    with caplog.at_level(logging.INFO):
        train(cfg)
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    planned = result["budget_plan"]["max_epochs"]
    assert planned > 100 and 1 <= result["epochs"] < planned
    assert result["val/logloss"] is not None
    assert f"the time budget's backstop stopped training after {result['epochs']} of the {planned}" in caplog.text


def test_every_fold_of_a_kfold_run_trains_the_first_folds_plan(tmp_path, monkeypatch, caplog):
    data = make_flat(tmp_path / "data", per_class=6, test=0)
    calls = []

    def fake_measure(cfg, trainer, model, datamodule, sizes):
        calls.append(cfg.data.fold)
        return budget.Measured({s: 0.01 for s in sizes}, {s: 0.0 for s in sizes}, 0.01, 2)

    monkeypatch.setattr(budget, "measure", fake_measure)
    monkeypatch.setattr(budget, "FINAL_OVERHEAD_S", 0.0)
    monkeypatch.setattr(budget, "BACKSTOP", 1000.0)
    cfg = tiny_train_cfg(
        data, tmp_path / "run", "data.folds=2", "trainer.budget_minutes=0.01", "trainer.max_epochs=3", "report=false"
    )
    with caplog.at_level(logging.INFO):
        train(cfg)
    assert calls == [0]
    plans = [json.loads((tmp_path / "run" / f"fold_{i}" / "result.json").read_text())["budget_plan"] for i in (0, 1)]
    assert plans[0] == plans[1]
    assert "trainer.budget_minutes=0.01 is each fold's budget (2 folds: about 0.02 min in all)" in caplog.text


def test_a_plan_that_underestimated_the_machine_is_corrected_after_epoch_1(tmp_path, monkeypatch, caplog):
    """Step times far too fast plan ~1000 epochs into 12 s: epoch 1's wall time corrects the plan to what fits, the
    learning-rate schedule (cosine to 0) is shrunk to the corrected length, and a run resumed after it keeps it."""
    data = make_flat(tmp_path / "data", per_class=8, test=0)
    monkeypatch.setattr(budget, "measure", lambda *a: budget.Measured({32: 0.0005}, {32: 0.0}, 0.01, 3))
    monkeypatch.setattr(budget, "FINAL_OVERHEAD_S", 0.0)
    monkeypatch.setattr(budget, "BACKSTOP", 1000.0)  # the corrected plan alone ends the run
    extra = ["trainer.budget_minutes=0.2", "model/scheduler=cosine"]
    with caplog.at_level(logging.INFO):
        train_until_interrupted(tiny_train_cfg(data, tmp_path / "run", *extra), 2, (KeyboardInterrupt, SystemExit))
    plan = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")[RUN_SETTINGS_KEY][budget.PLAN_KEY]
    planned = plan["corrected"]["planned_epochs"]
    (check,) = plan["corrected"]["checks"]
    assert planned > 100 and 2 < plan["max_epochs"] < planned and check["train_ratio"]["32"] > 3
    assert check["after_epoch"] == 1 and "time budget checked after epoch 1 (32 px: training" in caplog.text
    train(tiny_train_cfg(data, tmp_path / "run", *extra))  # resumed: the corrected plan, no schedule-length error
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["epochs"] == plan["max_epochs"] and result["budget_plan"] == plan
    last = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert last["lr_schedulers"][0]["_last_lr"][0] == pytest.approx(0.0, abs=1e-12)  # the cosine ran to its end


def test_the_result_records_the_corrected_plan_and_the_backstop_is_judged_against_it(tmp_path, monkeypatch, caplog):
    """A plan corrected from ~1000 epochs to what fits ends at its corrected length: that is the plan result.json
    records, and no warning says a backstop cut it short."""
    data = make_flat(tmp_path / "data", per_class=8, test=0)
    monkeypatch.setattr(budget, "measure", lambda *a: budget.Measured({32: 0.0005}, {32: 0.0}, 0.01, 3))
    monkeypatch.setattr(budget, "FINAL_OVERHEAD_S", 0.0)
    monkeypatch.setattr(budget, "BACKSTOP", 1000.0)
    cfg = tiny_train_cfg(data, tmp_path / "run", "trainer.budget_minutes=0.2", "report=false")
    with caplog.at_level(logging.INFO):
        train(cfg)
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    plan = result["budget_plan"]
    # the made-up steps are >10x faster than any CPU runs this model, so the check cuts the plan
    assert plan["corrected"]["planned_epochs"] > 100
    assert result["epochs"] == plan["max_epochs"] < plan["corrected"]["planned_epochs"]
    assert "backstop stopped" not in caplog.text
