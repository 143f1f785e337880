"""catdog/callbacks.py: a progress bar in a terminal, plain log lines otherwise."""

import io
import sys

import pytest
from pytorch_lightning.callbacks import RichProgressBar, TQDMProgressBar

from catdog.callbacks import LogProgress, progress_bar
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
