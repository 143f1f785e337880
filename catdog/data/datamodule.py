"""Datasets and the LightningDataModule: folder layouts, validation split or k-fold, bad-image policy."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from catdog.data.cache import DEFAULT_CACHE_DIR, DecodedCache, open_cache
from catdog.data.csv_data import check_csv_config, check_user_folds, check_user_split, read_csv_dataset
from catdog.data.demo import make_demo_dataset
from catdog.data.device_augment import BatchAugment
from catdog.data.device_store import (
    ImageStore,
    check_pipeline,
    eval_store,
    pick_pipeline,
    store_bytes,
    store_side,
    train_store,
)
from catdog.data.exclude import check_exclude, excluded_paths, read_exclude
from catdog.data.hf_data import HfDataset, check_hf_config, training_table
from catdog.data.images import find_bad_images, format_bad_images, load_image
from catdog.data.layouts import LabelledImages, detect_layout
from catdog.data.pseudo import PseudoLabels, check_pseudo, check_teacher, load_pseudo
from catdog.data.samplers import BalancedEpochSampler, EpochShuffleSampler, ShardSampler, split_code
from catdog.data.splits import content_groups, fold_indices, kfold_assignments, stratified_split
from catdog.data.transforms import (
    ProgressiveTransform,
    check_augment,
    check_progressive,
    eval_resize_size,
    eval_transform,
    interpolation_mode,
    progressive_size,
)
from catdog.errors import BadImageError, ConfigError, DatasetError

log = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("skip", "error")
VERIFY_MODES = ("full", "header", "none")
SAMPLERS = (None, "balanced")


def check_policy(value: str, key: str = "data.on_bad_image") -> str:
    if value not in BAD_IMAGE_POLICIES:
        raise ConfigError(f"{key} must be one of {list(BAD_IMAGE_POLICIES)}, got {value!r}")
    return value


class ImageDataset(Dataset):
    """Images (and optional labels) -> ``(uint8 CHW tensor, label, index)``.

    With ``on_bad_image="skip"`` an image that fails to decode yields ``None`` (dropped by :func:`collate_skip_none`)
    and a warning naming the file; with ``"error"`` it raises :class:`BadImageError`. With ``seed`` set, indices
    are the draw codes of :mod:`catdog.data.samplers` and each sample's augmentation is seeded by (seed, epoch, key).
    With ``cache`` (a :class:`catdog.data.cache.DecodedCache` holding every path), pixels are read from the cache
    instead of decoding the files (``draft_size`` is then unused).
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        labels: Sequence[int] | None,
        transform: Callable,
        on_bad_image: str = "skip",
        draft_size: int | None = None,
        seed: int | None = None,
        cache: DecodedCache | None = None,
    ):
        self.seed = seed
        self.paths = [str(p) for p in paths]
        self.labels = list(labels) if labels is not None else None
        self.transform = transform
        self.on_bad_image = on_bad_image
        self.draft_size = draft_size
        self.cache = cache
        self.cache_rows = cache.rows(self.paths) if cache is not None else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        epoch = key = 0
        if self.seed is not None:
            epoch, key, index = split_code(index, len(self.paths))
        try:
            if self.cache is not None:
                image = self.cache.get(self.cache_rows[index])
            else:
                image = load_image(self.paths[index], draft_size=self.draft_size)
        except BadImageError as exc:
            if self.on_bad_image == "error":
                raise
            warnings.warn(f"skipping unreadable image {exc}", stacklevel=2)
            return None
        # A transform with ``for_epoch`` (progressive resizing) picks the epoch's own transform.
        transform = self.transform.for_epoch(epoch) if hasattr(self.transform, "for_epoch") else self.transform
        if self.seed is None:
            x = transform(image)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(((self.seed * 1_000_003 + epoch) * 1_000_003 + key) % 2**63)
                x = transform(image)
        label = self.labels[index] if self.labels is not None else -1
        return x, label, index


