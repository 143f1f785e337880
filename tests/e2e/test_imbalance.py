"""Classes far from balanced: model.class_weights=auto and data.sampler=balanced raise the minority's recall on a
9:1 toy set, and result.json reports every class."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from catdog.training import train
from tests.conftest import tiny_train_cfg

LEARNS = ["trainer.max_epochs=10", "model/optimizer=adam", "model.optimizer.lr=0.003"]


def _image(path, label: int, seed: int) -> None:
    """Reddish "cats", bluish "dogs", each image shifted by a random colour: the classes overlap."""
    rng = np.random.default_rng(seed)
    base = np.array([140, 100, 100]) if label == 0 else np.array([100, 100, 140])
    pixels = base + rng.normal(0, 20, size=3) + rng.normal(0, 10, size=(24, 24, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def nine_to_one(tmp_path_factory):
    """90 cats and 10 dogs to train on; 20 of each to validate on."""
    root = tmp_path_factory.mktemp("imbalanced")
    for i in range(90):
        _image(root / "train" / "cat" / f"{i}.png", 0, i)
    for i in range(10):
        _image(root / "train" / "dog" / f"{i}.png", 1, 1000 + i)
    for i in range(20):
        _image(root / "validation" / "cat" / f"{i}.png", 0, 2000 + i)
        _image(root / "validation" / "dog" / f"{i}.png", 1, 3000 + i)
    return root


def _result(root, run, *extra):
    train(tiny_train_cfg(root, run, *LEARNS, *extra))
    return json.loads((run / "result.json").read_text())


def test_class_weights_and_the_balanced_sampler_raise_the_minority_recall(nine_to_one, tmp_path):
    plain = _result(nine_to_one, tmp_path / "plain")
    weighted = _result(nine_to_one, tmp_path / "weighted", "model.class_weights=auto")
    balanced = _result(nine_to_one, tmp_path / "balanced", "data.sampler=balanced")
    recall = {name: r["per_class"]["dog"]["recall"] for name, r in
              (("plain", plain), ("weighted", weighted), ("balanced", balanced))}  # fmt: skip
    assert recall["weighted"] >= recall["plain"] + 0.2, recall
    assert recall["balanced"] >= recall["plain"] + 0.2, recall
    for r in (plain, weighted, balanced):
        assert r["val/balanced_acc"] == pytest.approx(np.mean([v["recall"] for v in r["per_class"].values()]))
        assert [sum(row) for row in r["confusion"]] == [20, 20]
        assert r["per_class"]["cat"]["support"] == 20
