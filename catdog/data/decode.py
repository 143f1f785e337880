"""Image files -> eval-ready uint8 batches, fast: JPEGs decoded by libjpeg-turbo (CPU) or nvJPEG (CUDA) through
TorchCodec (or torchvision where TorchCodec is absent: :mod:`catdog.data.jpeg_libraries`), the resize and crop done on
tensors, PIL only for what these decoders do not take.

Invariants:

- Same pixels as the PIL path (:func:`catdog.data.images.load_image` + :func:`catdog.data.transforms.eval_transform`)
  to within :data:`TOLERANCE` on the CPU: the JPEG decoders give the same RGB pixels as PIL (same libjpeg-turbo, EXIF
  orientation applied exactly once, the same way), and the antialiased bilinear / bicubic resize of uint8 tensors
  differs from PIL's by rounding only; ``nearest`` picks the source pixels PIL picks (:func:`nearest_indices`), so it
  is exact.
  nvJPEG on a GPU decodes with its own IDCT and chroma upsampling, so GPU pixels can differ by a few more units.
- Every file yields an image or a :class:`catdog.errors.BadImageError` naming it, never another exception: a file
  the fast decoders do not take (anything but an 8-bit baseline or progressive Huffman JPEG in greyscale or YCbCr
  with a readable EXIF orientation and a final end-of-image marker: PNG, CMYK, arithmetic coding, a truncated file,
  an XMP-only orientation...), or one they fail on, is decoded by ``load_image``, which decides.
- Order: :func:`fast_loader` yields the images in the order of ``paths``, ``batch_size`` at a time, with their
  positions (an image skipped under ``on_bad_image=skip`` leaves its position out).

Which decoder, measured on a 2-core AMD EPYC (docs/benchmarks.md, "Decoders"): for the 200x200 Kaggle JPEGs
libjpeg-turbo (through TorchCodec or torchvision: the same pixels) + the tensor resize decodes 1.6-2.3x as many images
per core as ``load_image`` + ``eval_transform`` (less Python per image, and torch's uint8 resize is several
times faster than PIL's). For a JPEG at least twice the resize size on its shorter side, PIL's draft mode
(libjpeg-turbo's DCT scaling by 1/2, 1/4 or 1/8 while decoding) beats decoding every pixel, so such files go through
``load_image(draft_size=...)``, then the same tensor resize. On the CPU the images are decoded in DataLoader worker
processes (:class:`DecodedImages`), as the PIL path is: threads in one process would serialize the per-image Python
work with the model's. On CUDA the files are read in threads and decoded by nvJPEG a batch at a time
(:class:`DecodedBatches`), where nvJPEG cannot scale the DCT: every pixel is decoded, then resized on the GPU.
"""

from __future__ import annotations

import os
import struct
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode, v2

from catdog.data.datamodule import make_loader
from catdog.data.images import MAX_ASPECT_RATIO, MAX_PIXELS, load_image, load_image_bytes, open_regular_file
from catdog.data.jpeg_libraries import LIBRARIES, best_library, decode_upright, describe, unavailable
from catdog.data.transforms import TTASquare, eval_resize_size, interpolation_mode
from catdog.errors import BadImageError, ConfigError

#: predict.py's and catdog-serve's ``decoder=``: auto, PIL, the fast path with the best JPEG library, or one by name.
DECODERS = ("auto", "pil", "fast", *LIBRARIES)
# Largest difference from the PIL path on the CPU, in uint8 levels: (max over the pixels of an image, mean over them).
# Rounding of the bilinear / bicubic resize only: on the 200x200 Kaggle JPEGs at most 1 level, 0.012 on average; a
# 50x130 JPEG resized to 37 px differs by 1 level at 17 % of its pixels. tests/unit/data/test_decode.py holds the path
# to it.
TOLERANCE = (2, 0.25)
# Files larger than this are left to load_image, which refuses oversized images from their header unread.
MAX_FILE_BYTES = 64 * 2**20

_SOI, _EOI, _SOS = 0xD8, 0xD9, 0xDA
# Huffman-coded baseline, extended sequential and progressive frames: the ones both libjpeg-turbo and nvJPEG take.
_FAST_FRAMES = (0xC0, 0xC1, 0xC2)
# Every other start-of-frame marker (lossless, hierarchical, arithmetic coding): left to PIL.
_OTHER_FRAMES = (0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)
_EXIF = b"Exif\x00\x00"
_XMP = b"http://ns.adobe.com/xap/1.0/\x00"


