"""catdog/progress.py: periodic progress lines."""

import logging

from catdog.progress import Periodic


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
