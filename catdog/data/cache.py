"""A decoded-image cache: every image decoded once per dataset, kept as uint8 pixels in one memory-mapped file.

``open_cache(paths, short_side, cache_dir)`` decodes each image with :func:`catdog.data.images.load_image` (RGB, EXIF
orientation applied, JPEG draft decoding), shrinks images whose shorter side is above ``short_side`` to exactly
``short_side`` (the same torchvision antialiased resize the eval transform uses; smaller images are stored as
decoded, never upscaled) and stores the pixels as HWC uint8 in ``<cache_dir>/<key>.u8``, with an index of offsets and
sizes in ``<key>.index.npz`` (plain numpy arrays, loaded with ``allow_pickle=False``). Later runs over the same files
(other epochs, folds, sweep points with the same image size) open the file instead of decoding anything.

The key is the SHA-1 of the format version, the Pillow and torchvision versions, ``short_side`` and, for every path in
order, its absolute path, size and modification time (ns): a changed, added or removed file, or another
``short_side``, gives another key, so a stale cache is never read. Old caches are not deleted; the folder can be
removed at any time.

A build writes temporary files beside the final ones, fsyncs them and renames them into place; a cache is opened only
when its index is consistent and the data file has exactly the size the index says, so a killed or failed build is
never trusted (it is rebuilt). Concurrent builds of the same key (e.g. one per GPU process) wait on a lock file and
the later ones open what the first wrote.

Eval preprocessing from the cache equals preprocessing from the file pixel for pixel: the eval resize of an image whose
shorter side already equals ``short_side`` is the identity, and smaller images are stored unchanged. Training crops of
images larger than ``short_side`` are taken from the shrunk image instead of the draft-decoded one, so augmented
training samples of such images differ slightly from those read from the files (images no larger than ``short_side``
give identical samples).

Size: ``sum(h * w * 3)`` bytes, with ``min(h, w) <= short_side``; a 4:3 photo at ``short_side=256`` takes
256 x 341 x 3 = 262 KB, so 25,000 such photos take 6.5 GB. The file is memory-mapped: the pixels live in the OS page
cache (shared by all DataLoader workers and processes), not in each process's memory, and pages the OS evicts are
read back from disk.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import hashlib
import logging
import os
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import PIL
import torchvision
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

from catdog.data.images import load_image
from catdog.errors import BadImageError, DatasetError, printable_path
from catdog.fileio import new_file_mode
from catdog.progress import Periodic

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
#: data.cache_dir when null (relative to where the command runs).
DEFAULT_CACHE_DIR = os.path.join("outputs", ".cache")
DATA_SUFFIX = ".u8"
INDEX_SUFFIX = ".index.npz"


# ----- pure helpers ------------------------------------------------------------------------------------------------
def file_stats(paths: Sequence[str | os.PathLike]) -> list[tuple[str, int, int]]:
    """``(absolute path, size, mtime_ns)`` per path; ``(path, -1, -1)`` for one that cannot be stat'ed."""
    out = []
    for p in paths:
        p = os.path.abspath(os.fsdecode(os.fspath(p)))
        try:
            st = os.stat(p)
            out.append((p, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((p, -1, -1))
    return out


def cache_key(stats: Sequence[tuple[str, int, int]], short_side: int, interpolation: str = "bilinear") -> str:
    """SHA-1 (hex) of the format and library versions, ``short_side``, the resize filter (when not bilinear) and
    every ``(path, size, mtime_ns)`` in order."""
    h = hashlib.sha1()
    h.update(f"catdog-decoded-cache {FORMAT_VERSION}".encode())
    h.update(f" pillow {PIL.__version__} torchvision {torchvision.__version__}".encode())
    filter_ = "" if interpolation == "bilinear" else f" interpolation {interpolation}"
    h.update(f" short_side {int(short_side)}{filter_} n {len(stats)}\n".encode())
    for path, size, mtime in stats:
        h.update(os.fsencode(path))
        h.update(f"\0{size}\0{mtime}\n".encode())
    return h.hexdigest()


def shrink_to_short_side(image: Image.Image, short_side: int, interpolation: str = "bilinear") -> Image.Image:
    """``image`` with its shorter side resized to ``short_side`` if it is longer; smaller images are returned as is.

    The resize is the eval transform's (torchvision ``Resize(short_side)``, antialiased), so resizing the
    result again to ``short_side`` is the identity.
    """
    if min(image.size) <= short_side:
        return image
    mode = InterpolationMode(interpolation)
    return v2.functional.resize(image, [int(short_side)], interpolation=mode, antialias=True)


def decode_for_cache(path: str | os.PathLike, short_side: int, interpolation: str = "bilinear") -> np.ndarray:
    """The HWC uint8 pixels the cache stores for ``path``; raises :class:`BadImageError` if it cannot be decoded."""
    image = shrink_to_short_side(load_image(path, draft_size=short_side), short_side, interpolation)
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).reshape(image.height, image.width, 3))


