"""catdog/data/cache.py: the decoded-image cache gives the files' pixels, is reused, invalidated, crash-safe, stores
bad images empty, serves the data module and works in worker processes."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import catdog.data.cache as cache_mod
from catdog.data.cache import DecodedCache, cache_files, cache_key, file_stats, open_cache
from catdog.data.datamodule import CatDogDataModule, ImageDataset, check_data_config, collate_skip_none, make_loader
from catdog.data.images import find_bad_images, load_image
from catdog.data.transforms import eval_resize_size, eval_transform, train_transform
from catdog.errors import BadImageError, ConfigError, DatasetError
from tests.conftest import compose_train, make_image

IMAGE_SIZE = 64


SHORT = eval_resize_size(IMAGE_SIZE, 0.875)  # 73


def _exif_rotated_jpeg(path: Path, size=(120, 90)) -> Path:
    make_image(path, 1, size=size, seed=7, fmt="PNG")
    img = Image.open(path).convert("RGB")
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(path, "JPEG", exif=exif.tobytes(), quality=92)
    return path


@pytest.fixture
def mixed_images(tmp_path) -> list[str]:
    """Sizes below, at and above the short side, both aspects, PNG and JPEG, several modes."""
    d = tmp_path / "img"
    paths = [
        make_image(d / "small.png", 0, size=(40, 36), seed=1),
        make_image(d / "small_gray.png", 1, size=(50, 30), seed=2, mode="L"),
        make_image(d / "at_short.jpg", 0, size=(SHORT, 100), seed=3),
        make_image(d / "wide.jpg", 1, size=(640, 400), seed=4),  # JPEG draft decoding applies (1/4 -> 160x100)
        make_image(d / "tall.png", 0, size=(90, 500), seed=5),
        make_image(d / "rgba.png", 1, size=(200, 150), seed=6, mode="RGBA"),
        make_image(d / "palette.png", 0, size=(81, 77), seed=8, mode="P"),
        _exif_rotated_jpeg(d / "rotated.jpg"),
        make_image(d / "square.jpg", 1, size=(300, 300), seed=9),
    ]
    return [str(p) for p in paths]


def _files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _count_decodes(monkeypatch) -> list[str]:
    calls: list[str] = []

    def counting(path, *args, **kwargs):
        calls.append(str(path))
        return load_image(path, *args, **kwargs)

    monkeypatch.setattr(cache_mod, "load_image", counting)
    return calls


def _no_decoding(monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("the cache decoded an image although a valid cache exists")

    monkeypatch.setattr(cache_mod, "load_image", fail)


# ----- pixels ------------------------------------------------------------------------------------------------------
def test_eval_preprocessing_from_cache_equals_the_files(mixed_images, tmp_path):
    cache = open_cache(mixed_images, SHORT, tmp_path / "cache")
    assert cache.bad == [] and len(cache) == len(mixed_images)
    t = eval_transform(IMAGE_SIZE)
    for i, p in enumerate(mixed_images):
        stored = cache.array(i)
        assert stored.dtype == np.uint8 and stored.ndim == 3 and stored.shape[2] == 3
        assert min(stored.shape[:2]) <= SHORT
        from_file = t(load_image(p, draft_size=SHORT))
        from_cache = t(cache.get(i))
        assert torch.equal(from_cache, from_file), p  # bit-identical, not approximately equal


def test_small_images_are_stored_as_decoded_and_large_ones_shrunk(mixed_images, tmp_path):
    cache = open_cache(mixed_images, SHORT, tmp_path / "cache")
    for i, p in enumerate(mixed_images):
        decoded = load_image(p, draft_size=SHORT)
        if min(decoded.size) <= SHORT:
            assert np.array_equal(cache.array(i), np.asarray(decoded)), p
        else:
            w, h = decoded.size
            assert min(cache.array(i).shape[:2]) == SHORT, p
            got_h, got_w = cache.array(i).shape[:2]
            assert (got_w > got_h) == (w > h) or w == h  # aspect kept
    rotated = mixed_images.index(next(p for p in mixed_images if p.endswith("rotated.jpg")))
    assert cache.array(rotated).shape[:2] == (97, 73)  # EXIF orientation applied: 120x90 -> 90x120 -> 73x97
    assert cache.nbytes == sum(cache.array(i).size for i in range(len(cache)))


def test_train_samples_from_cache_equal_the_files_for_images_up_to_the_short_side(mixed_images, tmp_path):
    small = [p for p in mixed_images if min(load_image(p, draft_size=SHORT).size) <= SHORT]
    assert len(small) >= 3
    cache = open_cache(small, SHORT, tmp_path / "cache")
    t = train_transform(IMAGE_SIZE, rotation=10, color_jitter=0.2)
    from_files = ImageDataset(small, [0] * len(small), t, draft_size=SHORT, seed=3)
    from_cache = ImageDataset(small, [0] * len(small), t, draft_size=SHORT, seed=3, cache=cache)
    for index in range(3 * len(small)):  # three epochs' worth of (seed, epoch, index) augmentations
        assert torch.equal(from_files[index][0], from_cache[index][0])


# ----- reuse and invalidation --------------------------------------------------------------------------------------
def test_second_open_reuses_the_cache_without_decoding(mixed_images, tmp_path, monkeypatch):
    first = open_cache(mixed_images, SHORT, tmp_path / "cache")
    key = cache_key(file_stats(mixed_images), SHORT)
    data, index = cache_files(tmp_path / "cache", key)
    assert data.is_file() and index.is_file()
    assert data.stat().st_size == first.nbytes
    with np.load(index, allow_pickle=False) as z:  # plain arrays only
        assert set(z.files) == {"meta", "offsets", "heights", "widths", "bad_rows", "bad_reasons"}
    _no_decoding(monkeypatch)
    again = open_cache(mixed_images, SHORT, tmp_path / "cache")
    assert again.data_path == first.data_path
    for i in range(len(mixed_images)):
        assert np.array_equal(again.array(i), first.array(i))


def test_a_changed_file_or_another_short_side_rebuilds(mixed_images, tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    first = open_cache(mixed_images, SHORT, folder)
    calls = _count_decodes(monkeypatch)

    victim = mixed_images[0]
    make_image(victim, 1, size=(40, 36), seed=99, fmt="PNG")  # new content, same size on disk or not
    st = os.stat(victim)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # even within the mtime resolution
    changed = open_cache(mixed_images, SHORT, folder)
    assert len(calls) == len(mixed_images)
    assert changed.data_path != first.data_path
    assert np.array_equal(changed.array(0), np.asarray(load_image(victim)))
    assert not np.array_equal(changed.array(0), first.array(0))

    calls.clear()
    os.utime(mixed_images[1])  # touched only: rebuilt as well
    open_cache(mixed_images, SHORT, folder)
    assert len(calls) == len(mixed_images)

    calls.clear()
    other = open_cache(mixed_images, SHORT + 10, folder)
    assert len(calls) == len(mixed_images) and other.short_side == SHORT + 10

    calls.clear()
    open_cache(mixed_images[:-1], SHORT, folder)  # a file fewer: another key
    assert len(calls) == len(mixed_images) - 1


def test_files_changing_during_the_build_are_decoded_again(mixed_images, tmp_path, monkeypatch):
    real = cache_mod.load_image
    touched = []

    def touching(path, *args, **kwargs):
        if not touched:
            touched.append(path)
            st = os.stat(mixed_images[-1])
            os.utime(mixed_images[-1], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(cache_mod, "load_image", touching)
    cache = open_cache(mixed_images, SHORT, tmp_path / "cache")
    assert cache.data_path == str(cache_files(tmp_path / "cache", cache_key(file_stats(mixed_images), SHORT))[0])
    assert len(list((tmp_path / "cache").glob("*.u8"))) == 1  # the build of the old contents was not kept

    def always_touching(path, *args, **kwargs):
        st = os.stat(mixed_images[-1])
        os.utime(mixed_images[-1], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(cache_mod, "load_image", always_touching)
    with pytest.raises(DatasetError, match="keep changing"):
        open_cache(mixed_images, SHORT, tmp_path / "cache2")


# ----- crash safety ------------------------------------------------------------------------------------------------
def test_a_truncated_data_file_is_detected_and_rebuilt(mixed_images, tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    first = open_cache(mixed_images, SHORT, folder)
    expected = [first.array(i) for i in range(len(first))]
    data = Path(first.data_path)
    with open(data, "r+b") as f:
        f.truncate(data.stat().st_size // 2)
    calls = _count_decodes(monkeypatch)
    rebuilt = open_cache(mixed_images, SHORT, folder)
    assert len(calls) == len(mixed_images)
    assert data.stat().st_size == rebuilt.nbytes
    assert all(np.array_equal(rebuilt.array(i), e) for i, e in enumerate(expected))


@pytest.mark.parametrize("damage", ["garbage", "missing_data", "missing_index"])
def test_a_damaged_or_incomplete_cache_is_rebuilt(damage, mixed_images, tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    first = open_cache(mixed_images, SHORT, folder)
    data, index = cache_files(folder, cache_key(file_stats(mixed_images), SHORT))
    if damage == "garbage":
        index.write_bytes(b"PK\x03\x04 not a zip at all")
    elif damage == "missing_data":
        data.unlink()
    else:
        index.unlink()
    calls = _count_decodes(monkeypatch)
    rebuilt = open_cache(mixed_images, SHORT, folder)
    assert len(calls) == len(mixed_images)
    assert np.array_equal(rebuilt.array(3), first.array(3))


def test_a_build_that_fails_midway_leaves_nothing_trusted(mixed_images, tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    real = cache_mod.load_image
    seen = []

    def dies(path, *args, **kwargs):
        seen.append(path)
        if len(seen) == 4:
            raise RuntimeError("killed while decoding")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(cache_mod, "load_image", dies)
    with pytest.raises(RuntimeError, match="killed while decoding"):
        open_cache(mixed_images, SHORT, folder, workers=2)
    leftovers = _files_in(folder)
    assert not any(n.endswith((".u8", ".npz", ".tmp")) for n in leftovers), leftovers

    # A killed build leaves temporary files behind: they are never read, and the next build removes them.
    key = cache_key(file_stats(mixed_images), SHORT)
    stale = folder / f"{key}.u8.abc123.tmp"
    stale.write_bytes(b"\0" * 100)
    calls = _count_decodes(monkeypatch)
    cache = open_cache(mixed_images, SHORT, folder)
    assert len(calls) == len(mixed_images) and not stale.exists()
    assert torch.equal(
        eval_transform(IMAGE_SIZE)(cache.get(2)), eval_transform(IMAGE_SIZE)(load_image(mixed_images[2]))
    )


# ----- bad images --------------------------------------------------------------------------------------------------
def _with_bad_files(paths: list[str], folder: Path) -> tuple[list[str], list[str]]:
    html, empty = folder / "page.jpg", folder / "empty.png"
    html.write_text("<!doctype html><html>not found</html>")
    empty.write_bytes(b"")
    truncated = folder / "truncated.jpg"
    full = Path(paths[3]).read_bytes()
    truncated.write_bytes(full[: len(full) // 3])
    bad = [str(html), str(empty), str(truncated)]
    return paths[:2] + [bad[0]] + paths[2:5] + [bad[1], bad[2]], bad


def test_bad_images_are_reported_like_find_bad_images_and_stored_empty(mixed_images, tmp_path, monkeypatch):
    paths, bad = _with_bad_files(mixed_images, tmp_path / "img")
    cache = open_cache(paths, SHORT, tmp_path / "cache")
    assert [p for p, _ in cache.bad] == bad
    assert cache.bad == find_bad_images(paths)
    assert dict(cache.bad)[bad[0]] == "not an image: an HTML page"
    with pytest.raises(BadImageError) as info:
        cache.get(paths.index(bad[1]))
    assert info.value.path == bad[1] and "empty file" in info.value.reason
    good = [i for i, p in enumerate(paths) if p not in bad]
    assert cache.nbytes == sum(cache.array(i).size for i in good)

    _no_decoding(monkeypatch)
    assert open_cache(paths, SHORT, tmp_path / "cache").bad == cache.bad  # reported again when reused


def _flat_with_bad(root: Path) -> tuple[Path, list[str]]:
    for i in range(8):
        for label, name in enumerate(("cat", "dog")):
            make_image(root / "train" / f"{name}.{i}.jpg", label, seed=label * 100 + i)
    bad = [root / "train" / "cat.100.jpg", root / "train" / "dog.100.jpg"]
    bad[0].write_text("<html>404</html>")
    bad[1].write_bytes(b"")
    return root, [str(p) for p in bad]


def test_datamodule_skips_bad_images_found_by_the_cache(tmp_path, caplog):
    root, bad = _flat_with_bad(tmp_path / "data")
    dm = CatDogDataModule(dir=str(root), image_size=32, batch_size=4, num_workers=0, cache=True,
                          cache_dir=str(tmp_path / "cache"), verify="none")  # fmt: skip
    with caplog.at_level("WARNING", logger="catdog.data.datamodule"):
        dm.setup("fit")
    assert sorted(p for p, _ in dm.bad_images) == sorted(bad)
    assert "skipping 2 unreadable image(s)" in caplog.text
    kept = set(dm.train_set.paths) | set(dm.val_set.paths)
    assert len(kept) == 16 and not kept & set(bad)
    assert len(dm.cache) == 18  # the cache covers every labelled file, bad ones as empty rows
    batch = next(iter(dm.train_dataloader()))
    assert batch[0].shape == (4, 3, 32, 32) and batch[0].dtype == torch.uint8


def test_datamodule_stops_on_bad_images_found_by_the_cache_with_error(tmp_path):
    root, bad = _flat_with_bad(tmp_path / "data")
    dm = CatDogDataModule(dir=str(root), image_size=32, batch_size=4, num_workers=0, cache=True,
                          cache_dir=str(tmp_path / "cache"), on_bad_image="error")  # fmt: skip
    with pytest.raises(BadImageError) as info:
        dm.setup("fit")
    assert "2 unreadable image(s) (data.on_bad_image=error)" in str(info.value)
    assert all(p in str(info.value) for p in bad)


# ----- the data module ---------------------------------------------------------------------------------------------
def test_one_cache_serves_every_fold_and_split(flat_data, tmp_path, monkeypatch):
    kw = dict(dir=str(flat_data), image_size=32, batch_size=4, num_workers=0, cache=True, cache_dir=str(tmp_path / "c"))
    first = CatDogDataModule(folds=3, fold=0, **kw)
    first.setup("fit")
    assert len(first.cache) == 20
    _no_decoding(monkeypatch)
    for extra in ({"folds": 3, "fold": 1}, {"folds": 3, "fold": 2}, {"val_fraction": 0.3}):
        dm = CatDogDataModule(**kw, **extra)
        dm.setup("fit")
        assert dm.cache.data_path == first.cache.data_path
        assert len(dm.train_dataset()) + len(dm.val_dataset()) == 20
        x, label, index = dm.val_dataset()[0]
        assert x.shape == (3, 32, 32) and label == dm.val_set.labels[0]


def test_folder_layout_caches_train_and_validation_together(folder_data, tmp_path):
    dm = CatDogDataModule(dir=str(folder_data), image_size=32, num_workers=0, cache=True, cache_dir=str(tmp_path))
    dm.setup("fit")
    assert len(dm.cache) == len(dm.train_set) + len(dm.val_set) == 24
    ref = CatDogDataModule(dir=str(folder_data), image_size=32, num_workers=0)
    ref.setup("fit")
    assert ref.cache is None
    for i in range(len(dm.val_set)):
        assert torch.equal(dm.val_dataset()[i][0], ref.val_dataset()[i][0])


def test_config_keys_and_validation(tmp_path):
    cfg = compose_train()
    assert cfg.data.cache is False
    assert cfg.data.cache_dir == os.path.join(cfg.paths.log_dir, ".cache")
    with pytest.raises(ConfigError, match="data.cache must be true or false"):
        check_data_config(64, 8, 0.2, None, None, "skip", "full", cache="yes")


def test_cache_pickles_without_its_pixels_and_works_in_worker_processes(mixed_images, tmp_path):
    cache = open_cache(mixed_images, SHORT, tmp_path / "cache")
    cache.get(0)  # memory map opened
    blob = pickle.dumps(cache)
    assert len(blob) < 4096 + 200 * len(mixed_images) < cache.nbytes
    clone = pickle.loads(blob)
    assert isinstance(clone, DecodedCache) and clone._mm is None
    assert np.array_equal(clone.array(5), cache.array(5))

    labels = list(range(len(mixed_images)))
    t = eval_transform(IMAGE_SIZE)
    expected = torch.stack([t(load_image(p, draft_size=SHORT)) for p in mixed_images])
    dataset = ImageDataset(mixed_images, labels, t, cache=cache)
    for loader in (
        make_loader(dataset, batch_size=4, num_workers=2),  # forked workers (Linux default)
        DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=collate_skip_none, multiprocessing_context="spawn"),
    ):
        got = torch.zeros_like(expected)
        for x, _, index in loader:
            got[index] = x
        assert torch.equal(got, expected)
