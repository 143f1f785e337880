"""data.csv: a dataset described by a CSV of image paths and labels, with the user's folds or split."""

from __future__ import annotations

import pytest

from catdog.data.csv_data import (
    check_csv_config,
    check_user_folds,
    check_user_split,
    read_csv_dataset,
    read_csv_images,
)
from catdog.data.datamodule import CatDogDataModule
from catdog.errors import ConfigError, DatasetError
from tests.conftest import make_csv_data, make_image


def test_rows_give_paths_labels_classes_and_the_user_columns(tmp_path):
    rows = [(f"img/{i}.png", ["10", "2"][i % 2], i % 3, "val" if i < 2 else "train") for i in range(6)]
    path = make_csv_data(tmp_path, rows, header="image,label,fold,split")
    table = read_csv_dataset(path, tmp_path)
    assert table.images.classes == ["2", "10"]  # integers sorted as numbers
    assert table.images.paths == [str(tmp_path / f"img/{i}.png") for i in range(6)]
    assert table.images.labels == [1, 0, 1, 0, 1, 0]
    assert table.folds == [0, 1, 2, 0, 1, 2] and table.splits == ["val", "val", "train", "train", "train", "train"]
    paths, ids = read_csv_images(path, tmp_path)
    assert ids == [f"img/{i}.png" for i in range(6)] and paths == table.images.paths


def test_column_names_are_configurable_and_other_columns_ignored(tmp_path):
    path = make_csv_data(tmp_path, [("a.png", "cat", "x"), ("b.png", "dog", "y")], header="file,species,notes")
    table = read_csv_dataset(path, tmp_path, {"image": "file", "label": "species"})
    assert table.images.classes == ["cat", "dog"] and table.folds is None and table.splits is None
    with pytest.raises(DatasetError, match=r"no column 'image', 'label' \(columns: \['file', 'species', 'notes'\]\)"):
        read_csv_dataset(path, tmp_path)


@pytest.mark.parametrize(
    "rows, header, message",
    [
        ([("a.png", "cat"), ("missing1.png", "dog"), ("missing2.png", "cat")], "image,label",
         r"column 'image': 2 row\(s\) name a file that is not in .* \(line 3: 'missing1.png', line 4: "),
        ([("a.png", "cat"), ("b.png", "dog"), ("./a.png", "cat")], "image,label",
         r"list an image a second time \(line 4: './a.png, as on line 2'\)"),
        ([("a.png", "cat"), ("b.png", "")], "image,label", r"column 'label': 1 row\(s\) have no label \(line 3"),
        ([("a.png", "cat"), ("b.png", "cat")], "image,label", "only one class"),
        ([("a.png", "cat", "0"), ("b.png", "dog", "one")], "image,label,fold",
         r"hold no fold number such as 0 or 1 \(line 3: 'one'\)"),
        ([("a.png", "cat", "val"), ("b.png", "dog", "dev")], "image,label,split",
         r"neither 'train' nor 'val' \(line 3"),
    ],
)  # fmt: skip
def test_bad_rows_are_errors_naming_the_column_and_lines(tmp_path, rows, header, message):
    for name in ("a.png", "b.png"):
        make_image(tmp_path / name, 0)
    lines = [header, *(",".join(r) for r in rows)]
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=message):
        read_csv_dataset(tmp_path / "labels.csv", tmp_path)


def test_labels_outside_the_checkpoint_classes_are_refused(tmp_path):
    path = make_csv_data(tmp_path, [("a.png", "cat"), ("b.png", "fox")])
    with pytest.raises(DatasetError, match=r"not one of the classes \['cat', 'dog'\] \(line 3: 'fox'\)"):
        read_csv_dataset(path, tmp_path, classes=["cat", "dog"])


def test_user_folds_and_split_must_fill_every_side():
    with pytest.raises(DatasetError, match=r"holds folds \[0, 2\], but data.folds=3 needs every fold 0..2"):
        check_user_folds([0, 2, 2], 3, "x.csv")
    assert check_user_split(["train", "val", "train"], "x.csv") == ([0, 2], [1])
    with pytest.raises(DatasetError, match="0 in val"):
        check_user_split(["train", "train"], "x.csv")


def test_check_csv_config_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="data.csv=.*: no such file"):
        check_csv_config(str(tmp_path / "nope.csv"), None)
    with pytest.raises(ConfigError, match="data.csv_columns has unknown key"):
        check_csv_config(None, {"images": "file"})
    with pytest.raises(ConfigError, match="data.csv_columns.label must be a column name"):
        check_csv_config(None, {"label": ""})
    with pytest.raises(ConfigError, match="data.csv_outside_dir must be true or false, got 'yes'"):
        check_csv_config(None, None, "yes")