def check_decoder(value: str, key: str = "decoder") -> str:
    if value not in DECODERS:
        raise ConfigError(f"{key} must be one of {list(DECODERS)}, got {value!r}")
    return value


def resolve_decoder(decoder: str, key: str = "decoder") -> str:
    """``pil`` or the JPEG library of the fast path (``torchcodec`` | ``torchvision``) for ``decoder``: ``auto`` is the
    best library that works here (:func:`catdog.data.jpeg_libraries.best_library`), else ``pil``; ``fast`` and a
    library named that cannot decode here are a :class:`ConfigError` saying why."""
    check_decoder(decoder, key)
    if decoder == "pil":
        return "pil"
    if decoder in LIBRARIES:
        problem = unavailable(decoder)
        if problem is not None:
            raise ConfigError(f"{key}={decoder}: {problem}; use {key}=auto (the best library here, else pil) or pil")
        return decoder
    library = best_library()
    if library is not None:
        return library
    if decoder == "fast":
        why = "; ".join(unavailable(lib) for lib in LIBRARIES)
        raise ConfigError(f"{key}=fast, but no JPEG library decodes here ({why}); use {key}=pil or auto")
    return "pil"


def decoder_description(decoder: str) -> str:
    """What ``decoder`` (as :func:`resolve_decoder` gives it) decodes with, for the log: the JPEG library and its
    version, and why any library preferred to it is not used."""
    if decoder == "pil":
        text, passed = "PIL for every image", LIBRARIES
    else:
        text, passed = f"{describe(decoder)} for JPEGs, PIL for other images", LIBRARIES[: LIBRARIES.index(decoder)]
    why = [unavailable(lib) for lib in passed if unavailable(lib) is not None]
    return text + (f" ({'; '.join(why)})" if why else "")


# ----- headers -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JpegInfo:
    """What the fast path needs from a JPEG header: its stored size and EXIF orientation (1-8; 1 = as stored)."""

    width: int
    height: int
    orientation: int


def exif_orientation(tiff: bytes) -> int | None:
    """The Orientation tag of an EXIF block (TIFF header onwards): 1 when absent, None when the block is not readable
    (``load_image`` then decides how to treat it)."""
    if len(tiff) < 8 or tiff[:4] not in (b"II*\x00", b"MM\x00*"):
        return None
    end = "<" if tiff[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(end + "I", tiff, 4)
    if ifd + 2 > len(tiff):
        return None
    (count,) = struct.unpack_from(end + "H", tiff, ifd)
    if ifd + 2 + 12 * count > len(tiff):
        return None
    for i in range(count):
        tag, kind, n = struct.unpack_from(end + "HHI", tiff, ifd + 2 + 12 * i)
        if tag == 0x0112:
            if kind != 3 or n != 1:  # not one SHORT: unusual, left to PIL
                return None
            return struct.unpack_from(end + "H", tiff, ifd + 2 + 12 * i + 8)[0]
    return 1


def jpeg_info(data: bytes) -> JpegInfo | None:
    """Size and orientation of a JPEG the fast decoders take, else None (``load_image`` decodes it).

    Taken: an 8-bit Huffman-coded baseline, extended or progressive frame with 1 (grey) or 3 (YCbCr) components, at
    most one EXIF block (whose orientation parses) and no orientation in XMP (PIL reads it there too), no Adobe
    segment and no component ids R, G, B (other colour transforms), within ``MAX_PIXELS`` and ``MAX_ASPECT_RATIO``,
    and the file ends with the end-of-image marker (a truncated file does not).
    """
    if len(data) < 4 or data[0] != 0xFF or data[1] != _SOI or data.rstrip(b"\x00")[-2:] != b"\xff\xd9":
        return None
    orientation, exif_blocks, pos = 1, 0, 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # stand-alone markers
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        segment = data[pos + 4 : pos + 2 + length]
        if length < 2 or len(segment) != length - 2 or marker in (_SOS, _EOI) or marker in _OTHER_FRAMES:
            return None
        if marker == 0xE1 and segment.startswith(_EXIF):
            exif_blocks += 1
            orientation = exif_orientation(segment[len(_EXIF) :])
            if orientation is None or exif_blocks > 1:
                return None
        elif (marker == 0xE1 and segment.startswith(_XMP) and b"Orientation" in segment) or (
            marker == 0xEE and segment.startswith(b"Adobe")
        ):
            return None
        elif marker in _FAST_FRAMES:
            if len(segment) < 6:
                return None
            precision, height, width, components = struct.unpack_from(">BHHB", segment)
            ids = bytes(segment[6 + 3 * i] for i in range(components) if 6 + 3 * i < len(segment))
            if precision != 8 or components not in (1, 3) or ids == b"RGB" or len(ids) != components:
                return None
            if width < 1 or height < 1 or width * height > MAX_PIXELS:
                return None
            if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
                return None
            return JpegInfo(width, height, orientation)
        pos += 2 + length
    return None


def read_file(path: str) -> bytes | None:
    """The bytes of the regular file ``path``, or None for anything else (missing, unreadable, special, larger than
    ``MAX_FILE_BYTES``): ``load_image`` then reports it. Never blocks on a pipe."""
    try:
        fh, size = open_regular_file(path)
    except BadImageError:
        return None
    with fh:
        try:
            return fh.read(MAX_FILE_BYTES + 1) if size <= MAX_FILE_BYTES else None
        except OSError:
            return None


# ----- pixels ------------------------------------------------------------------------------------------------------
def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """An RGB PIL image -> uint8 CHW tensor (a view of an HWC copy: channels-last memory, as the resize prefers)."""
    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1)


