"""conf/serve.yaml's keys, checked once (catdog.validation.check_serve_config) with messages naming the key."""

import pytest
from hydra import compose, initialize_config_dir

from catdog.errors import ConfigError
from catdog.validation import check_serve_config
from tests.conftest import CONF_DIR, installed


def compose_serve(overrides=()):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="serve", overrides=["ckpt=x.ckpt", *overrides])


def test_the_default_config_is_valid_where_litserve_is_installed():
    if installed("litserve"):
        check_serve_config(compose_serve())
    else:
        with pytest.raises(ConfigError, match=r'catdog-serve needs litserve.*pip install -e "\.\[serve\]"'):
            check_serve_config(compose_serve())


@pytest.mark.parametrize(
    "override, words",
    [
        ("serve.host=192.168.1.5", "serve.host must be one of"),
        ("serve.port=80", "serve.port must be an integer from 1024 to 65535"),
        ("serve.max_batch_size=0", "serve.max_batch_size must be an integer at least 1"),
        ("serve.batch_timeout=-1", "serve.batch_timeout must be a non-negative number"),
        ("serve.workers_per_device=0", "serve.workers_per_device"),
        ("serve.devices=two", "serve.devices"),
        ("serve.timeout=0", "serve.timeout must be a positive number"),
        ("serve.max_bytes=0", "serve.max_bytes"),
        ("serve.max_pixels=-5", "serve.max_pixels"),
        ("serve.gradcam=maybe", "serve.gradcam must be true or false"),
        ("serve.log_level=loud", "serve.log_level must be one of"),
        ("+serve.workers=2", "serve has unknown key(s) ['workers']"),
        ("tta=99", "tta"),
        ("tta_views=mirror", "mirror"),
        ("ensemble=median", "median"),
        ("calibrate=sometimes", "calibrate must be true or false"),
        ("decoder=gpu", "decoder"),
    ],
)
def test_a_bad_value_is_refused_naming_its_key(override, words):
    with pytest.raises(ConfigError, match=None) as caught:
        check_serve_config(compose_serve([override]))
    assert words in str(caught.value)