def cache_files(cache_dir: str | os.PathLike, key: str) -> tuple[Path, Path]:
    """The data file and the index file of cache ``key``."""
    cache_dir = Path(cache_dir)
    return cache_dir / f"{key}{DATA_SUFFIX}", cache_dir / f"{key}{INDEX_SUFFIX}"


# ----- the cache ---------------------------------------------------------------------------------------------------
class DecodedCache:
    """Decoded pixels of ``paths`` (row ``i`` is ``paths[i]``), read from a memory-mapped file.

    The memory map is opened lazily on first use and left out when pickled, so the object is cheap to send to
    DataLoader worker processes (each maps the file itself). Use :func:`open_cache` to get one.
    """

    def __init__(
        self,
        paths: Sequence[str],
        short_side: int,
        data_path: str | os.PathLike,
        offsets: np.ndarray,
        heights: np.ndarray,
        widths: np.ndarray,
        bad: dict[int, str],
    ):
        self.paths = [os.fsdecode(os.fspath(p)) for p in paths]
        self.short_side = int(short_side)
        self.data_path = str(data_path)
        self.offsets, self.heights, self.widths = offsets, heights, widths
        self._bad = dict(bad)
        self._rows: dict[str, int] | None = None
        self._mm: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_mm"] = None
        state["_rows"] = None
        return state

    @property
    def nbytes(self) -> int:
        return int(self.offsets[-1])

    @property
    def bad(self) -> list[tuple[str, str]]:
        """``(path, reason)`` for the images that could not be decoded (nothing stored for them), in path order."""
        return [(self.paths[i], self._bad[i]) for i in sorted(self._bad)]

    def row(self, path: str | os.PathLike) -> int:
        if self._rows is None:
            self._rows = {p: i for i, p in enumerate(self.paths)}
        try:
            return self._rows[os.fsdecode(os.fspath(path))]
        except KeyError:
            raise KeyError(f"{printable_path(path)} is not in the decoded-image cache {self.data_path}") from None

    def rows(self, paths: Sequence[str | os.PathLike]) -> list[int]:
        return [self.row(p) for p in paths]

    def _data(self) -> np.ndarray:
        if self._mm is None:
            if self.nbytes == 0:
                self._mm = np.zeros(0, dtype=np.uint8)
            else:
                self._mm = np.memmap(self.data_path, dtype=np.uint8, mode="r", shape=(self.nbytes,))
        return self._mm

    def array(self, i: int) -> np.ndarray:
        """Row ``i`` as an HWC uint8 array (a copy); raises :class:`BadImageError` for an image that did not decode."""
        if i in self._bad:
            raise BadImageError(self.paths[i], self._bad[i])
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        return np.array(self._data()[start:end]).reshape(int(self.heights[i]), int(self.widths[i]), 3)

    def get(self, i: int) -> Image.Image:
        """Row ``i`` as an RGB PIL image."""
        return Image.fromarray(self.array(i))


