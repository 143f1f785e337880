"""Decoded images held as one uint8 tensor for ``data.pipeline=device``: on the training device when they fit, else in
pinned host memory with asynchronous copies of each batch.

Two stores are built from the decoded-image cache (:mod:`catdog.data.cache`), both rows in dataset order:

- training images (:func:`train_store`): every cached image resized to one ``side`` x ``side`` square (antialiased,
  ``data.interpolation``; ``side`` is the cache's shorter side, or the largest image's shorter side when every image is
  smaller), with each image's cached height and width kept so that crops are drawn on its true shape
  (:mod:`catdog.data.device_augment`). Square images are stored pixel for pixel as cached.
- validation images (:func:`eval_store`): the eval transform's output itself (resize, centre crop), computed as the
  ``workers`` pipeline computes it, so validation scores are the same with either pipeline.

Size: ``N x 3 x side**2`` bytes for training plus ``N_val x 3 x image_size**2``; 16,000 images of 110 px squares take
581 MB. :func:`placement` decides where a store lives; :func:`pick_pipeline` resolves ``data.pipeline=auto``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from torchvision.transforms import InterpolationMode, v2

from catdog.data.cache import DecodedCache
from catdog.errors import ConfigError

log = logging.getLogger(__name__)

PIPELINES = ("workers", "device", "auto")
#: Share of the device's free memory (CUDA) or of the available host memory (CPU) the stores may take.
DEVICE_SHARE = 0.5


def check_pipeline(value) -> str:
    if value not in PIPELINES:
        raise ConfigError(f"data.pipeline must be one of {list(PIPELINES)}, got {value!r}")
    return value


def store_side(cache: DecodedCache, rows: Sequence[int]) -> int:
    """The square side of the training store: the cache's shorter side, or the largest stored shorter side."""
    if not len(rows):
        return cache.short_side
    short = torch.minimum(torch.as_tensor(cache.heights[list(rows)]), torch.as_tensor(cache.widths[list(rows)]))
    return int(min(cache.short_side, int(short.max())))


def store_bytes(n_train: int, side: int, n_val: int, image_size: int) -> int:
    return 3 * (n_train * side * side + n_val * image_size * image_size)


def available_bytes(device: torch.device) -> int:
    """Free memory of a CUDA device, or the host's available memory (``MemAvailable``; total memory elsewhere)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - no way to tell: assume it fits
        return 2**62


def fits(nbytes: int, device: torch.device) -> bool:
    return nbytes <= DEVICE_SHARE * available_bytes(device)


def pick_pipeline(requested: str, nbytes: int, device: torch.device) -> str:
    """``data.pipeline`` resolved for ``device``: ``auto`` is ``device`` when the stores fit (:data:`DEVICE_SHARE` of
    the device's free memory), else ``workers``. ``device`` on a GPU whose memory is too small keeps the stores in
    pinned host memory; on a CPU whose memory is too small it is refused."""
    if requested == "workers":
        return "workers"
    if fits(nbytes, device):
        return "device"
    if requested == "auto":
        log.info(
            "data.pipeline=auto: the decoded images (%.1f GiB) do not fit in %.0f%% of the free memory of %s; "
            "decoding and augmenting in DataLoader workers", nbytes / 2**30, 100 * DEVICE_SHARE, device,
        )  # fmt: skip
        return "workers"
    if device.type != "cuda":
        raise ConfigError(
            f"data.pipeline=device needs {nbytes / 2**30:.1f} GiB of memory for the decoded images, more than "
            f"{100 * DEVICE_SHARE:.0f}% of what is available; use data.pipeline=workers (or auto)"
        )
    return "device"


class ImageStore:
    """Rows of uint8 CHW images (``images``: ``(N, 3, s, s)``) with their cached ``heights`` and ``widths``; on the CPU
    until :meth:`place` puts them on the training device (or pins them, when they do not fit there)."""

    def __init__(self, images: torch.Tensor, heights: torch.Tensor, widths: torch.Tensor):
        self.images, self.heights, self.widths = images, heights, widths
        self.device: torch.device | None = None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def nbytes(self) -> int:
        return self.images.numel()

    @property
    def on_host(self) -> bool:
        """True when batches are gathered on the host and copied (asynchronously, from pinned memory)."""
        return self.images.device.type == "cpu" and self.device is not None and self.device.type != "cpu"

    def place(self, device: torch.device) -> None:
        """Move the images to ``device`` if they fit, else pin them in host memory (once)."""
        if self.device == device:
            return
        self.device = device
        self.heights, self.widths = self.heights.to(device), self.widths.to(device)
        if device.type == "cpu":
            self.images = self.images.cpu()
        elif fits(self.nbytes, device):
            self.images = self.images.to(device)
            log.info("data.pipeline=device: %.1f MiB of decoded images on %s", self.nbytes / 2**20, device)
        else:
            self.images = self.images.cpu().pin_memory()
            log.info(
                "data.pipeline=device: %.1f MiB of decoded images in pinned host memory (too large for %s); "
                "each batch is copied asynchronously", self.nbytes / 2**20, device,
            )  # fmt: skip

    def gather_host(self, rows: torch.Tensor) -> torch.Tensor:
        """The batch's images gathered on the host (pinned, ready for an asynchronous copy)."""
        out = self._take(rows.cpu())
        return out.pin_memory() if self.images.is_pinned() else out

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        return self._take(rows.to(self.images.device))

    def _take(self, rows: torch.Tensor) -> torch.Tensor:
        # rows of the flattened tensor: one contiguous copy per image (several times faster than a 4-d index_select)
        return self.images.view(len(self.images), -1).index_select(0, rows).view(-1, *self.images.shape[1:])


def _fill(n: int, shape: tuple[int, ...], make: Callable[[int], torch.Tensor], workers: int) -> torch.Tensor:
    out = torch.empty((n, *shape), dtype=torch.uint8)

    def one(i: int) -> None:
        out[i] = make(i)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(one, range(n)))
    return out


def train_store(cache: DecodedCache, rows: Sequence[int], interpolation: str, workers: int) -> ImageStore:
    """Training images (cache ``rows``) squashed to one square (see the module docstring)."""
    rows = list(rows)
    side = store_side(cache, rows)
    mode = InterpolationMode(interpolation)

    def make(i: int) -> torch.Tensor:
        x = torch.from_numpy(cache.array(rows[i])).permute(2, 0, 1)
        if x.shape[1:] == (side, side):
            return x
        return v2.functional.resize(x, [side, side], interpolation=mode, antialias=True)

    images = _fill(len(rows), (3, side, side), make, workers)
    heights = torch.as_tensor(cache.heights[rows], dtype=torch.int64) if rows else torch.zeros(0, dtype=torch.int64)
    widths = torch.as_tensor(cache.widths[rows], dtype=torch.int64) if rows else torch.zeros(0, dtype=torch.int64)
    return ImageStore(images, heights, widths)


def eval_store(cache: DecodedCache, rows: Sequence[int], transform: Callable, image_size: int, workers: int):
    """Validation images (cache ``rows``) through the eval ``transform`` (uint8 CHW, ``image_size`` square)."""
    rows = list(rows)
    images = _fill(len(rows), (3, image_size, image_size), lambda i: transform(cache.get(rows[i])), workers)
    sizes = torch.full((len(rows),), image_size, dtype=torch.int64)
    return ImageStore(images, sizes, sizes.clone())
