"""model.class_weights: checks and what auto stands for."""

from __future__ import annotations

import pytest

from catdog.errors import ConfigError, DatasetError
from catdog.models.class_weights import check_class_weights, resolve_class_weights


def test_auto_is_the_inverse_class_frequency_and_one_for_a_balanced_set():
    assert resolve_class_weights("auto", [0] * 90 + [1] * 10, ["cat", "dog"]) == pytest.approx([100 / 180, 100 / 20])
    assert resolve_class_weights("auto", [0, 1, 2, 0, 1, 2], ["a", "b", "c"]) == [1.0, 1.0, 1.0]
    assert resolve_class_weights([1, 3], None, ["cat", "dog"]) == [1.0, 3.0]
    assert resolve_class_weights(None, None, ["cat", "dog"]) is None


def test_wrong_weights_are_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"2 weight\(s\), but the data has 3 classes \['a', 'b', 'c'\]"):
        resolve_class_weights([1.0, 2.0], None, ["a", "b", "c"])
    with pytest.raises(DatasetError, match=r"no training image of class\(es\) \['dog'\]"):
        resolve_class_weights("auto", [0, 0], ["cat", "dog"])
    for bad in ("balanced", [1, -1], [], [True, 1.0]):
        with pytest.raises(ConfigError, match="model.class_weights must be null, auto or a list"):
            check_class_weights(bad)