def _read_index(index_path: Path, data_path: Path, paths: list[str], short_side: int) -> DecodedCache | str:
    """The cache of ``paths`` described by ``index_path``, or why it cannot be trusted."""
    n = len(paths)
    try:
        with np.load(index_path, allow_pickle=False) as z:
            meta, offsets = z["meta"], z["offsets"]
            heights, widths = z["heights"], z["widths"]
            bad_rows, bad_reasons = z["bad_rows"], z["bad_reasons"]
    except FileNotFoundError:
        return "no index"
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        return f"unreadable index ({exc})"
    if meta.tolist() != [FORMAT_VERSION, short_side, n]:
        return f"index is for another format or size ({meta.tolist()})"
    shapes = (offsets.shape, heights.shape, widths.shape, bad_rows.ndim, bad_reasons.shape)
    if shapes != ((n + 1,), (n,), (n,), 1, bad_rows.shape):
        return "index arrays have the wrong shapes"
    sizes = heights.astype(np.int64) * widths.astype(np.int64) * 3
    if offsets[0] != 0 or not np.array_equal(np.diff(offsets), sizes):
        return "index offsets do not match the image sizes"
    bad = {int(r): str(reason) for r, reason in zip(bad_rows, bad_reasons)}
    if any(not 0 <= r < n for r in bad) or set(np.flatnonzero(sizes == 0).tolist()) != set(bad):
        return "index lists unreadable images inconsistently"
    try:
        actual = os.stat(data_path).st_size
    except OSError:
        return "no data file"
    if actual != int(offsets[-1]):
        return f"data file has {actual} bytes, the index says {int(offsets[-1])} (an incomplete build)"
    return DecodedCache(paths, short_side, data_path, offsets, heights, widths, bad)


def _decode_in_order(
    paths: Sequence[str], short_side: int, workers: int, interpolation: str
) -> Iterator[np.ndarray | str]:
    """Pixels or the reason they cannot be decoded, per path in order; at most a few images per worker in memory."""

    def one(p: str) -> np.ndarray | str:
        try:
            return decode_for_cache(p, short_side, interpolation)
        except BadImageError as exc:
            return exc.reason

    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: collections.deque = collections.deque()
        it = iter(paths)
        for p in it:
            pending.append(pool.submit(one, p))
            if len(pending) >= 4 * workers:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(one, nxt))
            yield result


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _build(
    paths: Sequence[str], short_side: int, data_path: Path, index_path: Path, workers: int, interpolation: str
) -> None:
    """Decode every path into temporary files beside ``data_path`` / ``index_path``, then rename them into place."""
    folder = data_path.parent
    fd, data_tmp = tempfile.mkstemp(prefix=f"{data_path.name}.", suffix=".tmp", dir=folder)
    index_tmp = None
    try:
        os.chmod(fd, new_file_mode(data_path))
        n = len(paths)
        offsets = np.zeros(n + 1, dtype=np.int64)
        heights, widths = np.zeros(n, dtype=np.int32), np.zeros(n, dtype=np.int32)
        bad: dict[int, str] = {}
        with os.fdopen(fd, "wb") as f, Periodic(n, "decoded-image cache") as progress:
            for i, result in enumerate(_decode_in_order(paths, short_side, workers, interpolation)):
                progress.update()
                if isinstance(result, str):
                    bad[i] = result
                    offsets[i + 1] = offsets[i]
                    continue
                f.write(memoryview(result).cast("B"))
                heights[i], widths[i] = result.shape[:2]
                offsets[i + 1] = offsets[i] + result.nbytes
            f.flush()
            os.fsync(f.fileno())
        bad_rows = np.array(sorted(bad), dtype=np.int64)
        bad_reasons = np.array([bad[r] for r in sorted(bad)], dtype=np.str_).reshape(len(bad))
        ifd, index_tmp = tempfile.mkstemp(prefix=f"{index_path.name}.", suffix=".tmp", dir=folder)
        os.chmod(ifd, new_file_mode(index_path))
        with os.fdopen(ifd, "wb") as f:
            np.savez(
                f,
                meta=np.array([FORMAT_VERSION, short_side, n], dtype=np.int64),
                offsets=offsets,
                heights=heights,
                widths=widths,
                bad_rows=bad_rows,
                bad_reasons=bad_reasons,
            )
            f.flush()
            os.fsync(f.fileno())
        # Data first: an index is trusted only beside a data file of exactly the size it names.
        os.replace(data_tmp, data_path)
        os.replace(index_tmp, index_path)
        _fsync_dir(folder)
    except BaseException:
        for tmp in (data_tmp, index_tmp):
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        raise


