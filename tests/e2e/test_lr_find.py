"""train.py tune=lr_find: a range test of the first stage, written into the run folder, no training left behind."""

from __future__ import annotations

import json

from catdog.lr_find import no_suggestion
from catdog.training import train
from tests.conftest import TINY, make_flat, run_script, tiny_train_cfg


def test_lr_find_writes_the_curve_and_the_command_and_trains_nothing(tmp_path):
    data = make_flat(tmp_path / "data", per_class=24, test=0)
    run = tmp_path / "run"
    args = [*TINY, f"data.dir={data}", f"hydra.run.dir={run}", "tune=lr_find", "lr_find.steps=30",
            "lr_find.min_lr=1e-5", "lr_find.max_lr=10"]  # fmt: skip
    out = run_script("train.py", args, tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-2000:]
    record = json.loads((run / "lr_find.json").read_text())
    assert (run / "lr_find.png").stat().st_size > 5_000
    assert 10 <= record["steps_run"] <= 30 and len(record["lrs"]) == len(record["losses"]) == record["steps_run"]
    assert record["lrs"][0] == 1e-5 and record["lrs"] == sorted(record["lrs"])
    assert record["stage"].startswith("all layers")
    if record["suggestion"] is not None:
        assert record["lrs"][0] <= record["suggestion"] <= record["lrs"][-1]
        assert f"model.optimizer.lr={record['suggestion']:.3g}" in record["command"]
        assert not [a for a in record["command"].split() if a.startswith(("tune=", "lr_find.", "hydra."))]
        assert record["command"] in text and record["no_suggestion"] is None
    else:
        assert record["command"] is None and record["no_suggestion"] in text
    assert not (run / "checkpoints").exists() and not (run / "result.json").exists()
    assert not list(run.rglob("*.ckpt"))


def test_lr_find_tests_the_stage_that_trains_first_on_fold_zero(tmp_path):
    data = make_flat(tmp_path / "data", per_class=12, test=0)
    run = tmp_path / "run"
    cfg = tiny_train_cfg(data, run, "tune=lr_find", "lr_find.steps=10", "ensemble.size=2",
                         "model.finetune.head_epochs=1", "model.finetune.blocks=1")  # fmt: skip
    assert train(cfg) is None
    record = json.loads((run / "lr_find.json").read_text())
    assert record["stage"].startswith("head only")
    assert not list(run.glob("fold_*")) and not (run / "manifest.json").exists()


def test_lr_find_without_a_suggestion_writes_why_and_prints_no_command(tmp_path, monkeypatch, capsys):
    data = make_flat(tmp_path / "data", per_class=12, test=0)
    run = tmp_path / "run"
    monkeypatch.setattr("catdog.lr_find.valley", lambda lrs, losses: None)  # as for a curve that never falls
    train(tiny_train_cfg(data, run, "tune=lr_find", "lr_find.steps=10"))
    record = json.loads((run / "lr_find.json").read_text())
    assert record["suggestion"] is None and record["command"] is None
    assert record["no_suggestion"] == no_suggestion(record["losses"])
    out = capsys.readouterr().out
    assert f"lr_find: no suggestion ({record['no_suggestion']})" in out
    assert "python train.py" not in out and "model.optimizer.lr=" not in out
    assert (run / "lr_find.png").stat().st_size > 5_000