class IndexDataset(Dataset):
    """``data.pipeline=device``: no pixels, only ``(code, label, index)`` per sample; the datamodule's batch hooks
    gather and augment the batch's images on the device. ``code`` is the sampler's draw code
    (:func:`catdog.data.samplers.draw_code`) for training samples (``train``) and -1 for evaluation samples."""

    def __init__(self, labels: Sequence[int], train: bool):
        self.labels = list(labels)
        self.train = train

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, code: int):
        if not self.train:
            return -1, self.labels[code], code
        index = split_code(code, len(self.labels))[2]
        return code, self.labels[index], index


def collate_skip_none(batch):
    """Default collate after dropping skipped (``None``) samples; an all-bad batch becomes an empty batch."""
    batch = [b for b in batch if b is not None]
    if not batch:
        return (
            torch.empty(0, 3, 1, 1, dtype=torch.uint8),
            torch.empty(0, dtype=torch.long),
            torch.empty(0, dtype=torch.long),
        )
    return default_collate(batch)


def default_num_workers() -> int:
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def make_loader(dataset: Dataset, batch_size: int, num_workers: int, sampler=None, drop_last: bool = False):
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        # Its own generator: creating an iterator then draws nothing from the global RNG (which dropout uses).
        generator=torch.Generator().manual_seed(0),
        drop_last=drop_last,
        num_workers=num_workers,
        collate_fn=collate_skip_none,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )


