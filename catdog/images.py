"""Robust image decoding: any mode, any EXIF orientation, to RGB; failures become :class:`BadImageError`."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from catdog.errors import BadImageError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
# A bounded refusal instead of an out-of-memory kill: 8,000 x 8,000 pixels is far above any photo we train on.
MAX_PIXELS = 64_000_000

ImageFile.LOAD_TRUNCATED_IMAGES = False


def is_image_file(path: str | os.PathLike) -> bool:
    """True for a visible file whose extension is a known image type (hidden files such as ``._cat.1.jpg`` are not)."""
    name = os.path.basename(path)
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparency is composited on white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = float(arr.max()) if arr.size else 0.0
        scale = 255.0 / (65535.0 if hi > 255 else 255.0)
        return Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(path: str | os.PathLike, draft_size: int | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode ``path`` to an RGB PIL image with EXIF orientation applied.

    ``draft_size`` lets JPEG decoding downscale by a power of two while keeping both sides >= ``draft_size``,
    which is several times faster for large photos. Any failure raises :class:`BadImageError` naming the file.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise BadImageError(path, f"image is {w}x{h} pixels, more than the limit of {max_pixels:,}")
                if w < 1 or h < 1:
                    raise BadImageError(path, f"image has no pixels ({w}x{h})")
                if draft_size and img.format == "JPEG":
                    img.draft("RGB", (draft_size, draft_size))
                img.load()
                img = ImageOps.exif_transpose(img)
                return _to_rgb(img)
    except BadImageError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise BadImageError(path, f"refused as a possible decompression bomb ({exc})") from None
    except FileNotFoundError:
        raise BadImageError(path, "file not found (a dangling link or a file removed since listing)") from None
    except PermissionError:
        raise BadImageError(path, "permission denied") from None
    except (OSError, ValueError, SyntaxError, MemoryError, EOFError, IndexError, TypeError, ZeroDivisionError) as exc:
        reason = str(exc) or type(exc).__name__
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            reason = "empty file (0 bytes)"
        raise BadImageError(path, f"cannot decode image: {reason}") from None


def check_image(path: str | os.PathLike, full: bool = True) -> str | None:
    """Return ``None`` if ``path`` decodes, else the reason it does not. ``full=False`` reads only the header."""
    try:
        if full:
            load_image(path, draft_size=64)
        else:
            with Image.open(path) as img:
                img.verify()
        return None
    except BadImageError as exc:
        return exc.reason
    except Exception as exc:  # noqa: BLE001 - header checks can raise anything PIL's plugins raise
        return f"cannot read image header: {exc or type(exc).__name__}"


def find_bad_images(
    paths: Sequence[str | os.PathLike], full: bool = True, workers: int | None = None
) -> list[tuple[str, str]]:
    """Check every path (decoding in parallel threads; PIL releases the GIL) and return ``(path, reason)`` pairs."""
    if not paths:
        return []
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = list(pool.map(lambda p: check_image(p, full=full), paths, chunksize=64))
    return [(str(p), r) for p, r in zip(paths, reasons) if r is not None]


def format_bad_images(bad: Iterable[tuple[str, str]], limit: int = 20) -> str:
    bad = list(bad)
    lines = [f"  {p}: {r}" for p, r in bad[:limit]]
    if len(bad) > limit:
        lines.append(f"  ... and {len(bad) - limit} more")
    return "\n".join(lines)


def list_image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder`` (not recursive), sorted by name; hidden and non-image files skipped."""
    folder = Path(folder)
    with os.scandir(folder) as it:
        files = [Path(e.path) for e in it if is_image_file(e.name) and not e.is_dir()]
    return sorted(files)
