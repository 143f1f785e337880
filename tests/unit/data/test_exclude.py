"""data.exclude: the file's entries and the images they name."""

from __future__ import annotations

from pathlib import Path

import pytest

from catdog.data.exclude import check_exclude, excluded_paths, read_exclude
from catdog.errors import ConfigError, DatasetError


def _paths(root: Path) -> list[str]:
    return [str(root / "train" / n) for n in ("cat.1.jpg", "dog.1.jpg", "cat.2.jpg")] + [
        str(root / "train" / "Cat" / "0.png"), str(root / "train" / "Dog" / "0.png"),
    ]  # fmt: skip


def test_entries_name_images_by_path_train_path_or_unique_id(tmp_path):
    listing = tmp_path / "drop.txt"
    listing.write_text("# mislabelled\ntrain/cat.1.jpg\n\ndog.1.jpg   # by its path under train/\ncat.2\nCat/0.png\n")
    entries = read_exclude(listing)
    assert entries == ["train/cat.1.jpg", "dog.1.jpg", "cat.2", "Cat/0.png"]
    found = excluded_paths(entries, _paths(tmp_path), tmp_path, str(listing))
    assert found == set(_paths(tmp_path)[:4])


def test_a_label_issues_csv_cut_to_its_top_rows_works_as_a_list(tmp_path):
    table = tmp_path / "top.csv"
    table.write_text("rank,path,label\n1,train/dog.1.jpg,dog\n2,train/cat.2.jpg,cat\n")
    assert excluded_paths(read_exclude(table), _paths(tmp_path), tmp_path, "top.csv") == set(_paths(tmp_path)[1:3])
    bad = tmp_path / "bad.csv"
    bad.write_text("rank,file\n1,x\n")
    with pytest.raises(DatasetError, match="'path' or an 'id' column"):
        read_exclude(bad)


def test_unknown_and_ambiguous_entries_are_errors_listing_them(tmp_path):
    with pytest.raises(DatasetError, match=r"2 of 3 entries name no labelled image .*cat\.9, dog\.7"):
        excluded_paths(["cat.9", "cat.1", "dog.7"], _paths(tmp_path), tmp_path, "drop.txt")
    with pytest.raises(DatasetError, match="more than one image .*'0'"):
        excluded_paths(["0"], _paths(tmp_path), tmp_path, "drop.txt")
    with pytest.raises(DatasetError, match="no such file"):
        read_exclude(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(DatasetError, match="lists no image"):
        read_exclude(empty)


def test_check_exclude_refuses_a_missing_file_before_anything_is_read(tmp_path):
    with pytest.raises(ConfigError, match=f"data.exclude={tmp_path / 'drop.txt'}: no such file"):
        check_exclude(str(tmp_path / "drop.txt"))
    with pytest.raises(ConfigError, match="must be the path of a file"):
        check_exclude(["a.jpg"])