class CatDogDataModule(pl.LightningDataModule):
    """Labelled images under ``dir`` (see :mod:`catdog.data.layouts`), split into train/val.

    The split is the separate validation folder when there is one; otherwise a stratified, seeded ``val_fraction``
    split, or fold ``fold`` of ``folds`` (both keep duplicate files together).

    ``pipeline`` (``workers | device | auto``): ``workers`` decodes (or reads from the cache) and augments one image at
    a time in DataLoader workers; ``device`` holds the decoded images as one uint8 tensor on the training device
    (:mod:`catdog.data.device_store`) and augments whole batches there in :meth:`on_after_batch_transfer`
    (:mod:`catdog.data.device_augment`); ``auto`` is ``device`` when the images fit, else ``workers``. ``device`` and
    ``auto`` use the decoded-image cache whatever ``cache`` says.

    With ``cache=True``, every labelled image (train and validation, before any split) is decoded once into a
    :class:`catdog.data.cache.DecodedCache` in ``cache_dir`` at the eval resize size and read from there; later runs
    over the same files (folds, sweep points with the same image size) reuse it. The build decodes every image, so it
    takes the place of the ``verify`` scan: unreadable images found by it follow ``on_bad_image`` in the same way.
    """

    def __init__(
        self,
        dir: str = "data",
        image_size: int = 224,
        crop_pct: float = 0.875,
        interpolation: str = "bilinear",
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int | None = None,
        val_fraction: float = 0.2,
        folds: int | None = None,
        fold: int | None = None,
        seed: int = 42,
        on_bad_image: str = "skip",
        verify: str = "full",
        demo: bool = False,
        augment: dict | None = None,
        progressive: dict | None = None,
        cache: bool = False,
        cache_dir: str | None = None,
        pipeline: str = "workers",
        pseudo: dict | None = None,
        exclude: str | None = None,
        csv: str | None = None,
        csv_columns: dict | None = None,
        sampler: str | None = None,
        csv_outside_dir: bool = False,
        hf: str | None = None,
        hf_columns: dict | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.root = Path(dir).expanduser()
        self.augment = dict(augment or {})
        self.num_workers = default_num_workers() if num_workers is None else int(num_workers)
        self.classes: list[str] | None = None
        self.train_set: LabelledImages | None = None
        self.val_set: LabelledImages | None = None
        self.fold_assignment: list[int] | None = None
        self.all_labelled: LabelledImages | None = None
        self.bad_images: list[tuple[str, str]] = []
        # data.pseudo: the pseudo-labelled images appended to train_set (None without), and with soft targets every
        # training image's target (N, K) (None: train_set.labels are the targets)
        self.pseudo: PseudoLabels | None = None
        self.train_targets: torch.Tensor | None = None
        # data.exclude: the labelled images left out (paths)
        self.excluded: list[str] = []
        self.cache: DecodedCache | None = None
        # data.pipeline resolved for the training device (at the first loader), and its image stores
        self.pipeline: str | None = None
        self.stores: dict[str, ImageStore] = {}
        self._augment: BatchAugment | None = None
        self._batch_epoch: int | None = None

    def setup(self, stage: str | None = None) -> None:
        """Split every listed image (readable or not, so that the split, and a k-fold run's folds, do not depend on
        ``verify`` or ``cache``), then drop the unreadable ones from each side."""
        if self.train_set is not None:
            return
        hp = self.hparams
        if hp.demo:
            make_demo_dataset(self.root)
        table = read_csv_dataset(hp.csv, self.root, hp.csv_columns, outside_dir=hp.csv_outside_dir) if hp.csv else None
        if hp.hf:  # written out once as image files under cache_dir/hf/, which are then the dataset root
            hf = HfDataset(hp.hf, hp.hf_columns, self._cache_dir())
            table, self.root = training_table(hf), hf.root
            if hp.folds and hf.roles.validation:
                log.info("data.hf: k-fold over the %r and %r splits together", hf.roles.train, hf.roles.validation)
        if table is not None:
            layout_name, train, val = f"hf ({hp.hf})" if hp.hf else f"csv ({hp.csv})", table.images, None
        else:
            layout = detect_layout(self.root)
            layout_name, train, val = layout.layout, layout.train, layout.validation
        self.classes = train.classes
        if hp.folds and val is not None:
            raise ConfigError(
                f"data.folds={hp.folds} needs one labelled folder, but {self.root} also has a validation folder; "
                "k-fold splits train/ itself"
            )
        labelled = train.paths + (val.paths if val is not None else [])
        pseudo = load_pseudo(hp.pseudo, self.root, self.classes, labelled)
        drop = excluded_paths(read_exclude(hp.exclude), labelled, self.root, hp.exclude) if hp.exclude else set()
        bad = self._find_bad(train, val, pseudo.paths if pseudo is not None else [])
        if hp.folds:
            if table is not None and table.folds is not None:  # the user's folds
                assignment = check_user_folds(table.folds, hp.folds, hp.csv)
            else:
                assignment = kfold_assignments(train.labels, hp.folds, hp.seed, content_groups(train.paths))
            tr_idx, val_idx = fold_indices(assignment, hp.fold or 0)
            everything = train
            train, val = train.subset(tr_idx), train.subset(val_idx)
        elif val is None:
            if table is not None and table.splits is not None:  # the user's validation rows
                tr_idx, val_idx = check_user_split(table.splits, hp.csv or hp.hf)
            else:
                tr_idx, val_idx = stratified_split(train.labels, hp.val_fraction, hp.seed, content_groups(train.paths))
            train, val = train.subset(tr_idx), train.subset(val_idx)
        # The split and the folds are made before the exclusion: the other images keep their side or fold.
        left_out = {**bad, **dict.fromkeys(drop, "data.exclude")}
        train, val = self._without(train, left_out), self._without(val, left_out)
        if hp.folds:
            keep = [i for i, p in enumerate(everything.paths) if p not in left_out]
            self.all_labelled = everything.subset(keep)
            self.fold_assignment = [assignment[i] for i in keep]
        self.excluded = sorted(drop)
        counts = {c: train.labels.count(i) for i, c in enumerate(self.classes)}
        if pseudo is not None:
            pseudo = pseudo.subset([i for i, p in enumerate(pseudo.paths) if p not in bad])
            train = self._with_pseudo(train, check_teacher(pseudo, val.paths, self.root))
        self.train_set, self.val_set = train, val
        log.info(
            "data: %s layout in %s; classes %s; %d train %s, %d validation; %d unreadable image(s) skipped%s",
            layout_name, self.root, self.classes, len(train), counts, len(val), len(self.bad_images),
            f"; {len(drop)} left out (data.exclude)" if drop else "",
        )  # fmt: skip

    def _with_pseudo(self, train: LabelledImages, pseudo: PseudoLabels) -> LabelledImages:
        """``train`` followed by the pseudo-labelled images (their predicted class as label); with soft targets,
        :attr:`train_targets` holds every image's target distribution."""
        self.pseudo = pseudo
        hard = pseudo.hard()
        log.info(
            "data.pseudo: %d of %d test image(s) join training (%s), %s targets", len(hard), pseudo.candidates,
            ", ".join(f"{c} {hard.count(i)}" for i, c in enumerate(self.classes)), "soft" if pseudo.soft else "hard",
        )  # fmt: skip
        if pseudo.soft:
            own = torch.nn.functional.one_hot(torch.tensor(train.labels), len(self.classes)).float()
            self.train_targets = torch.cat([own, torch.from_numpy(pseudo.targets).float()])
        return LabelledImages(train.paths + pseudo.paths, train.labels + hard, train.classes, train.layout)

    @property
    def labelled_count(self) -> int:
        """How many of :attr:`train_set`'s images are labelled (the pseudo-labelled ones come after them)."""
        return len(self.train_set) - (len(self.pseudo.paths) if self.pseudo is not None else 0)

    def attach_teacher(self, teacher: torch.Tensor) -> None:
        """Distillation (:mod:`catdog.models.distillation`): ``teacher`` (N, K) holds the teacher's probabilities for
        the N labelled training images, in :attr:`train_set`'s order; pseudo-labelled images take their own targets
        as the teacher's. Every training target becomes ``2K`` wide: the label's distribution, then the teacher's."""
        classes, labelled = len(self.classes), self.labelled_count
        if tuple(teacher.shape) != (labelled, classes):
            raise ValueError(f"teacher targets {tuple(teacher.shape)} for {labelled} images of {classes} classes")
        own = self.train_targets
        if own is None:
            own = torch.nn.functional.one_hot(torch.tensor(self.train_set.labels), classes).float()
        else:
            own = own[:, :classes]
        extra = [torch.from_numpy(self.pseudo.targets).float()] if self.pseudo is not None else []
        self.train_targets = torch.cat([own, torch.cat([teacher.float(), *extra])], dim=1)

    def _find_bad(self, train: LabelledImages, val: LabelledImages | None, extra: list[str]) -> dict[str, str]:
        """The unreadable labelled images (path -> reason): those the decoded-image cache could not decode (it is
        opened or built here, with ``cache``), else those the ``verify`` scan finds (none with ``verify=none``: they
        are then skipped while training), among the labelled images and ``extra`` (pseudo-labelled ones). They stop
        the run with ``on_bad_image=error``, else are listed once."""
        paths = train.paths + (val.paths if val is not None else []) + list(extra)
        workers = max(2, self.num_workers)
        if self.hparams.cache or self.hparams.pipeline != "workers":
            interpolation = self.hparams.interpolation
            self.cache = open_cache(paths, self._draft(), self._cache_dir(), workers, interpolation=interpolation)
            found = list(self.cache.bad)
        elif self.hparams.verify == "none":
            found = []
        else:
            found = find_bad_images(paths, full=self.hparams.verify == "full", workers=workers)
        if found and self.hparams.on_bad_image == "error":
            raise BadImageError(
                found[0][0], f"{len(found)} unreadable image(s) (data.on_bad_image=error):\n{format_bad_images(found)}"
            )
        if found:
            log.warning("skipping %d unreadable image(s):\n%s", len(found), format_bad_images(found))
        self.bad_images = list(found)
        return dict(found)

    def _cache_dir(self) -> str:
        """Where the decoded-image caches (and data.hf's written-out datasets) are kept."""
        return self.hparams.cache_dir or DEFAULT_CACHE_DIR

    def _without(self, images: LabelledImages, drop: dict) -> LabelledImages:
        """``images`` without the unreadable or excluded ones (``drop``)."""
        keep = [i for i, p in enumerate(images.paths) if p not in drop]
        if len(keep) == len(images.paths):
            return images
        if len({images.labels[i] for i in keep}) < 2:
            raise DatasetError(
                f"after skipping unreadable and excluded (data.exclude) images, fewer than two classes remain in "
                f"{self.root}"
            )
        return images.subset(keep)

    # ----- loaders -------------------------------------------------------------------------------------------------
    def _draft(self) -> int:
        return eval_resize_size(self.hparams.image_size, self.hparams.crop_pct)

    def train_dataset(self) -> ImageDataset:
        hp = self.hparams
        transform = ProgressiveTransform(hp.image_size, hp.progressive, hp.interpolation, **self.augment)
        return ImageDataset(
            self.train_set.paths, self.train_labels(), transform, hp.on_bad_image, self._draft(), hp.seed, self.cache
        )

    def train_labels(self) -> list:
        """Each training image's target: its class, or (soft pseudo-labels) a (K,) probability tensor, or (with a
        teacher attached) a (2K,) tensor: :meth:`attach_teacher`."""
        return list(self.train_targets) if self.train_targets is not None else self.train_set.labels

    def val_dataset(self) -> ImageDataset:
        hp = self.hparams
        transform = eval_transform(hp.image_size, hp.crop_pct, interpolation=hp.interpolation)
        return ImageDataset(
            self.val_set.paths, self.val_set.labels, transform, hp.on_bad_image, self._draft(), cache=self.cache
        )

    def _rank_world(self) -> tuple[int, int]:
        """(this process's global rank, number of processes) of the attached Trainer; (0, 1) without one."""
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _device(self):
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def resolve_pipeline(self) -> str:
        """``data.pipeline`` for the attached Trainer's device (once); with ``device``, the image stores built and
        placed."""
        if self.pipeline is not None:
            return self.pipeline
        hp, device = self.hparams, self._device()
        train_rows, val_rows = self.cache_rows("train"), self.cache_rows("val")
        side = store_side(self.cache, train_rows) if self.cache is not None else 0
        nbytes = store_bytes(len(train_rows), side, len(val_rows), hp.image_size)
        self.pipeline = pick_pipeline(hp.pipeline, nbytes, device)
        if self.pipeline == "device":
            workers = max(2, self.num_workers)
            self.stores = {
                "train": train_store(self.cache, train_rows, hp.interpolation, workers),
                "val": eval_store(
                    self.cache, val_rows, eval_transform(hp.image_size, hp.crop_pct, interpolation=hp.interpolation),
                    hp.image_size, workers,
                ),
            }  # fmt: skip
            for store in self.stores.values():
                store.place(device)
            self._augment = BatchAugment(hp.seed, interpolation=hp.interpolation, **self.augment)
            log.info(
                "data.pipeline=device: %d training images (%d px squares) and %d validation crops, augmented in "
                "batches on %s", len(train_rows), side, len(val_rows), device,
            )  # fmt: skip
        elif hp.pipeline != "workers":
            log.info("data.pipeline=%s: decoding and augmenting in DataLoader workers", hp.pipeline)
        return self.pipeline

    def cache_rows(self, which: str) -> list[int]:
        """Rows of the decoded-image cache of the training (``train``) or validation (``val``) images."""
        images = self.train_set if which == "train" else self.val_set
        return self.cache.rows(images.paths) if self.cache is not None else list(range(len(images)))

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """``data.pipeline=device``: note the batch's epoch (training) and, for images kept in pinned host memory,
        gather them here so that they travel to the device with the batch."""
        if self.pipeline != "device" or len(batch) != 3:
            return batch
        codes, labels, indices = batch
        train = len(codes) > 0 and int(codes[0]) >= 0
        self._batch_epoch = split_code(int(codes[0]), len(self.train_set))[0] if train else None
        store = self.stores["train" if train else "val"]
        if store.on_host:
            return codes, labels, indices, store.gather_host(indices)
        return batch

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """``data.pipeline=device``: the batch's images, gathered from the store and (training) augmented on the
        device: ``(float images in [0, 1] or uint8 eval crops, labels, indices)``."""
        if self.pipeline != "device" or len(batch) not in (3, 4):
            return batch
        codes, labels, indices = batch[:3]
        epoch = self._batch_epoch
        store = self.stores["train" if epoch is not None else "val"]
        images = batch[3] if len(batch) == 4 else store.gather(indices)
        if epoch is None:
            return images, labels, indices
        hp = self.hparams
        size = progressive_size(epoch, hp.image_size, hp.progressive)
        rows = indices.to(store.heights.device)
        keys = split_code(codes, len(self.train_set))[1]
        x = self._augment(images, store.heights[rows], store.widths[rows], keys, epoch, size)
        return x, labels, indices

    def train_dataloader(self) -> DataLoader:
        if self.resolve_pipeline() == "device":
            dataset = IndexDataset(self.train_labels(), train=True)
        else:
            dataset = self.train_dataset()
        rank, world = self._rank_world()
        # On resume Lightning builds the loader after restoring the epoch counter: start the shuffle there.
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        if self.hparams.sampler == "balanced":
            sampler = BalancedEpochSampler(self.train_set.labels, self.hparams.seed, epoch, rank=rank, world=world)
        else:
            sampler = EpochShuffleSampler(len(dataset), self.hparams.seed, epoch, rank=rank, world=world)
        # Drop a last partial batch unless it is the only one (of this process's share, under DDP).
        drop_last = len(sampler) > self.hparams.batch_size
        return make_loader(dataset, self.hparams.batch_size, self._workers(), sampler=sampler, drop_last=drop_last)

    def val_dataloader(self) -> DataLoader:
        bs = self.hparams.eval_batch_size or self.hparams.batch_size * 2
        if self.resolve_pipeline() == "device":
            dataset = IndexDataset(self.val_set.labels, train=False)
        else:
            dataset = self.val_dataset()
        return make_loader(dataset, bs, self._workers(), sampler=ShardSampler(len(dataset), *self._rank_world()))

    def _workers(self) -> int:
        """DataLoader workers: none for the device pipeline (its loader yields only indices)."""
        return 0 if self.pipeline == "device" else self.num_workers


def check_data_config(
    image_size,
    batch_size,
    val_fraction,
    folds,
    fold,
    on_bad_image,
    verify,
    eval_batch_size=None,
    cache=False,
    progressive=None,
    augment=None,
    crop_pct=0.875,
    interpolation="bilinear",
    pipeline="workers",
    pseudo=None,
    exclude=None,
    csv=None,
    csv_columns=None,
    sampler=None,
    csv_outside_dir=False,
    hf=None,
    hf_columns=None,
) -> None:
    """Validate data settings before anything is read; each error names its key and the allowed values."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"data.sampler must be null (shuffle) or 'balanced' (class-balanced), got {sampler!r}")
    check_csv_config(csv, csv_columns, csv_outside_dir)
    check_hf_config(hf, hf_columns, csv)
    check_pseudo(pseudo)
    check_exclude(exclude)
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 32:
        raise ConfigError(f"data.image_size must be an integer >= 32, got {image_size!r}")
    if not isinstance(crop_pct, (int, float)) or isinstance(crop_pct, bool):
        raise ConfigError(f"data.crop_pct must be a number in (0, 1], got {crop_pct!r}")
    eval_resize_size(image_size, crop_pct)
    interpolation_mode(interpolation)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"data.batch_size must be a positive integer, got {batch_size!r}")
    if eval_batch_size is not None and (not isinstance(eval_batch_size, int) or eval_batch_size < 1):
        raise ConfigError(f"data.eval_batch_size must be a positive integer or null, got {eval_batch_size!r}")
    if not isinstance(val_fraction, (int, float)) or not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be in (0, 1), got {val_fraction!r}")
    if folds is not None:
        if not isinstance(folds, int) or folds < 2:
            raise ConfigError(f"data.folds must be an integer >= 2 or null, got {folds!r}")
        if fold is not None and (not isinstance(fold, int) or not 0 <= fold < folds):
            raise ConfigError(f"data.fold must be in 0..{folds - 1} (data.folds={folds}), got {fold!r}")
    elif fold is not None:
        raise ConfigError(f"data.fold={fold} needs data.folds (the number of folds) to be set")
    check_policy(on_bad_image)
    if verify not in VERIFY_MODES:
        raise ConfigError(f"data.verify must be one of {list(VERIFY_MODES)}, got {verify!r}")
    if not isinstance(cache, bool):
        raise ConfigError(f"data.cache must be true or false, got {cache!r}")
    check_pipeline(pipeline)
    check_progressive(progressive, image_size)
    check_augment(augment)
    if augment is not None:
        ProgressiveTransform(image_size, None, **augment)  # builds the train transform: bad values fail here
