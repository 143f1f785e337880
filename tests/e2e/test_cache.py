"""The decoded-image cache: same pixels as the files, reused, invalidated, crash-safe, bad images, training, workers."""

from __future__ import annotations

import json

from catdog.training import train
from tests.conftest import tiny_train_cfg


# ----- training -------------------------------------------------------------------------------------------------------
def test_tiny_training_run_with_the_cache_matches_reading_the_files(flat_data, tmp_path):
    # The conftest images are 40x36 and the tiny model's eval resize is 37 px: every image is stored as decoded,
    # so each train and eval sample is bit-identical and so is the run (CPU training here is deterministic).
    results = {}
    for name, extra in {
        "files": [],
        "cache": ["data.cache=true", f"data.cache_dir={tmp_path / 'decoded'}"],
    }.items():
        out = tmp_path / f"run_{name}"
        train(tiny_train_cfg(flat_data, out, *extra))
        results[name] = json.loads((out / "result.json").read_text())
    assert len(list((tmp_path / "decoded").glob("*.u8"))) == 1
    assert results["cache"]["val/logloss"] == results["files"]["val/logloss"]
    assert results["cache"]["val/acc"] == results["files"]["val/acc"]
    assert (tmp_path / "run_files" / "split.csv").read_text() == (tmp_path / "run_cache" / "split.csv").read_text()
