"""catdog/validation.py: the train checks across architectures."""

import pytest

from catdog.builders import resolve_preprocessing
from catdog.errors import ConfigError
from tests.conftest import compose_train


def test_swa_with_frozen_batchnorm_stages_is_refused_for_any_bn_family(tmp_path):
    from catdog.validation import check_train_config

    def cfg(arch):
        c = compose_train([f"model.arch={arch}", "model.weights=null", "averaging=swa", "model.finetune.blocks=2"])
        resolve_preprocessing(c)
        return c

    with pytest.raises(ConfigError, match="averaging=swa resets the BatchNorm statistics"):
        check_train_config(cfg("resnet18"))
    check_train_config(cfg("convnext_tiny"))  # LayerNorm only: nothing to reset
