"""export.py format=hub: a model folder for the Hugging Face Hub that predict.py (and catdog-serve) load with the
checkpoint's probabilities; pushing checks the token before anything is written; hf://NAME goes through
huggingface_hub's download. No network: the Hub's client is replaced where a test needs it to answer."""

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from catdog.errors import CheckpointError, ConfigError
from catdog.exporting import export
from catdog.hub import CONFIG_NAME, WEIGHTS_NAME, is_hub_folder
from catdog.inference import load_classifier
from catdog.prediction import predict
from catdog.runs.selection import resolve_members
from tests.conftest import compose_predict, extra_marks
from tests.e2e.test_export import compose_export

pytestmark = extra_marks("hub", "huggingface_hub", "safetensors")


def _export_hub(ckpt, output, *overrides):
    return export(compose_export([f"ckpt={ckpt}", "format=hub", f"output={output}", *overrides]))


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """No token anywhere and an empty cache: what a machine that never logged in has."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)


def _rows(path):
    with open(path) as f:
        return list(csv.reader(f))


def test_the_folder_holds_weights_config_and_a_card_with_the_runs_figures(trained, tmp_path):
    run = shutil.copytree(trained[0].parent.parent, tmp_path / "run")
    (run / ".hydra").mkdir(exist_ok=True)
    (run / ".hydra" / "overrides.yaml").write_text("- experiment=demo\n- data.dir=/home/me/pets\n- seed=3\n")
    shutil.rmtree(run / "report", ignore_errors=True)
    (run / "report").mkdir()
    (run / "report" / "curves.png").write_bytes(b"\x89PNG picture")
    ckpt = run / "checkpoints" / "best.ckpt"
    folder = _export_hub(ckpt, tmp_path / "model")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", CONFIG_NAME, "images", WEIGHTS_NAME]
    assert (folder / "images" / "curves.png").read_bytes() == b"\x89PNG picture"
    config = json.loads((folder / CONFIG_NAME).read_text())
    model = load_classifier(ckpt)
    assert config["classes"] == model.classes and config["arch"] == model.hparams.arch
    assert config["temperature"] == model.temperature and config["image_size"] == model.hparams.image_size
    result = json.loads((ckpt.parent.parent / "result.json").read_text())
    assert config["metrics"]["val/logloss"] == result["val/logloss"]
    assert "dir" not in config["data"]  # no local path of the trainer's machine
    card = (folder / "README.md").read_text()
    front = card.split("---")[1]
    assert "library_name: catdog" in front and "- image-classification" in front and "license" in front
    assert "in-sample" in card and f"{result['val/logloss']:.4f}" in card
    assert "python train.py experiment=demo seed=3" in card and "/home/me" not in card  # no local path
    assert "Intended use and limitations" in card and "![curves](images/curves.png)" in card


def test_predict_with_the_folder_gives_the_checkpoints_probabilities(trained, tmp_path):
    ckpt, data = trained
    folder = _export_hub(ckpt, tmp_path / "model")
    a, b = load_classifier(ckpt), load_classifier(folder)
    x = torch.randint(0, 256, (4, 3, a.hparams.image_size, a.hparams.image_size), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(a.predict_proba(x, 2, a.temperature), b.predict_proba(x, 2, b.temperature))
    common = ["num_workers=0", "device=cpu", "tta=2", f"input={data / 'test'}"]  # the folder names no local data
    by_ckpt = predict(compose_predict([f"ckpt={ckpt}", *common], output_dir=tmp_path / "p1"))
    by_folder = predict(compose_predict([f"ckpt={folder}", *common], output_dir=tmp_path / "p2"))
    assert _rows(by_ckpt) == _rows(by_folder)


def test_an_existing_folder_is_kept_unless_overwrite(trained, tmp_path):
    ckpt, _ = trained
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="exists and is not empty"):
        _export_hub(ckpt, tmp_path / "busy")
    with pytest.raises(ConfigError, match="not a catdog model folder"):
        _export_hub(ckpt, tmp_path / "busy", "overwrite=true")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    folder = _export_hub(ckpt, tmp_path / "model")
    (folder / "README.md").write_text("old card")
    _export_hub(ckpt, folder, "overwrite=true")
    assert (folder / "README.md").read_text() != "old card" and is_hub_folder(folder)
    assert not list(tmp_path.glob(".model.*"))  # no staging folder left behind


def test_a_push_without_a_token_stops_before_writing(trained, tmp_path, offline_hub):
    ckpt, _ = trained
    with pytest.raises(ConfigError, match="no Hugging Face token; run `huggingface-cli login` or set HF_TOKEN"):
        _export_hub(ckpt, tmp_path / "model", "hub.repo_id=someone/catdog-test")
    assert not (tmp_path / "model").exists()


def test_a_push_offline_stops_before_writing(trained, tmp_path, monkeypatch):
    ckpt, _ = trained
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE is set, so nothing can be pushed"):
        _export_hub(ckpt, tmp_path / "model", "hub.repo_id=someone/catdog-test")
    assert not (tmp_path / "model").exists()


class FakeApi:
    """huggingface_hub.HfApi answering as the Hub does, recording what was uploaded."""

    uploads: list = []

    def __init__(self, token=None):
        self.token = token

    def whoami(self):
        return {"name": "someone"}

    def create_repo(self, repo_id, repo_type, private, exist_ok):
        assert repo_type == "model" and exist_ok

    def upload_folder(self, folder_path, repo_id, repo_type):
        FakeApi.uploads.append((folder_path, repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
        return type("Info", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()


def test_a_push_uploads_the_written_folder(trained, tmp_path, monkeypatch):
    import huggingface_hub

    ckpt, _ = trained
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_token")
    FakeApi.uploads.clear()
    folder = _export_hub(ckpt, tmp_path / "model", "hub.repo_id=someone/catdog-test")
    assert FakeApi.uploads == [(str(folder), "someone/catdog-test", ["README.md", CONFIG_NAME, WEIGHTS_NAME])]
    assert "ckpt=hf://someone/catdog-test" in (folder / "README.md").read_text()


def test_hf_names_download_through_the_hub_cache(trained, tmp_path, monkeypatch, offline_hub):
    import huggingface_hub

    ckpt, _ = trained
    folder = _export_hub(ckpt, tmp_path / "model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="cannot download someone/nothing-here .*HF_HUB_OFFLINE is set"):
        resolve_members("hf://someone/nothing-here")
    cache = tmp_path / "snapshot"
    shutil.copytree(folder, cache)
    asked = []

    def snapshot_download(repo_id, revision=None, allow_patterns=None):
        asked.append((repo_id, revision))
        return str(cache)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert resolve_members("hf://someone/cats@v1") == [cache]
    assert resolve_members("hf-hub:someone/cats") == [cache]
    assert asked == [("someone/cats", "v1"), ("someone/cats", None)]
    with pytest.raises(ConfigError, match="expected hf://OWNER/NAME"):
        resolve_members("hf://a/b/c")
