"""trainer.budget_minutes: epochs fitted to measured step times, the ramp scaled, a resume keeps the plan."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import open_dict

import catdog.budget as budget
from catdog.builders import build_datamodule, build_model, build_trainer
from catdog.checkpoints import read_checkpoint
from catdog.runs.resume import RUN_SETTINGS_KEY
from catdog.training import train
from tests.conftest import make_flat, tiny_train_cfg


def test_a_run_with_a_budget_trains_the_planned_epochs_and_a_resume_keeps_them(tmp_path, monkeypatch):
    data = make_flat(tmp_path / "data", per_class=8, test=0)
    measured = []

    def fake_measure(cfg, trainer, model, datamodule, sizes):
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
    progressive = dict(datamodule.hparams.progressive)
    step_s, val_s, steps = budget.measure(cfg, trainer, model, datamodule, [32, 40, 48])
    assert sorted(step_s) == [32, 40, 48] and all(0 < v < 10 for v in step_s.values()) and val_s > 0
    assert steps == len(datamodule.train_dataloader())
    assert datamodule.hparams.image_size == 48 and datamodule.hparams.progressive == progressive
    assert datamodule.trainer is trainer
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
