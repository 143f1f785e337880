"""catdog/cli/run_log.py: the run log is written only by the folder's holder."""

import logging

from catdog.cli.run_log import RunLogHandler
from catdog.runs.lock import hold_folder


def test_run_log_is_written_only_by_the_folders_holder(tmp_path):
    record = logging.LogRecord("catdog", logging.INFO, __file__, 1, "line %d", (1,), None)
    refused = RunLogHandler(str(tmp_path / "refused" / "train.log"))
    (tmp_path / "refused").mkdir()
    refused.emit(record)
    refused.close()
    assert not (tmp_path / "refused" / "train.log").exists()

    handler = RunLogHandler(str(tmp_path / "run" / "train.log"))
    handler.emit(record)  # before the lock: held back
    assert not (tmp_path / "run" / "train.log").exists()
    with hold_folder(tmp_path / "run"):
        handler.emit(logging.LogRecord("catdog", logging.INFO, __file__, 1, "line %d", (2,), None))
    handler.close()
    assert (tmp_path / "run" / "train.log").read_text() == "line 1\nline 2\n"
