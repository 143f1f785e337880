"""Fixtures of the end-to-end tier: a tiny model trained once for the tests that predict with it."""

from __future__ import annotations

import signal

import pytest
from omegaconf import open_dict

from tests.conftest import make_flat, make_image, tiny_train_cfg


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


#: Enough steps for the tiny model to learn the generated colours (red "cats", blue "dogs") in every fold.
LEARNS = ["trainer.max_epochs=10", "model/optimizer=adam", "model.optimizer.lr=0.003"]
#: The cat picture labelled dog in :func:`kfold_pair`'s images.
FLIPPED = "train/dog.99.jpg"


@pytest.fixture(scope="session")
def kfold_pair(tmp_path_factory):
    """Two 2-fold runs of a tiny model that learns, on the same images and folds (``data.seed=0``) with other
    initializations (``seed=1``, ``seed=2``), where one cat picture is labelled dog (:data:`FLIPPED`):
    (run 1, run 2, data root)."""
    from catdog.training import train

    root = tmp_path_factory.mktemp("kfold_pair")
    data = make_flat(root / "data", per_class=16, test=10)
    make_image(data / FLIPPED, 0, seed=4242)
    for seed in (1, 2):
        train(tiny_train_cfg(data, root / f"run{seed}", *LEARNS, "ensemble.size=2", f"seed={seed}", "data.seed=0"))
    return root / "run1", root / "run2", data


def train_until_interrupted(cfg, epoch: int, raises=SystemExit) -> None:
    """Train ``cfg`` until Ctrl-C (``tests.helpers.InterruptAt``) at the start of ``epoch``: Lightning saves, shuts
    down and exits (``raises``: what the test expects to come out of ``train``). Python's own Ctrl-C handler is put
    back afterwards: Lightning ignores Ctrl-C from then on."""
    from catdog.training import train  # see trained(): Lightning imported late

    with open_dict(cfg):
        cfg.callbacks["stop"] = {"_target_": "tests.helpers.InterruptAt", "epoch": epoch}
    try:
        with pytest.raises(raises):
            train(cfg)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
