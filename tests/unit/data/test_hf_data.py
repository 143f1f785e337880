"""data.hf: a Hugging Face datasets dataset (save_to_disk folder, imagefolder folder, Hub name) as the data source."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catdog.data import hf_data
from catdog.data.datamodule import CatDogDataModule, check_data_config
from catdog.data.hf_data import HfDataset, check_hf_config, check_hf_input, data_root, hf_input, parse_hf_input
from catdog.data.splits import content_groups, kfold_assignments
from catdog.errors import BadImageError, ConfigError, DatasetError
from tests.conftest import extra_marks

pytestmark = extra_marks("hf", "datasets")

#: The ClassLabel names, in an order that is not the sorted one.
NAMES = ["dog", "cat"]


def jpeg(label: int, seed: int, size: int = 32) -> bytes:
    """A tiny JPEG whose colour depends on ``label``."""
    rng = np.random.default_rng(seed)
    base = np.array([200, 60, 60]) if label == 0 else np.array([60, 60, 200])
    arr = np.clip(base + rng.normal(0, 20, size=(size, size, 3)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(arr).save(out, "JPEG")
    return out.getvalue()


def split_rows(n_per_class: int, offset: int = 0, corrupt: int | None = None) -> dict:
    """Rows of a labelled split: ``n_per_class`` images of each class; row ``corrupt`` holds bytes no decoder takes."""
    labels = [i % 2 for i in range(2 * n_per_class)]
    images = [{"bytes": jpeg(y, offset + i), "path": None} for i, y in enumerate(labels)]
    if corrupt is not None:
        images[corrupt] = {"bytes": b"\xff\xd8\xff not a jpeg at all", "path": "broken.jpg"}
    return {"image": images, "label": labels}


def make_dataset(splits: dict, names=NAMES):
    """A DatasetDict (or, for ``{"": rows}``, one Dataset) with an Image column and a ClassLabel of ``names``."""
    import datasets

    def one(rows):
        features = {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(names))}
        features.update({k: datasets.Value("string") for k in rows if k not in features})
        return datasets.Dataset.from_dict(rows, features=datasets.Features(features))

    if list(splits) == [""]:
        return one(splits[""])
    return datasets.DatasetDict({name: one(rows) for name, rows in splits.items()})


def unlabelled_rows(n: int = 6) -> dict:
    return {
        "image": [{"bytes": jpeg(i % 2, 900 + i), "path": None} for i in range(n)],
        "id": [f"t{i}" for i in range(n)],
    }


@pytest.fixture
def saved_dict(tmp_path) -> Path:
    """train (12 per class, row 5 corrupt), validation (4 per class) and test (6 rows with ids, no labels)."""
    dd = make_dataset({"train": split_rows(12, corrupt=5), "validation": split_rows(4, offset=100)})
    import datasets

    test = datasets.Dataset.from_dict(unlabelled_rows(), features=datasets.Features(
        {"image": datasets.Image(), "id": datasets.Value("string")}))  # fmt: skip
    dd["test"] = test
    dd.save_to_disk(str(tmp_path / "saved"))
    return tmp_path / "saved"


def datamodule(source, tmp_path, **kwargs) -> CatDogDataModule:
    return CatDogDataModule(
        dir=str(tmp_path / "unused"), hf=str(source), cache_dir=str(tmp_path / "cache"), image_size=32,
        batch_size=4, num_workers=0, **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize("cache, pipeline", [(False, "workers"), (True, "workers"), (False, "device")])
def test_dataset_dict_splits_classes_and_a_bad_image(saved_dict, tmp_path, cache, pipeline):
    dm = datamodule(saved_dict, tmp_path, cache=cache, pipeline=pipeline)
    dm.setup()
    assert dm.classes == NAMES  # the ClassLabel's order, not the sorted names
    root = dm.root
    assert root.parent == tmp_path / "cache" / "hf" and root.name.startswith("saved-")
    # the validation split is the validation set, whole; train is the train split less the corrupt row
    assert sorted(dm.val_set.paths) == sorted(str(root / "validation" / f"{i}.jpg") for i in range(8))
    assert dm.val_set.labels == [i % 2 for i in range(8)]
    assert len(dm.train_set) == 23 and str(root / "train" / "5.jpg") not in dm.train_set.paths
    assert [p for p, _ in dm.bad_images] == [str(root / "train" / "5.jpg")]
    # the bytes as they were, nothing re-encoded
    assert (root / "train" / "0.jpg").read_bytes() == jpeg(0, 0)
    # the test split written with its ids as the file names (what pseudo-labels and predictions use)
    assert sorted(p.name for p in (root / "test").glob("*.jpg")) == [f"t{i}.jpg" for i in range(6)]
    x, labels, _ = next(iter(dm.train_dataloader()))
    assert len(labels) == 4 and x.shape[0] == 4
    assert (dm.cache is not None) == (cache or pipeline == "device")


def test_bad_image_error_policy_stops(saved_dict, tmp_path):
    dm = datamodule(saved_dict, tmp_path, on_bad_image="error")
    with pytest.raises(BadImageError, match=r"1 unreadable image\(s\) \(data.on_bad_image=error\)"):
        dm.setup()


def test_one_dataset_gets_catdogs_split_and_folds_as_folders_do(tmp_path):
    make_dataset({"": split_rows(12)}).save_to_disk(str(tmp_path / "plain"))
    dm = datamodule(tmp_path / "plain", tmp_path, val_fraction=0.25, seed=3)
    dm.setup()
    assert len(dm.val_set) == 6 and len(dm.train_set) == 18 and dm.classes == NAMES
    assert sorted(dm.val_set.labels) == [0, 0, 0, 1, 1, 1]  # stratified
    folds = []
    for fold in (0, 1):
        dm = datamodule(tmp_path / "plain", tmp_path, folds=2, fold=fold, seed=3)
        dm.setup()
        folds.append(set(dm.val_set.paths))
        everything = dm.all_labelled
    assert not folds[0] & folds[1] and len(folds[0] | folds[1]) == 24
    expected = kfold_assignments(everything.labels, 2, 3, content_groups(everything.paths))
    assert dm.fold_assignment == expected  # the folds catdog makes for a folder of the same images


def test_kfold_with_a_validation_split_folds_both_together(saved_dict, tmp_path):
    dm = datamodule(saved_dict, tmp_path, folds=2, fold=0)
    dm.setup()
    assert len(dm.all_labelled) == 23 + 8  # train (less the corrupt row) and validation


def test_imagefolder_folder_read_through_load_dataset(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    folder = tmp_path / "imf"
    for split, n in (("train", 6), ("validation", 2)):
        for cls, label in (("tabby", 0), ("beagle", 1)):
            (folder / split / cls).mkdir(parents=True)
            for i in range(n):
                (folder / split / cls / f"{cls}{i}.jpg").write_bytes(jpeg(label, 10 * label + i))
    dm = datamodule(folder, tmp_path)
    dm.setup()
    assert dm.classes == ["beagle", "tabby"]
    assert len(dm.train_set) == 12 and len(dm.val_set) == 4
    written = sorted(Path(p).read_bytes() for p in dm.train_set.paths)
    assert written == sorted(p.read_bytes() for p in (folder / "train").rglob("*.jpg"))


def test_renamed_columns_plain_labels_sorted_and_a_missing_column_named(tmp_path):
    import datasets

    rows = {"picture": [jpeg(i % 2, i) for i in range(8)], "species": ["10", "2"] * 4}
    features = datasets.Features({"picture": datasets.Value("binary"), "species": datasets.Value("string")})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "cols"))
    dm = datamodule(tmp_path / "cols", tmp_path, hf_columns={"image": "picture", "label": "species"})
    dm.setup()
    assert dm.classes == ["2", "10"]  # plain values sorted as a CSV's (integers as numbers)
    missing = r"data.hf_columns.label: no column 'label' in split 'train' of .*cols \(columns: \['picture', 'species'\]"
    with pytest.raises(ConfigError, match=missing):
        datamodule(tmp_path / "cols", tmp_path, hf_columns={"image": "picture"}).setup()
    with pytest.raises(ConfigError, match=r"data.hf_columns.image: column 'species' of split 'train' .* not images"):
        datamodule(tmp_path / "cols", tmp_path, hf_columns={"image": "species", "label": "species"}).setup()


def test_no_train_split_names_the_splits(tmp_path):
    make_dataset({"training": split_rows(2), "test": split_rows(1)}).save_to_disk(str(tmp_path / "odd"))
    with pytest.raises(DatasetError, match=r"has no 'train' split \(splits: \['test', 'training'\]\)"):
        datamodule(tmp_path / "odd", tmp_path).setup()


def test_offline_hub_name_not_in_the_cache_says_what_to_do(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = datasets.config.HF_HUB_OFFLINE
    with pytest.raises(DatasetError, match=r"data.hf=nobody-here/not-a-cached-set: no such folder, and offline") as e:
        HfDataset("nobody-here/not-a-cached-set", None, tmp_path / "cache")
    assert "download it once with a network" in str(e.value) and "save_to_disk" in str(e.value)
    assert datasets.config.HF_HUB_OFFLINE is before  # the library's setting put back


def test_written_folder_is_reused_and_a_changed_dataset_written_anew(saved_dict, tmp_path):
    first = HfDataset(str(saved_dict), None, tmp_path / "cache")
    rows = first.split("train")
    stamps = {p: os.stat(p).st_mtime_ns for p in [*rows.paths, str(first.root / "train" / "rows.json")]}
    again = HfDataset(str(saved_dict), None, tmp_path / "cache")
    assert again.root == first.root and again.split("train").paths == rows.paths
    assert {p: os.stat(p).st_mtime_ns for p in stamps} == stamps  # nothing written again
    make_dataset({"train": split_rows(3, offset=50)}).save_to_disk(str(tmp_path / "saved2"))
    changed = tmp_path / "saved"
    import shutil

    shutil.rmtree(changed)
    shutil.copytree(tmp_path / "saved2", changed)
    after = HfDataset(str(changed), None, tmp_path / "cache")
    assert after.root != first.root and len(after.split("train").paths) == 6
    # another image column is another folder too
    assert HfDataset(str(changed), {"label": "label", "id": "name"}, tmp_path / "cache").root != after.root


def test_interrupted_writes_are_not_trusted(saved_dict, tmp_path, monkeypatch):
    hf = HfDataset(str(saved_dict), None, tmp_path / "cache")
    calls = []

    def fail_late(data, path):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return ".jpg"

    monkeypatch.setattr(hf_data, "_extension", fail_late)
    with pytest.raises(KeyboardInterrupt):
        hf.split("train")
    assert not (hf.root / "train").exists() and list(hf.root.iterdir()) == []  # no half folder left
    monkeypatch.undo()
    (hf.root / "train").mkdir()
    (hf.root / "train" / "0.jpg").write_bytes(b"half")  # a folder without rows.json: written anew
    assert len(hf.split("train").paths) == 24 and (hf.root / "train" / "0.jpg").read_bytes() == jpeg(0, 0)


def test_unsafe_or_repeated_ids_fall_back_to_row_numbers(tmp_path, caplog):
    rows = {**unlabelled_rows(3), "label": [0, 1, 0]}
    rows["id"] = ["a/b", "c", "d"]
    make_dataset({"train": {**split_rows(2)}, "test": rows}).save_to_disk(str(tmp_path / "ids"))
    hf = HfDataset(str(tmp_path / "ids"), None, tmp_path / "cache")
    assert hf.split("test").ids == ["0", "1", "2"]
    assert "data.hf_columns.id: column 'id' of split 'test'" in caplog.text and "'a/b'" in caplog.text


def test_prediction_input_ids_and_labels(saved_dict, tmp_path):
    paths, labels, ids = hf_input(f"hf:{saved_dict}", None, tmp_path / "cache", NAMES, labelled=False)
    assert ids == [f"t{i}" for i in range(6)] and labels is None
    assert [Path(p).stem for p in paths] == ids
    paths, labels, ids = hf_input(f"hf:{saved_dict}:validation", None, tmp_path / "cache", NAMES, labelled=True)
    assert ids == [str(i) for i in range(8)] and labels == [i % 2 for i in range(8)]
    with pytest.raises(DatasetError, match=r"split 'test' has no labels"):
        hf_input(f"hf:{saved_dict}", None, tmp_path / "cache", NAMES, labelled=True)
    with pytest.raises(DatasetError, match=r"has no split 'dev' \(splits: \['test', 'train', 'validation'\]\)"):
        hf_input(f"hf:{saved_dict}:dev", None, tmp_path / "cache", NAMES, labelled=False)


def test_input_syntax(tmp_path):
    assert parse_hf_input("hf:someone/cats:validation") == ("someone/cats", "validation")
    assert parse_hf_input("hf:someone/cats") == ("someone/cats", None)
    odd = tmp_path / "a:b"
    odd.mkdir()
    assert parse_hf_input(f"hf:{odd}") == (str(odd), None)  # an existing folder is taken whole
    with pytest.raises(ConfigError, match="input=hf:: name a dataset after hf:"):
        check_hf_input("hf:", None)
    with pytest.raises(ConfigError, match=r"data.hf_columns has unknown key\(s\) \['path'\]"):
        check_hf_input(None, {"path": "x"})


@pytest.mark.parametrize(
    "hf, columns, csv, message",
    [
        ("x", None, "labels.csv", "data.hf=x and data.csv=labels.csv are two data sources: set one of them"),
        (3, None, None, "data.hf must be a dataset folder .* got 3"),
        ("x", {"image": ""}, None, "data.hf_columns.image must be a column name, got ''"),
        (None, {"labels": "y"}, None, r"data.hf_columns has unknown key\(s\) \['labels'\]"),
    ],
)
def test_config_errors_name_the_key(hf, columns, csv, message):
    with pytest.raises(ConfigError, match=message):
        check_hf_config(hf, columns, csv)


def test_data_config_check_covers_the_hf_keys():
    with pytest.raises(ConfigError, match=r"data.hf_columns has unknown key\(s\) \['x'\]"):
        check_data_config(32, 4, 0.2, None, None, "skip", "full", hf="x", hf_columns={"x": "y"})


def test_without_datasets_the_error_names_the_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)
    with pytest.raises(ConfigError, match=r'data.hf reads Hugging Face datasets, .*pip install -e ".\[hf\]"'):
        check_hf_config("someone/cats", None)


def test_rows_json_records_the_class_names(saved_dict, tmp_path):
    hf = HfDataset(str(saved_dict), None, tmp_path / "cache")
    hf.split("train")
    record = json.loads((hf.root / "train" / "rows.json").read_text())
    assert record["classes"] == NAMES and record["labels"][:2] == ["dog", "cat"]


def test_data_root_is_the_written_folder_and_is_written_again_when_deleted(saved_dict, tmp_path):
    import shutil

    settings = {"dir": "data", "hf": str(saved_dict), "hf_columns": None, "cache_dir": str(tmp_path / "cache")}
    root = data_root(settings)
    assert root == HfDataset(str(saved_dict), None, tmp_path / "cache").root
    shutil.rmtree(root)
    assert data_root(settings) == root and (root / "train" / "rows.json").is_file() and (root / "test").is_dir()
    assert data_root({"dir": "data", "hf": None}) == "data"


def test_prediction_needs_no_train_split_and_takes_the_only_split(tmp_path):
    import datasets

    features = datasets.Features({"image": datasets.Image(), "id": datasets.Value("string")})
    datasets.Dataset.from_dict(unlabelled_rows(4), features=features).save_to_disk(str(tmp_path / "one"))
    _, _, ids = hf_input(f"hf:{tmp_path / 'one'}", None, tmp_path / "cache", NAMES, labelled=False)
    assert ids == ["t0", "t1", "t2", "t3"]
    two = datasets.DatasetDict(a=datasets.Dataset.from_dict(unlabelled_rows(2), features=features))
    two["b"] = two["a"]
    two.save_to_disk(str(tmp_path / "two"))
    with pytest.raises(
        DatasetError, match=r"has no 'test' split \(splits: \['a', 'b'\]\); name one: input=hf:.*:SPLIT"
    ):
        hf_input(f"hf:{tmp_path / 'two'}", None, tmp_path / "cache", NAMES, labelled=False)
    assert hf_input(f"hf:{tmp_path / 'two'}:b", None, tmp_path / "cache", NAMES, labelled=False)[2] == ["t0", "t1"]
