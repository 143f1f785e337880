"""catdog/models/stages.py: an unknown architecture names close matches."""

import pytest

from catdog.errors import ConfigError
from catdog.models.stages import check_arch


def test_unknown_arch_names_close_matches():
    with pytest.raises(ConfigError, match=r"model\.arch='resnet19'.*did you mean resnet18"):
        check_arch("resnet19")
    assert check_arch("efficientnet_v2_s") == "efficientnet_v2_s"