@dataclass(frozen=True)
class EvalGeometry:
    """The eval transform's geometry: shorter side to ``resize`` (antialiased, ``interpolation``), then the centre
    ``image_size`` square, or with ``square`` the :class:`catdog.data.transforms.TTASquare` of side ``resize``."""

    image_size: int
    crop_pct: float = 0.875
    square: bool = False
    interpolation: str = "bilinear"

    def __post_init__(self):
        interpolation_mode(self.interpolation)
        if not isinstance(self.image_size, int) or self.image_size < 1:
            raise ConfigError(f"data.image_size must be a positive integer, got {self.image_size!r}")

    @property
    def resize(self) -> int:
        return eval_resize_size(self.image_size, self.crop_pct)


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(H, W) after resizing the shorter side to ``size``, as torchvision's ``Resize(size)`` computes it."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def nearest_indices(length: int, out: int, device=None) -> torch.Tensor:
    """The source index of each of ``out`` pixels when PIL resizes ``length`` pixels with ``NEAREST``: PIL steps
    through the source in double precision from the first output pixel's centre, accumulating the scale."""
    scale = length / out
    steps = np.full(out, scale, dtype=np.float64)
    steps[0] = scale * 0.5
    idx = np.minimum(np.add.accumulate(steps).astype(np.int64), length - 1)
    return torch.from_numpy(idx).to(device)


def resize_crop(x: torch.Tensor, geometry: EvalGeometry) -> torch.Tensor:
    """uint8 (C, H, W) or (N, C, H, W) of one size -> the eval crop, on ``x``'s device."""
    h, w = x.shape[-2:]
    size = resized_size(h, w, geometry.resize)
    if (h, w) == size:
        pass
    elif geometry.interpolation == "nearest":
        x = x.index_select(-2, nearest_indices(h, size[0], x.device))
        x = x.index_select(-1, nearest_indices(w, size[1], x.device))
    else:
        mode = InterpolationMode(geometry.interpolation)
        x = v2.functional.resize(x, list(size), interpolation=mode, antialias=True)
    if geometry.square:
        return TTASquare(geometry.resize, geometry.image_size)(x)
    return v2.functional.center_crop(x, [geometry.image_size, geometry.image_size])


# ----- one image on the CPU, a batch on the device -----------------------------------------------------------------
def _library(library: str | None) -> str | None:
    """``library``, or where None the best JPEG library here (None again where there is none: PIL decodes)."""
    return best_library() if library is None else library


def decode_cpu(path: str, geometry: EvalGeometry, library: str | None = None) -> torch.Tensor:
    """One image, eval-ready, on the CPU: PIL draft mode for a JPEG at least twice the resize size on its shorter side,
    libjpeg-turbo (through ``library``, default the best here) for other JPEGs the fast path takes, ``load_image`` for
    the rest; raises only ``BadImageError``."""
    path = os.fsdecode(path)
    data = read_file(path)
    if data is None:  # load_image says why
        return resize_crop(pil_to_tensor(load_image(path, draft_size=geometry.resize)), geometry)
    return decode_bytes(data, path, geometry, library=library)


