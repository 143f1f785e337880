"""Robust image decoding: any mode, any EXIF orientation, to RGB; failures become :class:`BadImageError`.

:func:`load_image` is the only place images are decoded. Whatever is on disk (an empty file, a web page saved as
``.jpg``, a truncated download, a special file, a decompression bomb), it returns an RGB image or raises
:class:`BadImageError` naming the file; it never raises anything else and never decodes an image of more
than ``MAX_PIXELS`` pixels (refused from its header, before the pixels are allocated).
"""

from __future__ import annotations

import functools
import io
import logging
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from catdog.errors import BadImageError, DatasetError
from catdog.progress import Periodic

log = logging.getLogger(__name__)
T = TypeVar("T")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
# The decoders tried, whatever the extension says (a PNG saved as .jpg still decodes). Other Pillow plugins are
# never tried: some run external programs (EPS -> Ghostscript) and none of them is a photo format.
IMAGE_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "TIFF", "PPM")
# A bounded refusal instead of an out-of-memory kill: 8,000 x 8,000 pixels is far above any photo we train on.
MAX_PIXELS = 64_000_000
# Resizing the shorter side of a 1 x 100,000 strip to 256 px would need gigabytes; no photo is that thin.
MAX_ASPECT_RATIO = 100

ImageFile.LOAD_TRUNCATED_IMAGES = False

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I;16S", "I;16BS", "I;16LS", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _fspath(path: str | bytes | os.PathLike) -> str:
    """``path`` as ``str``; bytes names that are not valid UTF-8 keep their bytes as surrogate escapes."""
    return os.fsdecode(os.fspath(path))


def is_image_file(path: str | bytes | os.PathLike) -> bool:
    """True for a visible file whose extension is a known image type (hidden files such as ``._cat.1.jpg`` are not)."""
    name = os.path.basename(_fspath(path))
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


@functools.cache
def _open_formats() -> tuple[str, ...]:
    Image.init()
    return tuple(f for f in IMAGE_FORMATS if f in Image.OPEN)