def _outside_data_dir(tmp_path):
    """(data.dir, the rows that name images in it in other ways, the rows that lead out of it): a subfolder, an
    absolute path inside, a ``..`` that comes back, a link to an image inside, and data.dir reached through a link;
    then ``../x``, an absolute path elsewhere, a link under data.dir to an image outside and a linked folder."""
    real = tmp_path / "real"
    for name in ("top.png", "sub/deep.png", "sub/other.png", "target.png"):
        make_image(real / name, 0)
    root = tmp_path / "data"
    root.symlink_to(real, target_is_directory=True)
    (real / "alias.png").symlink_to(real / "target.png")
    elsewhere = tmp_path / "elsewhere"
    for name in ("outside.png", "abs.png", "linked.png", "dir/x.png"):
        make_image(elsewhere / name, 1)
    (real / "escape.png").symlink_to(elsewhere / "linked.png")
    (real / "door").symlink_to(elsewhere / "dir", target_is_directory=True)
    inside = ["top.png", "sub/deep.png", str(root / "sub" / "other.png"), "sub/../target.png", "alias.png"]
    outside = ["../elsewhere/outside.png", str(elsewhere / "abs.png"), "escape.png", "door/x.png"]
    return root, inside, outside


def test_rows_outside_data_dir_are_refused_unless_allowed(tmp_path):
    root, inside, outside = _outside_data_dir(tmp_path)
    rows = [*inside[:2], *outside, *inside[2:]]
    path = root / "labels.csv"
    path.write_text("image,label\n" + "".join(f"{v},{['cat', 'dog'][i % 2]}\n" for i, v in enumerate(rows)))
    shown = ", ".join(f"line {i + 4}: {v!r}" for i, v in enumerate(outside[:3]))
    message = (
        f"{path}, column 'image': 4 row(s) name an image outside {root} (data.dir; symlinks followed) ({shown} and 1 "
        "more); images must lie under data.dir, or set data.csv_outside_dir=true to read them from anywhere"
    )
    for read in (read_csv_dataset, read_csv_images):
        with pytest.raises(DatasetError) as refused:
            read(path, root)
        assert str(refused.value) == message
    assert read_csv_dataset(path, root, outside_dir=True).images.paths == [str(root / v) for v in rows]
    assert read_csv_images(path, root, outside_dir=True)[1] == rows
    for value in outside:  # each way out on its own
        path.write_text(f"image,label\n{inside[0]},cat\n{value},dog\n")
        with pytest.raises(DatasetError, match=f"1 row\\(s\\) name an image outside .*line 3: {value!r}"):
            read_csv_dataset(path, root)
    path.write_text("image,label\n" + "".join(f"{v},{['cat', 'dog'][i % 2]}\n" for i, v in enumerate(inside)))
    assert read_csv_dataset(path, root).images.paths == [str(root / v) for v in inside]
    assert read_csv_images(path, tmp_path / "real")[0] == [str(tmp_path / "real" / v) for v in inside]


def test_datamodule_uses_the_user_split_or_folds(tmp_path):
    rows = [(f"img/{i}.png", ["cat", "dog"][i % 2], i % 2 if i < 8 else 2, "val" if i in (0, 1, 5) else "train")
            for i in range(12)]  # fmt: skip
    path = make_csv_data(tmp_path, rows, header="image,label,fold,split")
    single = CatDogDataModule(dir=str(tmp_path), csv=str(path), image_size=32, num_workers=0)
    single.setup("fit")
    assert single.val_set.paths == [str(tmp_path / f"img/{i}.png") for i in (0, 1, 5)]
    assert len(single.train_set) == 9
    kfold = CatDogDataModule(dir=str(tmp_path), csv=str(path), image_size=32, num_workers=0, folds=3, fold=2)
    kfold.setup("fit")
    assert kfold.val_set.paths == [str(tmp_path / f"img/{i}.png") for i in range(8, 12)]
    assert kfold.fold_assignment == [r[2] for r in rows]
    plain = make_csv_data(tmp_path, [r[:2] for r in rows], name="plain.csv")
    random = CatDogDataModule(dir=str(tmp_path), csv=str(plain), image_size=32, num_workers=0, val_fraction=0.25)
    random.setup("fit")
    assert len(random.val_set) == 4 and sorted(random.val_set.labels) == [0, 0, 1, 1]  # stratified


def test_datamodule_reads_images_outside_data_dir_only_when_allowed(tmp_path):
    rows = [(f"img/{i}.png", ["cat", "dog"][i % 2]) for i in range(8)] + [("../far/x.png", "dog")]
    path = make_csv_data(tmp_path / "data", rows)
    refused = CatDogDataModule(dir=str(tmp_path / "data"), csv=str(path), image_size=32, num_workers=0)
    with pytest.raises(DatasetError, match=r"1 row\(s\) name an image outside .*line 10: '../far/x.png'"):
        refused.setup("fit")
    allowed = CatDogDataModule(
        dir=str(tmp_path / "data"), csv=str(path), image_size=32, num_workers=0, csv_outside_dir=True
    )
    allowed.setup("fit")
    assert str(tmp_path / "data" / "../far/x.png") in allowed.train_set.paths + allowed.val_set.paths
