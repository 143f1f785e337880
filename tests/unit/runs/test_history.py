"""catdog/runs/history.py: the metric history trimmed to a checkpoint, the CSV logger found among several."""

import logging
from types import SimpleNamespace

import pytest

from catdog.fileio import atomic_write_text
from catdog.loggers import CSVLogger
from catdog.runs.history import continue_history, metrics_file, trim_history


@pytest.mark.parametrize("others", [[], ["TensorBoardLogger"]])
def test_resume_without_a_csv_logger_says_the_history_is_not_trimmed(others, tmp_path, caplog):
    trainer = SimpleNamespace(loggers=[SimpleNamespace(name=name) for name in others])
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "metrics.csv").write_text("epoch,step,val/logloss\n0,1,0.5\n1,3,0.4\n")
    with caplog.at_level(logging.INFO, logger="catdog.runs.history"):
        continue_history(trainer, tmp_path, tmp_path.resolve(), {"epoch": 0, "global_step": 2})
    assert "no CSV logger in this run (logger.csv): the metric history is not trimmed to the checkpoint" in caplog.text
    assert (tmp_path / "csv" / "metrics.csv").read_text().count("\n") == 3  # left as it was
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="catdog.runs.history"):
        continue_history(trainer, tmp_path, tmp_path.resolve(), None)  # a fresh run: nothing to say
    assert "no CSV logger" not in caplog.text


def test_metrics_file_finds_the_csv_logger_among_several(tmp_path):
    from pytorch_lightning.loggers import CSVLogger as LightningCSVLogger

    ours = CSVLogger(save_dir=tmp_path, name="csv", version="")
    others = [LightningCSVLogger(save_dir=tmp_path, name="plain", version="")]
    assert metrics_file([*others, ours]) == tmp_path / "csv" / "metrics.csv"
    assert metrics_file(ours) == tmp_path / "csv" / "metrics.csv"
    assert metrics_file(others) is None and metrics_file(False) is None and metrics_file([]) is None


def test_trim_history_drops_rows_logged_after_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.csv"
    atomic_write_text(
        path,
        "epoch,lr,step,train/loss,val/logloss\n,0.1,0,,\n0,,4,0.7,\n0,,4,,0.69\n,0.05,5,,\n1,,9,0.6,\n1,,9,,0.6\n"
        ",0.01,10,,\n2,,12,0.5,\n",
    )
    assert trim_history(path, {"epoch": 1, "global_step": 10}) == 6
    assert path.read_text().splitlines()[-1] == "1,,9,,0.6"
    assert trim_history(path, None) == 0  # a fresh start in the folder: no rows, the header kept
    assert path.read_text() == "epoch,lr,step,train/loss,val/logloss\n"
