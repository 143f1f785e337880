"""Runs started together never share a folder: unique folder names, one process per folder (a lock taken before
anything is written, stale locks of dead processes taken over), and no-clobber writes that are checked and done in
one step."""

import json
import os
import re
import socket

import pytest
from omegaconf import OmegaConf

from catdog.runs.layout import LOCK_NAME
from catdog.runs.lock import FolderInUseError, hold_folder
from catdog.training import train
from tests.conftest import TINY, make_flat, run_script, start_script, tiny_train_cfg
from tests.unit.runs.test_lock import _lock_of, _snapshot

STAMP = re.compile(r"^\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d-\d{3}_[0-9a-f]{6}$")


def test_two_runs_started_together_get_their_own_complete_folders(tmp_path):
    data = make_flat(tmp_path / "data", per_class=4, test=0)
    outputs = tmp_path / "outputs"
    args = [*TINY, f"data.dir={data}", f"paths.log_dir={outputs}"]
    procs = [start_script("train.py", [*args, f"seed={seed}"], tmp_path) for seed in (1, 2)]
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
    runs = sorted((outputs / "train").iterdir())
    assert len(runs) == 2 and all(STAMP.match(r.name) for r in runs)
    seeds = set()
    for run in runs:
        seed = OmegaConf.load(run / ".hydra" / "config.yaml").seed
        seeds.add(seed)
        assert f"seed={seed}" in OmegaConf.load(run / ".hydra" / "overrides.yaml")
        result = json.loads((run / "result.json").read_text())
        assert (run / result["best_checkpoint"]).is_file() and (run / "checkpoints" / "last.ckpt").is_file()
        assert (run / "split.csv").is_file() and (run / "oof.csv").is_file()
        assert f"best checkpoint {run}/checkpoints/best.ckpt" in (run / "train.log").read_text()
        assert not (run / LOCK_NAME).exists()  # released at the end
    assert seeds == {1, 2}


@pytest.mark.parametrize("script", ["train.py", "predict.py"])
def test_process_aimed_at_a_folder_in_use_is_refused_and_writes_nothing_there(script, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"an interrupted run's checkpoint")
    (run / "train.log").write_text("its log\n")
    args = [*TINY, f"data.dir={tmp_path}"] if script == "train.py" else [f"ckpt={run}"]
    with hold_folder(run):
        before = _snapshot(run)
        refused = run_script(script, [*args, f"hydra.run.dir={run}"], tmp_path)
        assert _snapshot(run) == before  # no log line, no .hydra/, nothing else
    assert refused.returncode == 2, refused.stderr[-2000:]
    lines = [line for line in (refused.stdout + refused.stderr).splitlines() if "in use" in line]
    assert len(lines) == 1
    assert (
        f"{run} is in use by another process (pid {os.getpid()} on host {socket.gethostname()}, running since "
        in lines[0]
    )
    assert lines[0].endswith("wait for it to finish or choose another folder")
    assert not (run / LOCK_NAME).exists()  # the holder released it


def test_training_refuses_a_folder_another_process_holds(tmp_path, other_process):
    run = tmp_path / "run"
    _lock_of(run, other_process.pid)
    before = _snapshot(run)
    with pytest.raises(FolderInUseError, match=rf"{run} is in use by another process \(pid {other_process.pid} "):
        train(tiny_train_cfg(make_flat(tmp_path / "data", per_class=2, test=0), run))
    assert _snapshot(run) == before
