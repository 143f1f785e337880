"""catdog/averaging.py: the EMA decay's warm-up."""

import pytest

from catdog.averaging import ema_decay


def test_ema_decay_warm_up():
    assert ema_decay(0.999, 0, None) == 0.999
    assert ema_decay(0.999, 1, 0.75) == pytest.approx(1 - 2**-0.75)
    assert ema_decay(0.999, 10**6, 0.75) == 0.999  # capped by the configured decay
    assert [ema_decay(0.999, n, 0.75) for n in (10, 100, 1000)] == sorted(
        ema_decay(0.999, n, 0.75) for n in (10, 100, 1000)
    )
