"""Progress on every long step, readable in a terminal and in a log file.

- Training: in a terminal, Lightning's rich progress bar (``pip install rich``) or its tqdm bar; with output going to a
  file or a pipe (CI, ``nohup``, a cluster job), :class:`catdog.callbacks.LogProgress` instead: plain log lines, a
  few per epoch and one with the epoch's metrics, never a carriage return (:func:`catdog.callbacks.progress_bar`).
- Image scans, the decoded-image cache build and prediction over a folder: :class:`Periodic` log lines
  (``verifying images: 5,000 / 20,000 (25 %), 1,234 images/s, about 12 s left``) at most every ``every_s`` seconds.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


class Periodic:
    """Count ``done`` items of ``total`` and log a line at most every ``every_s`` seconds, and one at the end.

    ``with Periodic(total, "verifying images") as p: ... p.update(n)``
    """

    def __init__(self, total: int, what: str, every_s: float = 10.0, unit: str = "images"):
        self.total, self.what, self.every_s, self.unit = int(total), what, float(every_s), unit
        self.done = 0
        self.start = self.last = time.perf_counter()

    def __enter__(self) -> Periodic:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and self.last != self.start:  # a line was logged: close the series
            log.info(
                "%s: %s %s done in %.1f s", self.what, f"{self.done:,}", self.unit, time.perf_counter() - self.start
            )

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.every_s and self.done < self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            left = (self.total - self.done) / rate if rate > 0 else float("inf")
            log.info(
                "%s: %s / %s (%d %%), %.0f %s/s, about %.0f s left", self.what, f"{self.done:,}",
                f"{self.total:,}", 100 * self.done // max(self.total, 1), rate, self.unit, left,
            )  # fmt: skip
