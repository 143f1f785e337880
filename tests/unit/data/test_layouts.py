"""catdog/data/layouts.py: dataset layouts and their errors."""

import pytest

from catdog.data.layouts import detect_layout, find_unlabelled, image_ids, read_labelled
from catdog.errors import DatasetError
from tests.conftest import make_class_folders, make_flat, make_image


def test_flat_kaggle_layout(tmp_path):
    root = make_flat(tmp_path, per_class=3, test=2)
    layout = detect_layout(root)
    assert layout.layout == "flat" and layout.validation is None
    assert layout.train.classes == ["cat", "dog"]
    assert sorted(layout.train.labels) == [0, 0, 0, 1, 1, 1]
    for path, label in zip(layout.train.paths, layout.train.labels):
        assert path.split("/")[-1].startswith(["cat", "dog"][label])


def test_keras_train_validation_folders(tmp_path):
    root = make_class_folders(tmp_path, per_class=4)
    layout = detect_layout(root)
    assert layout.layout == "folders"
    assert layout.train.classes == layout.validation.classes == ["cat", "dog"]
    assert len(layout.train) == 8 and len(layout.validation) == 4


def test_single_labelled_folder_without_validation(tmp_path):
    root = make_class_folders(tmp_path, per_class=4, validation=False)
    layout = detect_layout(root)
    assert layout.layout == "class_folders" and layout.validation is None


def test_more_than_two_classes_sorted(tmp_path):
    root = make_class_folders(tmp_path, per_class=2, classes=("zebra", "ant", "moose"), validation=False)
    assert detect_layout(root).train.classes == ["ant", "moose", "zebra"]


def test_missing_root(tmp_path):
    with pytest.raises(DatasetError, match="not found.*nope"):
        detect_layout(tmp_path / "nope")


def test_missing_train_folder(tmp_path):
    (tmp_path / "test").mkdir()
    with pytest.raises(DatasetError, match="no train/ folder"):
        detect_layout(tmp_path)


def test_no_images(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "notes.txt").write_text("hi")
    with pytest.raises(DatasetError, match="no images"):
        detect_layout(tmp_path)


def test_one_class_only(tmp_path):
    for i in range(3):
        make_image(tmp_path / "train" / f"cat.{i}.jpg")
    with pytest.raises(DatasetError, match="only one class"):
        detect_layout(tmp_path)


def test_empty_class_folder(tmp_path):
    make_image(tmp_path / "train" / "cat" / "1.jpg")
    (tmp_path / "train" / "dog").mkdir()
    with pytest.raises(DatasetError, match=r"train/dog holds no images"):
        detect_layout(tmp_path)


def test_unknown_layout_flat_without_class_prefix(tmp_path):
    make_image(tmp_path / "train" / "1.jpg")
    make_image(tmp_path / "train" / "2.jpg")
    with pytest.raises(DatasetError, match="unknown layout"):
        detect_layout(tmp_path)


def test_unknown_layout_images_and_folders(tmp_path):
    make_image(tmp_path / "train" / "cat.1.jpg")
    make_image(tmp_path / "train" / "dog" / "1.jpg")
    with pytest.raises(DatasetError, match="unknown layout"):
        detect_layout(tmp_path)


def test_validation_classes_must_match(tmp_path):
    root = make_class_folders(tmp_path, per_class=2, validation=False)
    make_image(root / "validation" / "cat" / "1.jpg")
    make_image(root / "validation" / "bird" / "1.jpg")
    with pytest.raises(DatasetError, match="bird"):
        detect_layout(root)


def test_flat_validation_with_flat_train(tmp_path):
    root = make_flat(tmp_path, per_class=2, test=0)
    make_image(root / "validation" / "cat.9.jpg")
    make_image(root / "validation" / "dog.9.jpg", 1)
    layout = detect_layout(root)
    assert layout.layout == "folders" and len(layout.validation) == 2


def test_unlabelled_direct_and_nested(tmp_path):
    make_image(tmp_path / "a" / "10.jpg")
    make_image(tmp_path / "a" / "2.jpg")
    assert [p.name for p in find_unlabelled(tmp_path / "a")] == ["10.jpg", "2.jpg"]
    make_image(tmp_path / "b" / "test" / "x.png")
    assert [p.name for p in find_unlabelled(tmp_path / "b")] == ["x.png"]
    assert find_unlabelled(tmp_path / "a" / "2.jpg")[0].name == "2.jpg"


def test_unlabelled_errors(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        find_unlabelled(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        find_unlabelled(tmp_path / "empty")


def test_duplicate_ids_named(tmp_path):
    a = make_image(tmp_path / "1.jpg")
    b = make_image(tmp_path / "1.png")
    with pytest.raises(DatasetError, match="share the id '1'"):
        image_ids([a, b])


def test_read_labelled_rejects_unknown_class(tmp_path):
    make_image(tmp_path / "cat.1.jpg")
    make_image(tmp_path / "fox.1.jpg")
    with pytest.raises(DatasetError, match="fox"):
        read_labelled(tmp_path, classes=["cat", "dog"])
