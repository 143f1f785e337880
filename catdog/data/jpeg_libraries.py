"""The JPEG libraries behind the fast decoding path (:mod:`catdog.data.decode`): TorchCodec's image decoders
(``torchcodec.decoders.decode_jpeg``, torchcodec >= 0.16) or torchvision's ``torchvision.io.decode_jpeg``, which
torchvision 0.29 deprecates in favour of TorchCodec. Both run libjpeg-turbo on the CPU and nvJPEG on CUDA (a list of
JPEGs in one batched call); neither needs a system library for JPEGs (TorchCodec's video decoders need FFmpeg, its
image decoders do not).

Which one (``decoder=auto`` / ``fast`` of predict.py and catdog-serve): TorchCodec where it imports, is new enough
and decodes a test image, else torchvision's where it works (older torch, or a torch that TorchCodec's build does not
match), else none and PIL decodes everything. ``decoder=torchcodec`` / ``torchvision`` asks for one by name and is
refused, saying why, where it cannot decode. The choice is logged by predict.py and shown by the server's ``/info``.

EXIF orientation is applied exactly once whatever the library: TorchCodec turns a JPEG upright while decoding,
torchvision's ``decode_jpeg`` leaves it as stored. Rather than trust a version or a device to behave one way,
:func:`orients` decodes a small JPEG with orientation 6 once per library and device and catdog turns the images
upright (:func:`orient`, as ``PIL.ImageOps.exif_transpose`` does) only where the library did not.
"""

from __future__ import annotations

import functools
import io
import re
from collections.abc import Sequence

import torch
import torchvision
from PIL import Image
from torchvision.io import ImageReadMode
from torchvision.io import decode_jpeg as torchvision_decode_jpeg

#: In order of preference.
LIBRARIES = ("torchcodec", "torchvision")
#: The first TorchCodec with image decoders.
MIN_TORCHCODEC = (0, 16)
#: The probe image as stored (width, height); EXIF orientation 6 turns it to (height, width).
_PROBE_SIZE = (16, 8)


def probe_jpeg(orientation: int = 1) -> bytes:
    """A small JPEG, ``_PROBE_SIZE`` as stored, with an EXIF ``orientation`` tag when it is not 1."""
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.new("RGB", _PROBE_SIZE, (10, 200, 30)).save(buf, format="JPEG", exif=exif.tobytes())
    return buf.getvalue()


def version_tuple(version: str) -> tuple[int, ...]:
    """``"0.17.0+cu130"`` -> (0, 17, 0); the leading numbers only."""
    match = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(v) for v in match.group(0).split(".")) if match else ()


def library_version(library: str) -> str:
    if library == "torchcodec":
        import torchcodec  # optional: imported only when asked for

        return str(torchcodec.__version__)
    return str(torchvision.__version__)


def _torchcodec(datas: Sequence[bytes], device: torch.device) -> list[torch.Tensor]:
    from torchcodec.decoders import decode_jpeg  # optional dependency

    return decode_jpeg(list(datas), mode="RGB", device=device)


def _torchvision(datas: Sequence[bytes], device: torch.device) -> list[torch.Tensor]:
    # Deprecated since torchvision 0.29 (superseded by TorchCodec): used where TorchCodec is absent or does not work.
    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    return torchvision_decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)


_DECODE = {"torchcodec": _torchcodec, "torchvision": _torchvision}


def decode_jpegs(datas: Sequence[bytes], device: torch.device, library: str) -> list[torch.Tensor]:
    """RGB uint8 CHW tensors on ``device`` of the JPEGs ``datas``, decoded by ``library`` in one call (one batched
    nvJPEG call on CUDA), as the library leaves their orientation (see :func:`decode_upright`)."""
    return _DECODE[library](datas, device)


@functools.cache
def unavailable(library: str) -> str | None:
    """Why ``library`` cannot decode JPEGs here, or None when it can (checked once per process)."""
    if library not in _DECODE:
        return f"unknown JPEG library {library!r} (one of {list(LIBRARIES)})"
    try:
        version = library_version(library)
    except ImportError as exc:
        return f"{library} is not installed ({exc}); pip install 'torchcodec>={'.'.join(map(str, MIN_TORCHCODEC))}'"
    except Exception as exc:  # noqa: BLE001 - a broken install (e.g. built for another torch) fails on import
        return f"{library} does not load here: {_first_line(exc)}"
    if library == "torchcodec" and version_tuple(version) < MIN_TORCHCODEC:
        need = ".".join(map(str, MIN_TORCHCODEC))
        return f"torchcodec {version} has no image decoders (they came in {need}); pip install 'torchcodec>={need}'"
    try:
        decoded = decode_jpegs([probe_jpeg()], torch.device("cpu"), library)[0]
    except Exception as exc:  # noqa: BLE001 - missing image extension, torch/library mismatch: not available
        return f"{library} {version} cannot decode a test JPEG here: {_first_line(exc)}"
    if tuple(decoded.shape) != (3, _PROBE_SIZE[1], _PROBE_SIZE[0]):
        return f"{library} {version} decoded a test JPEG to shape {tuple(decoded.shape)}"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def best_library() -> str | None:
    """The first of :data:`LIBRARIES` that decodes here, or None."""
    return next((lib for lib in LIBRARIES if unavailable(lib) is None), None)


def describe(library: str) -> str:
    """``"torchcodec 0.17.0"`` for the log and the server's ``/info``."""
    return f"{library} {library_version(library)}"


@functools.cache
def orients(library: str, device: str) -> bool:
    """Whether ``library`` applies EXIF orientation itself when decoding on ``device`` (probed once)."""
    decoded = decode_jpegs([probe_jpeg(6)], torch.device(device), library)[0]
    return tuple(decoded.shape[-2:]) == (_PROBE_SIZE[0], _PROBE_SIZE[1])


def orient(x: torch.Tensor, orientation: int) -> torch.Tensor:
    """``x`` (..., H, W) turned upright as ``PIL.ImageOps.exif_transpose`` turns an image with that EXIF orientation
    (values outside 2-8 leave it as stored)."""
    if orientation == 2:
        return x.flip(-1)
    if orientation == 3:
        return x.flip(-1, -2)
    if orientation == 4:
        return x.flip(-2)
    if orientation == 5:
        return x.transpose(-1, -2)
    if orientation == 6:
        return x.rot90(-1, (-2, -1))
    if orientation == 7:
        return x.transpose(-1, -2).flip(-1, -2)
    if orientation == 8:
        return x.rot90(1, (-2, -1))
    return x


def decode_upright(
    datas: Sequence[bytes], orientations: Sequence[int], device: torch.device, library: str
) -> list[torch.Tensor]:
    """:func:`decode_jpegs`, each image turned upright by its EXIF ``orientations`` (read from its header by
    :func:`catdog.data.decode.jpeg_info`) exactly once: by the library where it does so, else here."""
    decoded = decode_jpegs(datas, device, library)
    if orients(library, str(device)):
        return list(decoded)
    return [orient(x, o) for x, o in zip(decoded, orientations)]
