"""catdog/runs/selection.py: ckpt= resolution: latest is the newest finished training of any kind, a sweep folder
gives its best job, a run folder its result checkpoint."""

import json
import logging
import os

import pytest

from catdog.errors import CheckpointError
from catdog.runs.selection import resolve_members


def _run(folder, when, fold=None, logloss=0.5, ckpt="checkpoints/best.ckpt", overrides=()):
    (folder / "checkpoints").mkdir(parents=True)
    (folder / ckpt).write_bytes(b"")
    result = {"fold": fold, "best_checkpoint": ckpt, "val/logloss": logloss, "val/acc": 0.9}
    (folder / "result.json").write_text(json.dumps(result))
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    os.utime(folder / "result.json", (when, when))
    return folder


def _kfold(folder, when, folds=2, oof_logloss=0.4):
    for i in range(folds):
        _run(folder / f"fold_{i}", when - 1, fold=i)
    members = [{"checkpoint": f"fold_{i}/checkpoints/best.ckpt"} for i in range(folds)]
    manifest = {"kind": "catdog-ensemble", "members": members, "oof": {"logloss": oof_logloss, "acc": 0.9}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    os.utime(folder / "manifest.json", (when, when))
    return folder


def _sweep(folder, metric="val/logloss"):
    folder.mkdir(parents=True)
    (folder / "multirun.yaml").write_text(f"optimized_metric: {metric}\n")
    return folder


def test_latest_skips_the_folds_of_an_unfinished_kfold_run(tmp_path):
    out = tmp_path / "outputs"
    _run(out / "train" / "a", 1000)
    unfinished = out / "kfold" / "b"
    _run(unfinished / "fold_0", 2000, fold=0)
    (unfinished / "kfold.json").write_text("{}")
    assert resolve_members("latest", out) == [out / "train" / "a" / "checkpoints" / "best.ckpt"]
    _kfold(out / "kfold" / "c", 3000)
    assert [m.parent.parent.name for m in resolve_members("latest", out)] == ["fold_0", "fold_1"]


def test_latest_after_a_sweep_is_its_best_job_and_says_so(tmp_path, caplog):
    out = tmp_path / "outputs"
    _run(out / "train" / "a", 1000)
    sweep = _sweep(out / "train-multirun" / "s")
    for job, (when, loss) in enumerate([(2000, 0.30), (2100, 0.20), (2200, 0.40)]):
        _run(sweep / str(job), when, logloss=loss, overrides=[f"model.optimizer.lr={job}"])
    with caplog.at_level(logging.INFO, logger="catdog.runs.selection"):
        members = resolve_members("latest", out)
    assert members == [sweep / "1" / "checkpoints" / "best.ckpt"]  # not the last-written job 2
    assert f"ckpt=latest: {sweep} (sweep" in caplog.text
    assert "best job 1 (model.optimizer.lr=1) by val/logloss 0.2000 of 3" in caplog.text
    assert resolve_members(str(sweep), out) == members  # the sweep folder itself is accepted


def test_sweep_of_kfold_runs_picks_the_best_out_of_fold_score(tmp_path):
    sweep = _sweep(tmp_path / "s")
    _kfold(sweep / "0", 1000, oof_logloss=0.3)
    _kfold(sweep / "1", 1100, oof_logloss=0.25)
    assert {m.parent.parent.parent.name for m in resolve_members(str(sweep), tmp_path)} == {"1"}
    assert {m.parent.parent.parent.name for m in resolve_members("latest", tmp_path)} == {"1"}


def test_run_folder_gives_its_result_checkpoint(tmp_path):
    run = _run(tmp_path / "swa_run", 1000, ckpt="checkpoints/swa.ckpt")
    (run / "checkpoints" / "best.ckpt").write_bytes(b"")
    assert resolve_members(str(run), tmp_path) == [run / "checkpoints" / "swa.ckpt"]


def test_nothing_finished_says_what_to_do(tmp_path):
    _run(tmp_path / "kfold" / "fold_0", 1000, fold=0)
    with pytest.raises(CheckpointError, match=r"ckpt=latest: no finished training under .*train first"):
        resolve_members("latest", tmp_path)
    empty = _sweep(tmp_path / "s")
    with pytest.raises(CheckpointError, match="sweep folder with no finished job"):
        resolve_members(str(empty), tmp_path)