def decode_bytes(
    data: bytes, name: str, geometry: EvalGeometry, max_pixels: int | None = None, library: str | None = None
) -> torch.Tensor:
    """:func:`decode_cpu` for an image held in memory (errors name ``name``); ``max_pixels`` as in ``load_image``."""
    info, library = jpeg_info(data), _library(library)
    x = None
    small = info is not None and min(info.width, info.height) < 2 * geometry.resize
    if library is not None and small and (max_pixels is None or info.width * info.height <= max_pixels):
        try:
            x = decode_upright([data], [info.orientation], torch.device("cpu"), library)[0]
        except Exception:  # noqa: BLE001 - libjpeg refused it: load_image_bytes decides
            x = None
    if x is None:
        x = pil_to_tensor(load_image_bytes(data, name, draft_size=geometry.resize, max_pixels=max_pixels))
    return resize_crop(x, geometry)


def _decoded_or_error(load: Callable[[], torch.Tensor]) -> torch.Tensor | BadImageError:
    try:
        return load()
    except BadImageError as exc:
        return exc


def decode_batch(
    paths: Sequence[str],
    datas: Sequence[bytes | None],
    geometry: EvalGeometry,
    device: torch.device,
    pool: ThreadPoolExecutor | None = None,
    library: str | None = None,
) -> list[torch.Tensor | BadImageError]:
    """Eval-ready images of ``paths`` (whose bytes are ``datas``, None where unreadable) on ``device``, in order.

    The JPEGs the fast path takes are decoded in one call of ``library`` (default: the best here) on ``device``
    (nvJPEG on CUDA); if that
    call fails they are retried one by one, and those that still fail, like every other file, go to ``load_image``
    (in ``pool`` when given). Images of one size are resized and cropped as one batch. An unreadable file's entry is
    its :class:`BadImageError`.
    """
    paths = [os.fsdecode(p) for p in paths]
    library = _library(library)
    infos = [jpeg_info(d) if d is not None and library is not None else None for d in datas]
    fast = [i for i, info in enumerate(infos) if info is not None]
    images: list[torch.Tensor | BadImageError | None] = [None] * len(paths)
    if fast:
        orientations = [infos[i].orientation for i in fast]
        try:
            decoded = decode_upright([datas[i] for i in fast], orientations, device, library)
        except Exception:  # noqa: BLE001 - one bad file fails the whole call: retry one by one
            decoded = [_decode_one(datas[i], o, device, library) for i, o in zip(fast, orientations)]
        for i, x in zip(fast, decoded):
            if x is not None and x.ndim == 3 and x.shape[0] == 3:
                images[i] = x
    rest = [i for i, x in enumerate(images) if x is None]

    def pil(i: int) -> torch.Tensor | BadImageError:
        return _decoded_or_error(
            lambda: pil_to_tensor(load_image(paths[i], draft_size=geometry.resize)).to(device, non_blocking=True)
        )

    for i, x in zip(rest, pool.map(pil, rest) if pool is not None else map(pil, rest)):
        images[i] = x
    by_size: dict[tuple[int, ...], list[int]] = {}
    for i, x in enumerate(images):
        if isinstance(x, torch.Tensor):
            by_size.setdefault(tuple(x.shape), []).append(i)
    for group in by_size.values():
        out = resize_crop(torch.stack([images[i] for i in group]), geometry)
        for i, x in zip(group, out):
            images[i] = x
    return images


def _decode_one(data: bytes, orientation: int, device: torch.device, library: str) -> torch.Tensor | None:
    try:
        return decode_upright([data], [orientation], device, library)[0]
    except Exception:  # noqa: BLE001 - nvJPEG / libjpeg refused it: load_image decides
        return None


