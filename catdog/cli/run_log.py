"""Hydra's run log in catdog (``conf/hydra/job_logging/catdog.yaml``): ``train.log`` / ``predict.log`` are opened
only once the process holds its folder, so a refused process leaves no line there."""

from __future__ import annotations

import logging
import os

from catdog.runs.lock import owns


class RunLogHandler(logging.FileHandler):
    """Hydra's run log file (``train.log``, ``predict.log``): opened only once this process holds the folder's lock.
    Records logged before that are written then; a process refused the folder (or that never takes its lock) writes
    nothing there."""

    MAX_HELD = 10_000

    def __init__(self, filename, mode: str = "a", encoding=None, errors=None):
        super().__init__(filename, mode, encoding, delay=True, errors=errors)
        self._waiting: list[logging.LogRecord] | None = []
        self._folder = os.path.dirname(self.baseFilename)

    def _open_if_owned(self) -> bool:
        if self._waiting is None:
            return True
        if not owns(self._folder):
            return False
        waiting, self._waiting = self._waiting, None
        for record in waiting:
            super().emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        if self._open_if_owned():
            super().emit(record)
        elif len(self._waiting) < self.MAX_HELD:
            self._waiting.append(record)

    def close(self) -> None:
        self.acquire()
        try:
            if not self._open_if_owned():
                self._waiting = []  # never this process's folder: its records are dropped
            super().close()
        finally:
            self.release()
