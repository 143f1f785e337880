"""catdog/data/images.py, property tests: damaged files of every supported format either decode to an RGB image or
are refused with a BadImageError naming the file, and valid images of every mode decode to RGB at their own size."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from catdog.data import images
from catdog.data.images import check_image, find_bad_images, load_image
from catdog.errors import BadImageError

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),  # PIL warns about some damaged chunks before failing on them
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
]


FUZZ = settings(
    max_examples=250,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _noise(size=(16, 12), seed=0) -> Image.Image:
    w, h = size
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _encode(img: Image.Image, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def _bases() -> dict[str, bytes]:
    img = _noise()
    exif = img.getexif()
    exif[0x0112] = 6
    rgba = img.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(img.size))
    deep = Image.fromarray(np.random.default_rng(1).integers(0, 65536, (12, 16), dtype=np.uint16))
    return {
        "jpeg": _encode(img, "JPEG", quality=90),
        "jpeg_progressive_exif6": _encode(img, "JPEG", progressive=True, exif=exif.tobytes()),
        "jpeg_cmyk": _encode(img.convert("CMYK"), "JPEG"),
        "png": _encode(img, "PNG"),
        "png_palette_transparent": _encode(img.convert("P"), "PNG", transparency=0),
        "png_rgba": _encode(rgba, "PNG"),
        "png_16bit_grey": _encode(deep, "PNG"),
        "gif": _encode(img.convert("P"), "GIF"),
        "gif_animated": _encode(img, "GIF", save_all=True, append_images=[_noise(seed=2)], duration=50),
        "webp_lossy": _encode(img, "WEBP", quality=80),
        "webp_lossless": _encode(rgba, "WEBP", lossless=True),
        "bmp": _encode(img, "BMP"),
        "bmp_palette": _encode(img.convert("P"), "BMP"),
        "tiff": _encode(img, "TIFF"),
        "tiff_deflate": _encode(img, "TIFF", compression="tiff_adobe_deflate"),
        "ppm": _encode(img, "PPM"),
    }


BASES = _bases()


# Damage concentrated where decoders read lengths, sizes and offsets (the first bytes), and spread over the rest.
POSITION = st.integers(0, 96) | st.integers(0, 4096)


MUTATION = st.one_of(
    st.tuples(st.just("flip"), POSITION, st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0, 4096)),
    st.tuples(st.just("insert"), POSITION, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), POSITION, st.integers(1, 64)),
    st.tuples(
        st.just("overwrite"),
        POSITION,
        st.sampled_from([b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x80\x00", b"\x00\x01"]),
    ),
)


def mutate(data: bytes, mutations) -> bytes:
    out = bytearray(data)
    for op, pos, *arg in mutations:
        pos = pos % (len(out) + 1)
        if op == "flip" and out:
            out[min(pos, len(out) - 1)] ^= 1 << arg[0]
        elif op == "truncate":
            del out[pos:]
        elif op == "insert":
            out[pos:pos] = arg[0]
        elif op == "delete":
            del out[pos : pos + arg[0]]
        elif op == "overwrite":
            out[pos : pos + len(arg[0])] = arg[0]
    return bytes(out)


def assert_decodes_or_refuses(path, draft_size=None) -> Image.Image | None:
    """The contract of load_image: an RGB image with pixels, or a BadImageError about this very file."""
    try:
        img = load_image(path, draft_size=draft_size)
    except BadImageError as exc:
        assert exc.path == str(path)
        assert str(path) in str(exc) and exc.reason
        return None
    assert isinstance(img, Image.Image) and img.mode == "RGB"
    w, h = img.size
    assert w >= 1 and h >= 1 and w * h <= images.MAX_PIXELS
    assert np.asarray(img).shape == (h, w, 3)
    return img


def test_bases_are_valid(tmp_path):
    for name, data in BASES.items():
        path = tmp_path / f"{name}.jpg"
        path.write_bytes(data)
        img = assert_decodes_or_refuses(path)
        assert img is not None, name
        assert img.size == ((12, 16) if "exif6" in name else (16, 12)), name


@FUZZ
@given(
    name=st.sampled_from(sorted(BASES)),
    mutations=st.lists(MUTATION, min_size=1, max_size=6),
    draft_size=st.sampled_from([None, 1, 8, 64]),
)
def test_damaged_images_decode_or_raise_bad_image_error(tmp_path, name, mutations, draft_size):
    path = tmp_path / "cat.1.jpg"
    path.write_bytes(mutate(BASES[name], mutations))
    assert_decodes_or_refuses(path, draft_size)
    # the screening functions never raise: a reason, or None for a file that decodes
    full = check_image(path)
    assert full is None or (isinstance(full, str) and full)
    header = check_image(path, full=False)
    assert header is None or (isinstance(header, str) and header)
    assert find_bad_images([path], workers=1) == ([] if full is None else [(str(path), full)])


@pytest.mark.parametrize("name", sorted(BASES))
def test_every_truncation(name, tmp_path):
    """Each prefix of the first 200 bytes, then every 7th: a download that stopped anywhere."""
    data = BASES[name]
    path = tmp_path / "cut.jpg"
    cuts = sorted({*range(min(200, len(data))), *range(200, len(data), 7)})
    for cut in cuts:
        path.write_bytes(data[:cut])
        assert_decodes_or_refuses(path)
        assert_decodes_or_refuses(path, draft_size=8)


MODES = ["1", "L", "P", "PA", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "I", "I;16", "F", "LAB"]


FORMATS_FOR = {  # formats that store each mode as it is
    "1": ["PNG", "TIFF", "BMP", "GIF"],
    "L": ["PNG", "TIFF", "BMP", "GIF", "JPEG", "PPM"],
    "P": ["PNG", "TIFF", "BMP", "GIF"],
    "PA": ["TIFF"],
    "LA": ["PNG", "TIFF"],
    "RGB": ["PNG", "TIFF", "BMP", "JPEG", "WEBP", "PPM"],
    "RGBA": ["PNG", "TIFF", "WEBP"],
    "RGBX": ["TIFF"],
    "CMYK": ["TIFF", "JPEG"],
    "YCbCr": ["TIFF"],
    "I": ["TIFF", "PPM"],
    "I;16": ["PNG", "TIFF", "PPM"],
    "F": ["TIFF"],
    "LAB": ["TIFF"],
}


@st.composite
def valid_images(draw):
    mode = draw(st.sampled_from(MODES))
    fmt = draw(st.sampled_from(FORMATS_FOR[mode]))
    w, h = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    if max(w, h) > images.MAX_ASPECT_RATIO * min(w, h):
        w = h
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    if mode in ("I", "I;16"):
        top = draw(st.sampled_from([1, 255, 4095, 65535]))
        img = Image.fromarray(rng.integers(0, top + 1, (h, w), dtype=np.uint16))
        img = img.convert("I") if mode == "I" else img
    elif mode == "F":
        img = Image.fromarray(rng.random((h, w), dtype=np.float32) * draw(st.sampled_from([1.0, 255.0, 65535.0])))
    else:
        img = _noise((w, h), seed)
        img = img.convert("RGBA").convert(mode) if mode == "PA" else img.convert(mode)
    return img, fmt


@settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=valid_images())
def test_valid_images_of_every_mode_become_rgb(tmp_path, case):
    img, fmt = case
    path = tmp_path / "img.jpg"
    img.save(path, format=fmt)
    with Image.open(path) as stored:
        size = stored.size
    out = assert_decodes_or_refuses(path)
    assert out is not None, f"a valid {img.mode} {fmt} image was refused"
    assert out.size == size