# ----- the loader --------------------------------------------------------------------------------------------------
class DecodedBatches:
    """``(x, labels, indices)`` batches over ``paths`` in order, as ``make_loader(ImageDataset(...))`` yields them for
    :func:`catdog.prediction.predict_loader` (``len(loader.dataset)`` is the number of paths).

    The files are read in ``workers`` threads, ``prefetch`` batches ahead while the model runs, and decoded a batch at
    a time on ``device`` (:func:`decode_batch`: nvJPEG on CUDA), ``x`` already there. ``on_bad_image``: ``error``
    raises the first unreadable image's :class:`BadImageError`, ``skip`` warns and leaves it out, as
    :class:`catdog.data.datamodule.ImageDataset` does. For the CPU see :func:`fast_loader`.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        geometry: EvalGeometry,
        batch_size: int,
        device: torch.device | str = "cpu",
        workers: int = 1,
        on_bad_image: str = "error",
        labels: Sequence[int] | None = None,
        prefetch: int = 2,
        library: str | None = None,
    ):
        self.dataset = [os.fsdecode(os.fspath(p)) for p in paths]
        self.labels, self.library = (list(labels) if labels is not None else None), library
        self.geometry, self.batch_size, self.device = geometry, int(batch_size), torch.device(device)
        self.workers, self.on_bad_image, self.prefetch = max(1, int(workers)), on_bad_image, max(1, int(prefetch))

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def _submit(self, pool: ThreadPoolExecutor, start: int) -> tuple[range, list[Future]]:
        span = range(start, min(start + self.batch_size, len(self.dataset)))
        return span, [pool.submit(read_file, self.dataset[i]) for i in span]

    def _batch(self, pool: ThreadPoolExecutor, span: range, futures: list[Future]):
        datas = [f.result() for f in futures]
        results = decode_batch([self.dataset[i] for i in span], datas, self.geometry, self.device, pool, self.library)
        kept = []
        for i, x in zip(span, results):
            if isinstance(x, BadImageError):
                if self.on_bad_image == "error":
                    raise x
                warnings.warn(f"skipping unreadable image {x}", stacklevel=3)
            else:
                kept.append((i, x))
        if not kept:
            empty = torch.empty(0, dtype=torch.long)
            return torch.empty(0, 3, 1, 1, dtype=torch.uint8, device=self.device), empty, empty
        indices = torch.tensor([i for i, _ in kept], dtype=torch.long)
        labels = torch.tensor([self.labels[i] if self.labels is not None else -1 for i, _ in kept], dtype=torch.long)
        return torch.stack([x for _, x in kept]), labels, indices

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="decode")
        pending: deque = deque()
        starts = iter(range(0, len(self.dataset), self.batch_size))
        try:
            for start in starts:
                pending.append(self._submit(pool, start))
                if len(pending) > self.prefetch:
                    yield self._batch(pool, *pending.popleft())
            while pending:
                yield self._batch(pool, *pending.popleft())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


class DecodedImages(Dataset):
    """:func:`decode_cpu` of each path -> ``(uint8 CHW, -1, index)``, for DataLoader worker processes on the CPU
    (the per-image Python work then runs in parallel, which threads in one process would serialize); with
    ``on_bad_image="skip"`` an unreadable image yields None and a warning, as in ``ImageDataset``. ``library``: the
    JPEG library (None: the best here)."""

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        geometry: EvalGeometry,
        on_bad_image: str = "error",
        library: str | None = None,
    ):
        self.paths = [os.fsdecode(os.fspath(p)) for p in paths]
        self.geometry, self.on_bad_image, self.library = geometry, on_bad_image, library

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            return decode_cpu(self.paths[index], self.geometry, self.library), -1, index
        except BadImageError as exc:
            if self.on_bad_image == "error":
                raise
            warnings.warn(f"skipping unreadable image {exc}", stacklevel=2)
            return None


def fast_loader(
    paths: Sequence[str | os.PathLike],
    geometry: EvalGeometry,
    batch_size: int,
    device: torch.device | str,
    workers: int,
    on_bad_image: str = "error",
    library: str | None = None,
):
    """The fast path's loader for :func:`catdog.prediction.predict_loader`: on CUDA :class:`DecodedBatches` (nvJPEG,
    ``workers`` threads reading files), on the CPU :class:`DecodedImages` in ``workers`` DataLoader processes;
    ``library`` decodes the JPEGs (None: the best here)."""
    if torch.device(device).type == "cuda":
        return DecodedBatches(paths, geometry, batch_size, device, max(1, workers), on_bad_image, library=library)
    return make_loader(DecodedImages(paths, geometry, on_bad_image, library), batch_size, workers)
