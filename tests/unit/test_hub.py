"""The Hub model folder's pure parts (catdog.hub): the settings check, the model card, the folder rules. Writing,
loading, pushing and downloading a folder: tests/e2e/test_hub.py."""

import pytest

from catdog.errors import ConfigError
from catdog.hub import check_hub_settings, check_output_folder, is_hub_ref, model_card
from tests.conftest import installed

CONFIG = {
    "arch": "vgg16_bn", "classes": ["cat", "dog"], "image_size": 96, "resize_size": 110, "interpolation": "bilinear",
    "temperature": 0.702, "train_images": 16000, "epochs": 19,
    "metrics": {"val/acc": 0.95025, "val/logloss": 0.16348, "val/logloss_cross_fitted": 0.14552},
}  # fmt: skip


@pytest.mark.parametrize(
    "hub, words",
    [
        ({"repo_id": "no-owner"}, "hub.repo_id must be null (write the folder only) or OWNER/NAME"),
        ({"repo_id": "a/b/c"}, "OWNER/NAME"),
        ({"repo_id": 5}, "OWNER/NAME"),
        ({"private": "yes"}, "hub.private must be true or false"),
        ({"repo": "a/b"}, "hub has unknown key(s) ['repo']"),
    ],
)
def test_bad_hub_settings_are_refused_naming_the_key(hub, words):
    with pytest.raises(ConfigError) as caught:
        check_hub_settings(hub)
    assert words in str(caught.value)


def test_valid_settings_need_the_hub_extra():
    if installed("safetensors") and installed("huggingface_hub"):
        assert check_hub_settings({"repo_id": "you/cats", "private": True})["repo_id"] == "you/cats"
    else:
        with pytest.raises(ConfigError, match=r'pip install -e "\.\[hub\]"'):
            check_hub_settings({"repo_id": "you/cats"})


def test_the_card_carries_the_hub_metadata_and_labels_every_figure():
    card = model_card(CONFIG, "python train.py experiment=cpu_scratch", ["curves.png"], "you/cats")
    front, body = card.split("---")[1], card.split("---", 2)[2]
    assert "library_name: catdog" in front and "pipeline_tag: image-classification" in front
    assert "# license:" in front  # left for the owner, commented so the YAML stays valid
    assert "| validation accuracy (best epoch, chosen on these images: in-sample) | 0.9503 |" in body
    assert "cross-fitted (T from other parts of the set) | 0.1455 |" in body
    assert "Temperature: 0.7020" in body and "python train.py experiment=cpu_scratch" in body
    assert "ckpt=hf://you/cats" in body and "![curves](images/curves.png)" in body
    assert "Intended use and limitations" in body


def test_a_card_without_figures_or_command_says_so():
    card = model_card({**CONFIG, "metrics": {}, "temperature": None}, None, [], None)
    assert "No figures" in card and "No temperature fitted" in card and "was not recorded" in card
    assert "ckpt=DIR" in card


def test_only_an_empty_or_missing_folder_or_a_model_folder_with_overwrite_is_written(tmp_path):
    assert check_output_folder(tmp_path / "new", False) == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    assert check_output_folder(tmp_path / "empty", False) == tmp_path / "empty"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        check_output_folder(tmp_path / "file", True)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="pass overwrite=true"):
        check_output_folder(tmp_path / "busy", False)
    with pytest.raises(ConfigError, match="not a catdog model folder"):
        check_output_folder(tmp_path / "busy", True)


def test_hub_references_are_recognised_by_their_prefix():
    assert is_hub_ref("hf://you/cats") and is_hub_ref("hf-hub:you/cats")
    assert not is_hub_ref("outputs/hf/run") and not is_hub_ref(None)
