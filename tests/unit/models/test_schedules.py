"""catdog/models/schedules.py: the one-cycle and warm-up cosine shapes."""

import pytest

from catdog.models.schedules import one_cycle_factor, phase_bounds, warmup_cosine_factor


def test_one_cycle_shape_and_restart():
    starts = phase_bounds(100, 40, restart=True)
    assert starts == [0, 40]
    f = {s: one_cycle_factor(s, starts=starts, total_steps=100, pct_start=0.25, div_factor=25, final_div_factor=1e4)
         for s in range(100)}  # fmt: skip
    assert f[0] == pytest.approx(1 / 25)
    assert f[10] == pytest.approx(1.0)  # peak at 25% of the 40-step first phase
    assert f[39] < 0.01
    assert f[40] == pytest.approx(1 / 25)  # the cycle restarts at the unfreeze
    assert f[55] == pytest.approx(1.0)  # 25% of the 60-step second phase
    assert f[99] == pytest.approx(1 / (25 * 1e4))  # the final lr at the last step, as torch's OneCycleLR
    assert phase_bounds(100, 40, restart=False) == [0]
    assert phase_bounds(100, None, restart=True) == [0]


def test_warmup_cosine_shape():
    kw = {"starts": [0], "total_steps": 110, "warmup_steps": 10, "warmup_start": 0.1, "min_lr_ratio": 0.0}
    assert warmup_cosine_factor(0, **kw, decay=True) == pytest.approx(0.1)
    assert warmup_cosine_factor(5, **kw, decay=True) == pytest.approx(0.55)
    assert warmup_cosine_factor(10, **kw, decay=True) == pytest.approx(1.0)
    assert warmup_cosine_factor(60, **kw, decay=True) == pytest.approx(0.5)
    assert warmup_cosine_factor(110, **kw, decay=True) == pytest.approx(0.0, abs=1e-9)
    assert warmup_cosine_factor(60, **kw, decay=False) == 1.0
