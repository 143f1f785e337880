"""Fixtures of the end-to-end tier: a tiny model trained once for the tests that predict with it."""

from __future__ import annotations

import pytest

from tests.conftest import make_flat, tiny_train_cfg


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """One tiny model trained once for all prediction tests (tests/e2e/test_predict.py, tests/e2e/test_decode.py):
    (checkpoint, data root)."""
    # imported here: Lightning imported before pytest's log capture starts would log past it
    from catdog.training import train

    root = tmp_path_factory.mktemp("pred")
    data = make_flat(root / "data", per_class=8, test=12)
    train(tiny_train_cfg(data, root / "run"))
    return root / "run" / "checkpoints" / "best.ckpt", data
