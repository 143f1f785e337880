import json

import pytest

from catdog.data.demo import make_demo_dataset
from catdog.data.layouts import detect_layout
from catdog.errors import DatasetError
from catdog.training import train
from tests.conftest import TINY, compose_train, make_flat


def test_demo_dataset_is_flat_kaggle_layout_and_reused(tmp_path):
    root = make_demo_dataset(tmp_path / "demo", per_class=5, test=3)
    layout = detect_layout(root)
    assert layout.layout == "flat" and layout.train.classes == ["cat", "dog"] and len(layout.train) == 10
    assert len(list((root / "test").iterdir())) == 3
    stamp = (root / "train" / "cat.0.jpg").stat().st_mtime_ns
    make_demo_dataset(root, per_class=5, test=3)
    assert (root / "train" / "cat.0.jpg").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # no temporary folder left behind


def test_demo_recipe_trains_on_a_users_folder_without_writing_into_it(tmp_path):
    mine = make_flat(tmp_path / "mine", per_class=4, test=0)
    before = sorted((p.relative_to(mine), p.read_bytes()) for p in mine.rglob("*") if p.is_file())
    assert make_demo_dataset(mine, per_class=2, test=1) == mine
    cfg = compose_train(["experiment=demo", *TINY, f"data.dir={mine}"], output_dir=tmp_path / "run")
    train(cfg)
    assert json.loads((tmp_path / "run" / "result.json").read_text())["train_images"] < 8  # the user's 8 images
    assert sorted((p.relative_to(mine), p.read_bytes()) for p in mine.rglob("*") if p.is_file()) == before


def test_demo_fills_an_empty_folder_and_refuses_a_file(tmp_path):
    (tmp_path / "empty").mkdir()
    root = make_demo_dataset(tmp_path / "empty", per_class=2, test=1)
    assert len(list((root / "train").iterdir())) == 4
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match=r"data\.dir=.*file is a file"):
        make_demo_dataset(tmp_path / "file", per_class=2, test=1)