@contextlib.contextmanager
def _build_lock(lock_path: Path) -> Iterator[None]:
    """An exclusive lock on ``lock_path`` (POSIX ``flock``); without ``fcntl`` or where locking fails, no lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(lock_path, "a+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        except OSError as exc:  # pragma: no cover - file systems without locks
            log.debug("decoded-image cache: no lock on %s (%s)", lock_path, exc)
        yield


def _remove_stale_temps(data_path: Path, index_path: Path) -> None:
    """Temporary files of builds of this key that were killed (called under the key's lock)."""
    for name in (data_path.name, index_path.name):
        for tmp in glob.glob(glob.escape(str(data_path.parent / name)) + ".*.tmp"):
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def open_cache(
    paths: Sequence[str | os.PathLike],
    short_side: int,
    cache_dir: str | os.PathLike,
    workers: int | None = None,
    interpolation: str = "bilinear",
) -> DecodedCache:
    """The decoded-image cache of ``paths`` at ``short_side`` (resized with ``interpolation``): opened if a valid
    one exists, else built.

    Images that cannot be decoded are stored as empty rows and listed in :attr:`DecodedCache.bad` as
    ``(path, reason)``, exactly as :func:`catdog.data.images.find_bad_images` reports them. If files change while the
    cache is built, it is built again; if they change again, :class:`DatasetError` is raised.
    """
    if not isinstance(short_side, int) or short_side < 1:
        raise ValueError(f"short_side must be a positive integer, got {short_side!r}")
    paths = [os.fsdecode(os.fspath(p)) for p in paths]
    cache_dir = Path(cache_dir).expanduser()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"cannot create the decoded-image cache folder {cache_dir}: {exc.strerror or exc}") from None
    workers = workers or min(8, os.cpu_count() or 1)
    changed: list[str] = []
    for _attempt in range(2):
        stats = file_stats(paths)
        key = cache_key(stats, short_side, interpolation)
        data_path, index_path = cache_files(cache_dir, key)
        found = _read_index(index_path, data_path, paths, short_side)
        if isinstance(found, DecodedCache):
            log.info(
                "decoded-image cache: reusing %s (%d images, %.1f MiB)", data_path, len(paths), found.nbytes / 2**20
            )
            return found
        with _build_lock(cache_dir / f"{key}.lock"):
            found = _read_index(index_path, data_path, paths, short_side)  # built by another process meanwhile
            if isinstance(found, DecodedCache):
                return found
            if index_path.exists() or data_path.exists():
                log.warning("decoded-image cache %s is not usable (%s); rebuilding it", data_path, found)
            _remove_stale_temps(data_path, index_path)
            log.info(
                "decoded-image cache: decoding %d images (shorter side <= %d px) into %s with %d threads",
                len(paths), short_side, data_path, workers,
            )  # fmt: skip
            start = time.perf_counter()
            try:
                _build(paths, short_side, data_path, index_path, workers, interpolation)
            except OSError as exc:
                raise DatasetError(
                    f"cannot write the decoded-image cache {data_path}: {exc.strerror or exc}; "
                    "free some space, set data.cache_dir elsewhere or data.cache=false"
                ) from exc
            changed = [a[0] for a, b in zip(stats, file_stats(paths)) if a != b]
            if changed:
                log.warning(
                    "decoded-image cache: %d file(s) changed while being decoded (e.g. %s); decoding again",
                    len(changed), printable_path(changed[0]),
                )  # fmt: skip
                for f in (index_path, data_path):
                    with contextlib.suppress(OSError):
                        os.unlink(f)
                continue
            found = _read_index(index_path, data_path, paths, short_side)
            if not isinstance(found, DecodedCache):  # pragma: no cover - only if the files are altered under us
                raise DatasetError(f"the decoded-image cache {data_path} just written cannot be read back: {found}")
            log.info(
                "decoded-image cache: %d images, %.1f MiB, %d unreadable, built in %.1f s",
                len(paths), found.nbytes / 2**20, len(found.bad), time.perf_counter() - start,
            )  # fmt: skip
            return found
    raise DatasetError(
        f"{len(changed)} image file(s) keep changing while they are cached, e.g. {printable_path(changed[0])}; "
        "wait until the dataset is complete, or set data.cache=false"
    )
