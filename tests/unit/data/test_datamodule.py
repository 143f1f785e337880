"""catdog/data/datamodule.py: datasets and loaders with bad images, the epoch's transform, splits independent of
which unreadable images were found, the device pipeline's batches."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from catdog.data.datamodule import CatDogDataModule, ImageDataset, collate_skip_none
from catdog.data.samplers import EpochShuffleSampler
from catdog.data.transforms import ProgressiveTransform
from catdog.errors import BadImageError, ConfigError
from catdog.runs.layout import split_text
from catdog.runs.resume import check_same_split
from catdog.submission import write_submission
from tests.conftest import make_flat, make_image


def _datamodule(root, tmp_path, pipeline, image_size=32, **kw):
    dm = CatDogDataModule(
        dir=str(root), image_size=image_size, batch_size=4, num_workers=0, seed=3, pipeline=pipeline,
        cache_dir=str(tmp_path / "cache"), **kw,
    )  # fmt: skip
    dm.setup("fit")
    return dm


def _batches(dm, loader):
    for batch in loader:
        yield dm.on_after_batch_transfer(dm.on_before_batch_transfer(batch, 0), 0)


def test_device_validation_batches_equal_the_workers_ones(tmp_path):
    root = make_flat(tmp_path / "data", per_class=8, test=0)
    device = _datamodule(root, tmp_path, "device")
    workers = _datamodule(root, tmp_path, "workers")
    a = list(_batches(device, device.val_dataloader()))
    b = list(_batches(workers, workers.val_dataloader()))
    assert device.pipeline == "device" and workers.pipeline == "workers"
    for (xa, ya, ia), (xb, yb, ib) in zip(a, b, strict=True):
        assert xa.dtype == torch.uint8 and torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)


def test_device_training_batches_repeat_exactly_and_follow_progressive_sizes(tmp_path):
    root = make_flat(tmp_path / "data", per_class=8, test=0)
    progressive = {"start_size": 32, "epochs": 2, "multiple": 8}

    def epoch_batches(epoch):
        dm = _datamodule(root, tmp_path, "device", progressive=progressive, image_size=48)
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return list(_batches(dm, loader))

    first, again = epoch_batches(1), epoch_batches(1)  # a resumed run rebuilds the datamodule
    assert [x.shape[-1] for x, _, _ in first] == [40] * len(first)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) for a, b in zip(first, again, strict=True))
    x, y, _ = epoch_batches(2)[0]
    assert x.shape == (4, 3, 48, 48) and x.dtype == torch.float32 and 0 <= float(x.min()) <= float(x.max()) <= 1


@pytest.mark.parametrize("pipeline", ["workers", "device"])
def test_balanced_repeats_of_an_image_are_augmented_apart(tmp_path, pipeline):
    """data.sampler=balanced on a 9:1 set draws each minority image ~5 times an epoch: every draw gets its own
    crop and flip (before, the (seed, epoch, index) seed made every repeat a pixel-identical copy), and an epoch's
    batches are the same when the datamodule is rebuilt (a resumed run)."""
    root = tmp_path / "data"
    for i in range(18):
        make_image(root / "train" / f"cat.{i}.jpg", 0, seed=i)
    for i in range(2):
        make_image(root / "train" / f"dog.{i}.jpg", 1, seed=100 + i)

    def epoch_images():
        dm = _datamodule(root, tmp_path, pipeline, val_fraction=0.1, sampler="balanced")
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(1)
        return [(int(i), x) for xb, _, ib in _batches(dm, loader) for x, i in zip(xb, ib)]

    drawn = epoch_images()
    by_index = {}
    for i, x in drawn:
        by_index.setdefault(i, []).append(x)
    repeats = [xs for xs in by_index.values() if len(xs) > 1]
    assert repeats, "a 9:1 balanced draw repeats the minority images"
    for xs in repeats:
        for a in range(len(xs)):
            assert not any(torch.equal(xs[a], xs[b]) for b in range(a + 1, len(xs)))
    again = epoch_images()
    assert all(i == j and torch.equal(x, y) for (i, x), (j, y) in zip(drawn, again, strict=True))


def test_dataset_skip_returns_none_for_a_file_corrupted_after_setup(flat_data):
    dm = CatDogDataModule(dir=str(flat_data), image_size=32, batch_size=4, num_workers=0)
    dm.setup("fit")
    ds = dm.train_dataset()
    victim = ds.paths[1]
    Path(victim).write_bytes(b"<html>corrupted after setup</html>")
    with pytest.warns(UserWarning, match="skipping unreadable image") as record:
        assert ds[1] is None
    assert victim in str(record[0].message)
    x, label, index = ds[0]
    assert x.shape == (3, 32, 32) and index == 0
    batch = collate_skip_none([ds[0], None, ds[2], None])
    assert batch[0].shape == (2, 3, 32, 32) and batch[2].tolist() == [0, 2]

    strict = ImageDataset(ds.paths, ds.labels, ds.transform, on_bad_image="error")
    with pytest.raises(BadImageError) as info:
        strict[1]
    assert info.value.path == victim


def test_all_bad_batch_collates_to_an_empty_batch():
    x, y, idx = collate_skip_none([None, None])
    assert x.numel() == 0 and y.numel() == 0 and idx.numel() == 0


def _assignments(datamodule) -> dict[str, str]:
    return {line.split(",")[0]: line.split(",")[2] for line in split_text(datamodule).splitlines()[1:]}


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("folds", [None, 3])
def test_split_and_folds_do_not_depend_on_which_unreadable_images_were_found(dirty_flat, tmp_path, folds):
    """The split is made over every listed file, so finding the unreadable ones (verify, cache) or not (verify=none)
    moves no readable image to another side or fold, and a resume with other such settings keeps its split."""
    root, bad = dirty_flat
    found = {}
    for name, extra in {"full": {}, "none": {"verify": "none"}, "cache": {"cache": True}}.items():
        dm = CatDogDataModule(
            dir=str(root), image_size=32, folds=folds, fold=0 if folds else None, seed=3, num_workers=0,
            cache_dir=str(tmp_path / "cache"), **extra,
        )  # fmt: skip
        dm.setup("fit")
        found[name] = (_assignments(dm), split_text(dm))
    bad_names = {os.path.relpath(p, root) for p in bad}
    readable = found["full"][0]
    assert readable and not bad_names & set(readable)
    assert found["cache"][0] == readable
    assert {p: a for p, a in found["none"][0].items() if p not in bad_names} == readable
    assert bad_names <= set(found["none"][0])  # verify=none lists them: they are only found while training
    check_same_split("ckpt", _with_split(tmp_path / "run", found["none"][1]), tmp_path, found["full"][1])
    moved = found["full"][1].replace(",0\n" if folds else ",val\n", ",1\n" if folds else ",train\n", 1)
    with pytest.raises(ConfigError, match="split differs"):
        check_same_split("ckpt", _with_split(tmp_path / "run", found["none"][1]), tmp_path, moved)


def _with_split(run: Path, text: str) -> Path:
    run.mkdir(exist_ok=True)
    (run / "split.csv").write_text(text)
    return run


def test_dataset_picks_the_epochs_transform(tmp_path):
    paths = [str(make_flat(tmp_path / "d", per_class=2, test=0) / "train" / "cat.0.jpg")]
    t = ProgressiveTransform(64, {"start_size": 32, "epochs": 2})
    ds = ImageDataset(paths, [0], t, seed=0)
    sampler = EpochShuffleSampler(1, seed=0)
    sampler.set_epoch(0)
    assert ds[next(iter(sampler))][0].shape[-1] == 32
    sampler.set_epoch(2)
    assert ds[next(iter(sampler))][0].shape[-1] == 64


def _pseudo_csv(root, tmp_path, p_dog):
    """A submission of the test images of ``root`` (ids 1..n) with the given P(dog)."""
    probs = np.stack([1 - np.asarray(p_dog), np.asarray(p_dog)], axis=1)
    return write_submission(tmp_path / "teacher.csv", [str(i + 1) for i in range(len(p_dog))], probs, ["cat", "dog"])


@pytest.mark.parametrize("folds", [None, 2])
def test_pseudo_labels_join_training_only_and_leave_the_split_as_it_was(tmp_path, folds):
    root = make_flat(tmp_path / "data", per_class=6, test=4)
    teacher = _pseudo_csv(root, tmp_path, [0.99, 0.6, 0.01, 0.97])
    kwargs = {"dir": str(root), "image_size": 32, "folds": folds, "fold": 0 if folds else None, "num_workers": 0}
    plain = CatDogDataModule(**kwargs)
    plain.setup("fit")
    dm = CatDogDataModule(**kwargs, pseudo={"labels": str(teacher), "threshold": 0.95})
    dm.setup("fit")
    pseudo = {str(root / "test" / n) for n in ("1.jpg", "3.jpg", "4.jpg")}
    assert set(dm.train_set.paths) == set(plain.train_set.paths) | pseudo
    assert dm.val_set.paths == plain.val_set.paths and not pseudo & set(dm.val_set.paths)
    assert dm.fold_assignment == plain.fold_assignment
    label = dict(zip(dm.train_set.paths, dm.train_set.labels))
    assert [label[str(root / "test" / n)] for n in ("1.jpg", "3.jpg", "4.jpg")] == [1, 0, 1]
    rows = split_text(dm)
    assert ("test/1.jpg,dog,pseudo" in rows) == (folds is None) and ("test/1.jpg" in rows) == (folds is None)


def _soft_pseudo_module(tmp_path):
    """(root, set-up datamodule) of a small flat set whose test image 1 is pseudo-labelled dog, softly."""
    root = make_flat(tmp_path / "data", per_class=4, test=2)
    teacher = _pseudo_csv(root, tmp_path, [0.96, 0.02])
    dm = CatDogDataModule(
        dir=str(root), image_size=32, num_workers=0, pseudo={"labels": str(teacher), "threshold": 0.95, "soft": True}
    )
    dm.setup("fit")
    return root, dm


def test_soft_pseudo_targets_reach_the_batches(tmp_path):
    root, dm = _soft_pseudo_module(tmp_path)
    assert dm.train_targets.shape == (len(dm.train_set), 2)
    targets = {p: t for p, t in zip(dm.train_set.paths, dm.train_targets.tolist())}
    assert targets[str(root / "test" / "1.jpg")] == pytest.approx([0.04, 0.96])
    assert all(targets[p] in ([1.0, 0.0], [0.0, 1.0]) for p in dm.train_set.paths if "/train/" in p)
    x, y, _ = next(iter(dm.train_dataloader()))
    assert y.dtype == torch.float32 and y.shape == (len(x), 2)


def test_a_teachers_targets_follow_each_label_and_pseudo_images_teach_themselves(tmp_path):
    root, dm = _soft_pseudo_module(tmp_path)
    labelled = len(dm.train_set) - len(dm.pseudo.paths)  # the pseudo-labelled images come last
    with pytest.raises(ValueError, match="teacher targets"):
        dm.attach_teacher(torch.full((labelled + 1, 2), 0.5))
    probs = torch.rand(labelled, 1)
    dm.attach_teacher(torch.cat([probs, 1 - probs], 1))
    targets = dm.train_targets
    assert targets.shape == (len(dm.train_set), 4)
    own = torch.nn.functional.one_hot(torch.tensor(dm.train_set.labels[:labelled]), 2).float()
    assert torch.equal(targets[:labelled, :2], own) and torch.equal(targets[:labelled, 2], probs[:, 0])
    at = dm.train_set.paths.index(str(root / "test" / "1.jpg"))
    assert targets[at].tolist() == pytest.approx([0.04, 0.96, 0.04, 0.96])  # a pseudo image: its soft target twice
    x, y, _ = next(iter(dm.train_dataloader()))
    assert y.shape == (len(x), 4)


def test_excluded_images_leave_both_sides_and_the_rest_keep_their_fold(tmp_path):
    root = make_flat(tmp_path / "data", per_class=6, test=0)
    kwargs = {"dir": str(root), "image_size": 32, "folds": 3, "fold": 1, "num_workers": 0}
    plain = CatDogDataModule(**kwargs)
    plain.setup("fit")
    drop = [plain.val_set.paths[0], plain.train_set.paths[0]]
    listing = tmp_path / "drop.txt"
    listing.write_text("\n".join(os.path.relpath(p, root) for p in drop) + "\n")
    dm = CatDogDataModule(**kwargs, exclude=str(listing))
    dm.setup("fit")
    assert dm.train_set.paths == plain.train_set.paths[1:] and dm.val_set.paths == plain.val_set.paths[1:]
    fold_of = dict(zip(plain.all_labelled.paths, plain.fold_assignment))
    assert dict(zip(dm.all_labelled.paths, dm.fold_assignment)) == {p: f for p, f in fold_of.items() if p not in drop}
    assert dm.excluded == sorted(drop)
