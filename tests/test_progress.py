"""Progress that reads well in a terminal and in a log file."""

import io
import logging
import sys

import pytest
from pytorch_lightning.callbacks import RichProgressBar, TQDMProgressBar

from catdog.callbacks import LogProgress, progress_bar
from catdog.progress import Periodic
from tests.conftest import installed


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_in_a_terminal_log_lines_otherwise(monkeypatch):
    assert isinstance(progress_bar(io.StringIO()), LogProgress)
    monkeypatch.setitem(sys.modules, "rich", None)  # rich not installed
    assert isinstance(progress_bar(FakeTerminal()), TQDMProgressBar)


@pytest.mark.extras  # rich belongs to no extra; the optuna extra installs it (optuna -> cliff -> cmd2 -> rich)
@pytest.mark.skipif(not installed("rich"), reason="needs rich: pip install rich")
def test_progress_bar_in_a_terminal_is_rich_when_installed():
    assert isinstance(progress_bar(FakeTerminal()), RichProgressBar)


def test_periodic_lines_count_up_and_close(caplog, monkeypatch):
    clock = iter(range(0, 1000, 5))  # every update 5 s later
    monkeypatch.setattr("catdog.progress.time.perf_counter", lambda: next(clock))
    with caplog.at_level(logging.INFO, logger="catdog.progress"), Periodic(40, "checking images", every_s=10) as p:
        for _ in range(40):
            p.update()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("checking images: 2 / 40 (5 %)") and "images/s, about" in lines[0]
    assert lines[-1].startswith("checking images: 40 images done in")
    assert len(lines) == 1 + 19  # a line every 10 s over 39 updates 5 s apart, and the closing one
    assert not any("\r" in line for line in lines)


def test_quick_steps_log_nothing(caplog):
    with caplog.at_level(logging.INFO, logger="catdog.progress"), Periodic(1000, "predicting") as p:
        p.update(1000)
    assert caplog.records == []
