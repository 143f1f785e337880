"""catdog/data/demo.py: the generated demo dataset."""

import pytest

from catdog.data.demo import make_demo_dataset
from catdog.data.layouts import detect_layout
from catdog.errors import DatasetError


def test_demo_dataset_is_flat_kaggle_layout_and_reused(tmp_path):
    root = make_demo_dataset(tmp_path / "demo", per_class=5, test=3)
    layout = detect_layout(root)
    assert layout.layout == "flat" and layout.train.classes == ["cat", "dog"] and len(layout.train) == 10
    assert len(list((root / "test").iterdir())) == 3
    stamp = (root / "train" / "cat.0.jpg").stat().st_mtime_ns
    make_demo_dataset(root, per_class=5, test=3)
    assert (root / "train" / "cat.0.jpg").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # no temporary folder left behind


def test_demo_fills_an_empty_folder_and_refuses_a_file(tmp_path):
    (tmp_path / "empty").mkdir()
    root = make_demo_dataset(tmp_path / "empty", per_class=2, test=1)
    assert len(list((root / "train").iterdir())) == 4
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match=r"data\.dir=.*file is a file"):
        make_demo_dataset(tmp_path / "file", per_class=2, test=1)