def _to_8bit_gray(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit / float grey -> 8-bit grey by scaling, not clipping (65535 -> 255, 32768 -> 127)."""
    arr = np.asarray(img)
    if arr.dtype.kind == "f":
        arr = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        hi = float(arr.max()) if arr.size else 0.0
        scale = 255.0 if hi <= 1.0 else (1.0 if hi <= 255.0 else 1.0 / 257.0)
        out = np.clip(arr * scale, 0, 255).astype(np.uint8)
    else:
        arr = np.clip(arr, 0, 65535).astype(np.uint16, copy=False)
        hi = int(arr.max()) if arr.size else 0
        # A 16-bit image whose values all fit in 8 bits holds 8-bit data; otherwise it uses the 16-bit range.
        out = (arr if hi <= 255 else arr // 257).astype(np.uint8)
    return Image.fromarray(out)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparency is composited on white."""
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.mode in _SIXTEEN_BIT_MODES:
        return _to_8bit_gray(img).convert("RGB")
    if img.mode == "P" or (img.mode in ("L", "RGB") and "transparency" in img.info):
        img = img.convert("RGBA")
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _apply_orientation(img: Image.Image, path: str) -> Image.Image:
    """EXIF orientation applied (always a new image); a corrupt EXIF block leaves the pixels as stored."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception as exc:  # noqa: BLE001 - EXIF parsing raises many kinds; the pixels themselves are fine
        log.debug("%s: ignoring unreadable EXIF orientation (%s)", path, exc)
        return img.copy()


def _describe(head: bytes, size: int) -> str:
    """Why a file that no decoder accepts is not an image, from its first bytes."""
    if size == 0:
        return "empty file (0 bytes)"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "not an image: an HTML page"
    if text.startswith(b"<"):
        return "not an image: XML/HTML text"
    if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "not an image: a text file"
    return "not an image, or an unsupported image format"


def _check_size(path: str, img: Image.Image, max_pixels: int) -> None:
    w, h = img.size
    if w < 1 or h < 1:
        raise BadImageError(path, f"image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise BadImageError(path, f"image is {w}x{h} pixels, more than the limit of {max_pixels:,}; refused unread")
    if max(w, h) > MAX_ASPECT_RATIO * min(w, h):
        raise BadImageError(
            path, f"image is {w}x{h} pixels, an aspect ratio over the limit of {MAX_ASPECT_RATIO}:1; refused unread"
        )


def open_regular_file(path: str):
    """Open ``path`` for reading without blocking; only regular files (through symlinks) are accepted."""
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        kind = "a dangling symbolic link" if os.path.islink(path) else "a file removed since it was listed"
        raise BadImageError(path, f"file not found ({kind})") from None
    except PermissionError:
        raise BadImageError(path, "permission denied: the file is not readable") from None
    except OSError as exc:
        raise BadImageError(path, f"cannot open file: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a special file (pipe, socket or device)"
            raise BadImageError(path, f"not a regular file but {kind}")
        return os.fdopen(fd, "rb"), st.st_size
    except BaseException:
        os.close(fd)
        raise


@contextmanager
def _identified(fh, size: int, name: str, max_pixels: int) -> Iterator[Image.Image]:
    """The image in the open file ``fh`` (``size`` bytes), identified and size-checked, its pixels not yet decoded;
    errors name ``name``."""
    if size == 0:
        raise BadImageError(name, "empty file (0 bytes)")
    try:
        img = Image.open(fh, formats=_open_formats())
    except UnidentifiedImageError:
        fh.seek(0)
        raise BadImageError(name, _describe(fh.read(64), size)) from None
    with img:
        _check_size(name, img, max_pixels)
        yield img


@contextmanager
def _opened(path: str, max_pixels: int) -> Iterator[Image.Image]:
    """The identified, size-checked image at ``path``, pixels not yet decoded; closed on exit."""
    fh, size = open_regular_file(path)
    with fh, _identified(fh, size, path, max_pixels) as img:
        yield img


def _decoded(img: Image.Image, name: str, draft_size: int | None) -> Image.Image:
    if draft_size and draft_size > 0 and img.format in ("JPEG", "MPO"):
        img.draft("RGB", (draft_size, draft_size))
    img.load()
    return _to_rgb(_apply_orientation(img, name))


def _decode(path: str, draft_size: int | None, max_pixels: int) -> Image.Image:
    with _opened(path, max_pixels) as img:
        return _decoded(img, path, draft_size)


def _verify_header(path: str, max_pixels: int) -> None:
    with _opened(path, max_pixels) as img:
        img.verify()


def _guarded(path: str | bytes | os.PathLike, read: Callable[[str], T]) -> T:
    """``read(path)``, with every failure turned into a :class:`BadImageError` naming ``path``."""
    path = _fspath(path)
    try:
        return read(path)
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImageError(path, f"refused as a possible decompression bomb ({exc})") from None
    except MemoryError:
        raise BadImageError(path, "not enough memory to decode the image") from None
    except Exception as exc:  # noqa: BLE001 - a corrupt file can make any decoder raise anything; report it, never crash
        detail = str(exc) or type(exc).__name__
        if isinstance(exc, OSError) and "truncated" in detail.lower():
            detail = f"the file is truncated, e.g. an incomplete download or copy ({detail})"
        raise BadImageError(path, f"cannot decode image: {detail}") from None


def load_image(
    path: str | bytes | os.PathLike, draft_size: int | None = None, max_pixels: int | None = None
) -> Image.Image:
    """Decode ``path`` to an RGB PIL image with EXIF orientation applied.

    ``draft_size`` lets JPEG decoding downscale by a power of two while keeping both sides >= ``draft_size``,
    which is several times faster for large photos. Images over ``max_pixels`` (default :data:`MAX_PIXELS`) are
    refused from their header, before any pixel is allocated. Any failure raises :class:`BadImageError` naming the
    file.
    """
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    return _guarded(path, lambda p: _decode(p, draft_size, limit))


def load_image_bytes(
    data: bytes, name: str, draft_size: int | None = None, max_pixels: int | None = None
) -> Image.Image:
    """:func:`load_image` for an image held in memory (e.g. an upload): the same decoding, limits and errors, which
    name ``name`` in place of a path."""
    limit = MAX_PIXELS if max_pixels is None else max_pixels

    def read(label: str) -> Image.Image:
        with _identified(io.BytesIO(data), len(data), label, limit) as img:
            return _decoded(img, label, draft_size)

    return _guarded(name, read)


def check_image(path: str | bytes | os.PathLike, full: bool = True) -> str | None:
    """Return ``None`` if ``path`` decodes, else the reason it does not. ``full=False`` reads only the header."""
    try:
        if full:
            load_image(path, draft_size=64)
        else:
            _guarded(path, lambda p: _verify_header(p, MAX_PIXELS))
        return None
    except BadImageError as exc:
        return exc.reason


def find_bad_images(
    paths: Sequence[str | os.PathLike], full: bool = True, workers: int | None = None
) -> list[tuple[str, str]]:
    """Check every path (decoding in parallel threads; PIL releases the GIL) and return ``(path, reason)`` pairs."""
    if not paths:
        return []
    workers = workers or min(8, os.cpu_count() or 1)
    reasons = []
    with ThreadPoolExecutor(max_workers=workers) as pool, Periodic(len(paths), "checking images") as progress:
        for reason in pool.map(lambda p: check_image(p, full=full), paths, chunksize=64):
            reasons.append(reason)
            progress.update()
    return [(_fspath(p), r) for p, r in zip(paths, reasons) if r is not None]


def format_bad_images(bad: Iterable[tuple[str, str]], limit: int = 20) -> str:
    bad = list(bad)
    lines = [f"  {p}: {r}" for p, r in bad[:limit]]
    if len(bad) > limit:
        lines.append(f"  ... and {len(bad) - limit} more")
    return "\n".join(lines)


def list_image_files(folder: str | bytes | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder`` (not recursive), sorted by name; hidden and non-image files skipped.

    Anything else with an image name is listed, so that a dangling link or a special file is reported as unreadable
    rather than silently left out.
    """
    folder = Path(_fspath(folder))
    try:
        with os.scandir(folder) as it:
            files = [Path(e.path) for e in it if is_image_file(e.name) and not _is_dir(e)]
    except FileNotFoundError:
        raise DatasetError(f"folder not found: {folder}") from None
    except NotADirectoryError:
        raise DatasetError(f"not a folder: {folder}") from None
    except PermissionError:
        raise DatasetError(f"cannot list folder {folder}: permission denied") from None
    return sorted(files)


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False
