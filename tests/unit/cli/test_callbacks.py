"""catdog/cli/callbacks.py: a sweep folder in use stops the multirun before it writes."""

import json
import os

import pytest
from omegaconf import OmegaConf

from catdog.cli.callbacks import SweepFolderLock
from catdog.runs.layout import LOCK_NAME
from tests.unit.runs.test_lock import _lock_of, _snapshot


def test_sweep_folder_in_use_stops_the_multirun_before_it_writes(tmp_path, other_process):
    sweep = tmp_path / "sweep"
    _lock_of(sweep, other_process.pid)
    before = _snapshot(sweep)
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    with pytest.raises(SystemExit) as exit_info:
        SweepFolderLock().on_multirun_start(cfg)
    assert exit_info.value.code == 2 and _snapshot(sweep) == before
    other_process.kill()
    other_process.wait()
    SweepFolderLock().on_multirun_start(cfg)  # its holder is gone: taken over
    assert json.loads((sweep / LOCK_NAME).read_text())["pid"] == os.getpid()
    SweepFolderLock().on_multirun_end(cfg)
    assert not (sweep / LOCK_NAME).exists()
