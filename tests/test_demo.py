import pytest

from catdog.demo import make_demo_dataset
from catdog.errors import DatasetError
from catdog.layouts import detect_layout


def test_demo_dataset_is_flat_kaggle_layout_and_reused(tmp_path):
    root = make_demo_dataset(tmp_path / "demo", per_class=5, test=3)
    layout = detect_layout(root)
    assert layout.layout == "flat" and layout.train.classes == ["cat", "dog"] and len(layout.train) == 10
    assert len(list((root / "test").iterdir())) == 3
    stamp = (root / "train" / "cat.0.jpg").stat().st_mtime_ns
    make_demo_dataset(root, per_class=5, test=3)
    assert (root / "train" / "cat.0.jpg").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # no temporary folder left behind


def test_demo_never_writes_into_a_users_folder(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "cat.0.jpg").write_bytes(b"my own picture")
    with pytest.raises(DatasetError, match="not a catdog demo dataset"):
        make_demo_dataset(mine, per_class=2, test=1)
    assert (mine / "cat.0.jpg").read_bytes() == b"my own picture"
