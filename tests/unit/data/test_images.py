"""catdog/data/images.py: image reading under every kind of bad or unusual input: decoded to RGB, or refused with a
BadImageError naming the file; never another exception, a hang or an unbounded allocation. Folder listings ignore
clutter."""

from __future__ import annotations

import io
import os
import struct
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

import catdog.data.images as images
from catdog.data.images import check_image, find_bad_images, is_image_file, list_image_files, load_image
from catdog.data.layouts import detect_layout, find_unlabelled, read_class_folders, read_flat_folder, read_labelled
from catdog.data.transforms import eval_transform
from catdog.errors import BadImageError, DatasetError
from tests.conftest import make_flat, make_image

RED, BLUE = (220, 20, 20), (20, 20, 220)


# ----- builders of bad and unusual files --------------------------------------------------------------------------
def _encoded(fmt: str, size=(24, 16), mode: str = "RGB", **save) -> bytes:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(width: int, height: int) -> bytes:
    """A well-formed PNG header that claims ``width`` x ``height`` RGB pixels, followed by a few bytes of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x80" * 30)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) is patched to claim ``width`` x ``height`` pixels."""
    data = bytearray(_encoded("JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


BAD_FILES = {
    "zero_bytes": lambda: b"",
    "truncated_jpeg": lambda: _encoded("JPEG", (64, 48))[:300],
    "truncated_png": lambda: _encoded("PNG", (64, 48))[:200],
    "truncated_gif": lambda: _encoded("GIF", (64, 48))[:100],
    "truncated_webp": lambda: _encoded("WEBP", (64, 48))[:60],
    "jpeg_header_only": lambda: _encoded("JPEG")[:20],
    "html_page": lambda: b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>gone</body></html>\n",
    "xml_text": lambda: b'<?xml version="1.0"?><Error><Code>AccessDenied</Code></Error>',
    "plain_text": lambda: b"this is not a picture of a cat\n" * 20,
    "random_bytes": lambda: np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    "eps_postscript": lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
    "png_bomb_header": lambda: png_claiming(100_000, 100_000),
    "png_over_max_pixels": lambda: png_claiming(9_000, 8_000),
    "jpeg_bomb_header": lambda: jpeg_claiming(65_000, 65_000),
    "png_zero_width": lambda: png_claiming(0, 10),
    "png_thin_strip": lambda: png_claiming(100_000, 1),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_file_is_reported_by_path(kind, tmp_path):
    path = write(tmp_path / f"cat.{kind}.jpg", BAD_FILES[kind]())
    with pytest.raises(BadImageError) as info:
        load_image(path)
    assert info.value.path == str(path)
    assert str(path) in str(info.value)
    assert info.value.reason
    assert check_image(path) == info.value.reason
    assert find_bad_images([path]) == [(str(path), info.value.reason)]
    with pytest.raises(BadImageError):
        load_image(path, draft_size=32)


def test_reasons_say_what_is_wrong(tmp_path):
    def reason(kind):
        return check_image(write(tmp_path / f"{kind}.jpg", BAD_FILES[kind]()))

    assert reason("zero_bytes") == "empty file (0 bytes)"
    assert "HTML" in reason("html_page")
    assert "text" in reason("plain_text")
    assert "truncated" in reason("truncated_jpeg")
    assert "limit" in reason("png_over_max_pixels")
    assert "bomb" in reason("png_bomb_header") or "limit" in reason("png_bomb_header")
    assert "aspect ratio" in reason("png_thin_strip")


def test_header_check_catches_what_the_header_shows(tmp_path):
    kinds = ("zero_bytes", "html_page", "png_bomb_header", "png_over_max_pixels", "truncated_png", "png_zero_width")
    for kind in kinds:
        path = write(tmp_path / f"{kind}.png", BAD_FILES[kind]())
        assert check_image(path, full=False), kind
    good = make_image(tmp_path / "good.png")
    assert check_image(good, full=False) is None


# ----- formats, modes and orientation that must decode ------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["PNG", "GIF", "WEBP", "BMP", "TIFF", "PPM", "JPEG"])
@pytest.mark.parametrize("suffix", [".jpg", ".png", ".gif"])
def test_content_decodes_whatever_the_extension(fmt, suffix, tmp_path):
    path = tmp_path / f"cat.1{suffix}"
    save = {"lossless": True} if fmt == "WEBP" else {}
    Image.new("RGB", (30, 20), RED).save(path, format=fmt, **save)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (30, 20)
    assert np.abs(np.asarray(img, dtype=int) - RED).max() <= 12


def test_sixteen_bit_grey_png_is_scaled_not_saturated(tmp_path):
    ramp = np.linspace(0, 65535, 256).round().astype(np.uint16)
    arr = np.tile(ramp, (8, 1))
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")  # really a 16-bit image on disk
    out = np.asarray(load_image(path))
    assert out.shape == (8, 256, 3) and out.dtype == np.uint8
    row = out[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255
    assert np.all(np.diff(row) >= 0)  # monotonic: a ramp stays a ramp
    assert 120 <= row[128] <= 135  # mid-grey stays mid-grey
    assert (row == 255).mean() < 0.02  # not saturated (plain PIL conversion clips nearly everything to 255)
    assert np.all(out[..., 0] == out[..., 1]) and np.all(out[..., 1] == out[..., 2])


def test_sixteen_bit_png_holding_8_bit_values_keeps_them(tmp_path):
    arr = np.tile(np.arange(0, 256, dtype=np.uint16), (4, 1))
    path = tmp_path / "deep8.png"
    Image.fromarray(arr).save(path)
    out = np.asarray(load_image(path))[..., 0]
    assert out[0, 0] == 0 and out[0, 255] == 255 and out[0, 100] == 100


@pytest.mark.parametrize("mode", ["I", "F", "1", "L", "CMYK", "YCbCr", "LA", "RGBA", "P"])
def test_every_mode_becomes_rgb(mode, tmp_path):
    img = Image.new("RGB", (12, 10), RED).convert(mode)
    path = tmp_path / f"{mode}.tiff"
    img.save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (12, 10)


def test_float_image_in_unit_range_is_scaled(tmp_path):
    arr = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (4, 1))
    arr[0, 0] = np.nan
    path = tmp_path / "float.tiff"
    Image.fromarray(arr, "F").save(path)
    out = np.asarray(load_image(path))[..., 0]
    assert out[1, 0] == 0 and out[1, -1] == 255 and out[0, 0] == 0


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("RGB", (32, 24), RED).convert("CMYK").save(path, "JPEG", quality=95)
    with Image.open(path) as raw:
        assert raw.mode == "CMYK"
    out = np.asarray(load_image(path), dtype=int)
    assert out.shape == (24, 32, 3)
    assert np.abs(out - RED).max() < 30


def test_palette_without_transparency(tmp_path):
    path = tmp_path / "p.png"
    Image.new("RGB", (16, 16), BLUE).convert("P", palette=Image.Palette.ADAPTIVE).save(path)
    with Image.open(path) as raw:
        assert raw.mode == "P" and "transparency" not in raw.info
    assert np.abs(np.asarray(load_image(path), dtype=int) - BLUE).max() <= 4


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency_is_composited_on_white(fmt, tmp_path):
    img = Image.new("P", (8, 8), 1)
    img.putpalette([0, 0, 0] + list(RED) + [0, 0, 0] * 254)
    img.paste(0, (0, 0, 4, 8))  # left half: index 0, the transparent one
    path = tmp_path / f"pt.{fmt.lower()}"
    img.save(path, format=fmt, transparency=0)
    with Image.open(path) as raw:
        assert raw.mode == "P" and raw.info.get("transparency") == 0
    out = np.asarray(load_image(path), dtype=int)
    assert (out[:, :4] == 255).all()
    assert (out[:, 4:] == RED).all()


def test_la_and_rgba_are_composited_on_white(tmp_path):
    la = Image.new("LA", (8, 4), (50, 255))
    la.paste((50, 0), (0, 0, 4, 4))
    la.save(tmp_path / "la.png")
    out = np.asarray(load_image(tmp_path / "la.png"), dtype=int)
    assert (out[:, :4] == 255).all() and (out[:, 4:] == 50).all()

    rgba = Image.new("RGBA", (9, 3), (*RED, 255))
    rgba.paste((*BLUE, 0), (0, 0, 3, 3))
    rgba.paste((0, 0, 0, 128), (3, 0, 6, 3))
    rgba.save(tmp_path / "rgba.png")
    out = np.asarray(load_image(tmp_path / "rgba.png"), dtype=int)
    assert (out[:, :3] == 255).all()  # fully transparent -> white, whatever colour it hides
    assert (np.abs(out[:, 3:6] - 127) <= 1).all()  # half transparent black over white -> mid grey
    assert (out[:, 6:] == RED).all()


def test_grey_and_rgb_png_with_transparent_colour(tmp_path):
    grey = Image.new("L", (4, 2), 0)
    grey.paste(200, (2, 0, 4, 2))
    grey.save(tmp_path / "l.png", transparency=0)
    out = np.asarray(load_image(tmp_path / "l.png"), dtype=int)
    assert (out[:, :2] == 255).all() and (out[:, 2:] == 200).all()

    rgb = Image.new("RGB", (4, 2), BLUE)
    rgb.paste(RED, (2, 0, 4, 2))
    rgb.save(tmp_path / "rgb.png", transparency=BLUE)
    out = np.asarray(load_image(tmp_path / "rgb.png"), dtype=int)
    assert (out[:, :2] == 255).all() and (out[:, 2:] == RED).all()


def _left_red_right_blue(size=(40, 20)) -> Image.Image:
    img = Image.new("RGB", size, BLUE)
    img.paste(RED, (0, 0, size[0] // 2, size[1]))
    return img


@pytest.mark.parametrize("draft_size", [None, 8])
def test_exif_orientation_6_rotates(draft_size, tmp_path):
    img = _left_red_right_blue((64, 32))
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    img.save(path, "JPEG", exif=exif.tobytes(), quality=95)
    out = load_image(path, draft_size=draft_size)
    w, h = out.size
    assert h == 2 * w and (w == 32 or draft_size)  # sides swapped
    arr = np.asarray(out, dtype=int)
    assert np.abs(arr[h // 8, w // 2] - RED).max() < 40  # the stored left half is now on top
    assert np.abs(arr[-h // 8, w // 2] - BLUE).max() < 40


def test_corrupt_exif_still_decodes(tmp_path, monkeypatch):
    path = make_image(tmp_path / "cat.jpg")

    def broken(*_a, **_k):
        raise struct.error("unpack requires a buffer of 12 bytes")

    monkeypatch.setattr(ImageOps, "exif_transpose", broken)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (40, 36)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "WEBP"])
def test_one_pixel_image(fmt, tmp_path):
    path = tmp_path / f"one.{fmt.lower()}"
    Image.new("RGB", (1, 1), RED).save(path, format=fmt)
    out = load_image(path, draft_size=256)
    assert out.size == (1, 1) and out.mode == "RGB"
    x = eval_transform(32)(out)  # and the rest of the pipeline copes with it
    assert tuple(x.shape) == (3, 32, 32)


def test_draft_size_downscales_large_jpegs_only_to_a_power_of_two(tmp_path):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (800, 600), RED).save(path)
    assert load_image(path).size == (800, 600)
    assert load_image(path, draft_size=100).size == (200, 150)
    assert load_image(path, draft_size=0).size == (800, 600)
    assert load_image(path, draft_size=-5).size == (800, 600)


# ----- size limits: refused from the header, before any pixel is allocated ----------------------------------------
def _forbid_pixel_decoding(monkeypatch):
    def no_load(self):
        raise AssertionError(f"pixels of a {self.size} image were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_load)


def test_over_limit_image_is_refused_without_decoding(tmp_path, monkeypatch):
    path = make_image(tmp_path / "cat.1.png", size=(100, 60))
    monkeypatch.setattr(images, "MAX_PIXELS", 5_000)
    _forbid_pixel_decoding(monkeypatch)
    with pytest.raises(BadImageError, match=r"100x60 pixels, more than the limit of 5,000") as info:
        load_image(path)
    assert info.value.path == str(path)
    assert "limit" in check_image(path) and "limit" in check_image(path, full=False)


def test_max_pixels_argument(tmp_path):
    path = make_image(tmp_path / "cat.1.png", size=(100, 60))
    with pytest.raises(BadImageError, match="limit of 5,999"):
        load_image(path, max_pixels=5_999)
    assert load_image(path, max_pixels=6_000).size == (100, 60)


@pytest.mark.parametrize("kind", ["png_bomb_header", "png_over_max_pixels", "jpeg_bomb_header"])
def test_huge_headers_are_refused_without_decoding(kind, tmp_path, monkeypatch):
    path = write(tmp_path / "bomb.jpg", BAD_FILES[kind]())
    _forbid_pixel_decoding(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(BadImageError) as info:
            load_image(path)
    assert "limit" in info.value.reason or "bomb" in info.value.reason


def test_aspect_ratio_limit(tmp_path):
    ok = write(tmp_path / "ok.png", png_claiming(images.MAX_ASPECT_RATIO, 1))
    with pytest.raises(BadImageError, match="cannot decode"):  # passes the size checks, then fails on its data
        load_image(ok)
    Image.new("RGB", (images.MAX_ASPECT_RATIO, 1)).save(tmp_path / "strip.png")
    assert load_image(tmp_path / "strip.png").size == (images.MAX_ASPECT_RATIO, 1)
    Image.new("RGB", (1, images.MAX_ASPECT_RATIO + 1)).save(tmp_path / "thin.png")
    with pytest.raises(BadImageError, match="aspect ratio"):
        load_image(tmp_path / "thin.png")


# ----- any exception a decoder plugin raises is converted ---------------------------------------------------------
@pytest.mark.parametrize(
    "exc",
    [
        struct.error("unpack requires a buffer of 4 bytes"),
        RuntimeError("plugin failed"),
        KeyError("missing tag"),
        AttributeError("no attribute"),
        AssertionError("internal check"),
        OverflowError("too large"),
        RecursionError("maximum recursion depth exceeded"),
        NotImplementedError("unsupported compression"),
        ZeroDivisionError("division by zero"),
        IndexError("list index out of range"),
        Image.UnidentifiedImageError("cannot identify"),
        MemoryError(),
        Image.DecompressionBombError("too many pixels"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_plugin_exceptions_become_bad_image_error(exc, tmp_path, monkeypatch):
    path = make_image(tmp_path / "cat.1.png")

    def failing_load(self):
        raise exc

    monkeypatch.setattr(ImageFile.ImageFile, "load", failing_load)
    with pytest.raises(BadImageError) as info:
        load_image(path)
    assert info.value.path == str(path)
    assert str(path) in str(info.value)
    assert check_image(path) == info.value.reason


def test_interrupts_are_not_swallowed(tmp_path, monkeypatch):
    path = make_image(tmp_path / "cat.1.png")

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(ImageFile.ImageFile, "load", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_image(path)


def test_exceptions_while_opening_become_bad_image_error(tmp_path, monkeypatch):
    path = make_image(tmp_path / "cat.1.png")

    def failing_open(*_a, **_k):
        raise struct.error("bad header")

    monkeypatch.setattr(Image, "open", failing_open)
    with pytest.raises(BadImageError, match="bad header"):
        load_image(path)
    assert "bad header" in check_image(path, full=False)


# ----- the file system: permissions, links, special files, names --------------------------------------------------
def test_unreadable_file(tmp_path):
    path = make_image(tmp_path / "cat.1.jpg")
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running with privileges that read any file (root)")
        with pytest.raises(BadImageError, match="permission denied") as info:
            load_image(path)
        assert info.value.path == str(path)
    finally:
        path.chmod(0o644)


def test_permission_denied_is_reported(tmp_path, monkeypatch):
    """The same case where the tests run as root: the open call itself is made to fail as it would."""
    path = make_image(tmp_path / "cat.1.jpg")
    real_open = os.open

    def denied(p, *args, **kwargs):
        if os.fspath(p) == str(path):
            raise PermissionError(13, "Permission denied", str(p))
        return real_open(p, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(BadImageError, match="permission denied") as info:
        load_image(path)
    assert info.value.path == str(path)
    assert find_bad_images([path]) == [(str(path), info.value.reason)]


def test_dangling_symlink_is_listed_and_reported(tmp_path):
    make_image(tmp_path / "cat.1.jpg")
    link = tmp_path / "cat.2.jpg"
    link.symlink_to(tmp_path / "gone.jpg")
    assert link in list_image_files(tmp_path)  # reported as unreadable, not silently left out
    with pytest.raises(BadImageError, match="dangling symbolic link") as info:
        load_image(link)
    assert info.value.path == str(link)


def test_symlink_to_an_image_decodes(tmp_path):
    target = make_image(tmp_path / "real" / "x.png")
    link = tmp_path / "cat.1.png"
    link.symlink_to(target)
    assert load_image(link).size == (40, 36)


def test_symlink_loop(tmp_path):
    loop = tmp_path / "cat.1.jpg"
    loop.symlink_to(loop)
    with pytest.raises(BadImageError) as info:
        load_image(loop)
    assert info.value.path == str(loop)


def test_removed_file(tmp_path):
    with pytest.raises(BadImageError, match="file not found"):
        load_image(tmp_path / "never.jpg")


def test_folder_with_an_image_name(tmp_path):
    (tmp_path / "cat.1.jpg").mkdir()
    assert list_image_files(tmp_path) == []
    with pytest.raises(BadImageError, match="not a regular file but a folder"):
        load_image(tmp_path / "cat.1.jpg")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX only")
def test_named_pipe_does_not_hang(tmp_path):
    fifo = tmp_path / "cat.1.jpg"
    os.mkfifo(fifo)
    result = {}

    def attempt():
        result["reason"] = check_image(fifo)
        result["header"] = check_image(fifo, full=False)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=10)
    if worker.is_alive():  # release the blocked reader before failing
        with open(fifo, "wb"):
            pass
        pytest.fail("reading a named pipe blocked")
    assert "special file" in result["reason"] and "special file" in result["header"]


def _bytes_name(folder: Path, name: bytes) -> Path:
    """Create an entry with a raw (non-UTF-8) name; it appears in Python as a str with surrogate escapes."""
    raw = os.path.join(os.fsencode(folder), name)
    try:
        with open(raw, "wb"):
            pass
    except (OSError, UnicodeError):
        pytest.skip("the file system refuses names that are not UTF-8")
    return Path(os.fsdecode(raw))


def test_non_utf8_file_names(tmp_path):
    good = _bytes_name(tmp_path, b"cat.caf\xe9.jpg")  # Latin-1 name
    make_image(good)
    bad = _bytes_name(tmp_path, b"dog.\xff\xfe.jpg")
    bad.write_bytes(b"not an image")
    listed = list_image_files(tmp_path)
    assert listed == sorted([good, bad])
    assert load_image(good).size == (40, 36)
    assert load_image(os.fsencode(good)).size == (40, 36)  # bytes paths work too
    with pytest.raises(BadImageError) as info:
        load_image(os.fsencode(bad))
    assert info.value.path == str(bad)  # the same str the listing gave, so it can be matched
    assert find_bad_images([bad, good]) == [(str(bad), info.value.reason)]
    assert is_image_file(os.fsencode(good))
    flat = read_flat_folder(os.fsencode(tmp_path))
    assert flat.classes == ["cat", "dog"] and flat.paths == [str(good), str(bad)]


def test_names_with_spaces(tmp_path):
    a = make_image(tmp_path / "train" / "cat.my cat photo.jpg", 0)
    b = make_image(tmp_path / "train" / "dog. 2 .jpg", 1)
    flat = read_flat_folder(tmp_path / "train")
    assert flat.paths == [str(a), str(b)] and flat.labels == [0, 1]
    c = make_image(tmp_path / "folders" / "big cats" / "lion 1.png", 0)
    d = make_image(tmp_path / "folders" / "small dogs" / "pug 1.png", 1)
    folders = read_class_folders(tmp_path / "folders")
    assert folders.classes == ["big cats", "small dogs"] and folders.paths == [str(c), str(d)]
    assert all(load_image(p).size == (40, 36) for p in (a, b, c, d))


# ----- discovery ignores hidden and non-image files ---------------------------------------------------------------
def add_clutter(folder: Path) -> list[Path]:
    """What copying a folder through macOS, Windows or a notebook leaves behind."""
    clutter = [
        write(folder / ".DS_Store", b"\x00\x00\x00\x01Bud1" + b"\x00" * 100),
        write(folder / "._cat.1.jpg", b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + b"\x00" * 64),
        write(folder / ".hidden.png", b"junk"),
        write(folder / "notes.txt", b"cats and dogs\n"),
        write(folder / "Thumbs.db", b"\xd0\xcf\x11\xe0" + b"\x00" * 60),
        write(folder / "labels.csv", b"id,label\n1,cat\n"),
        write(folder / "cat.1.jpg.part", b"\xff\xd8\xff"),
        write(folder / "__MACOSX" / "._cat.2.jpg", b"junk"),
        write(folder / ".ipynb_checkpoints" / "cat.3-checkpoint.jpg", b"junk"),
    ]
    return clutter


def test_hidden_and_non_image_files_are_ignored(tmp_path):
    root = make_flat(tmp_path / "data", per_class=3, test=3)
    clutter = add_clutter(root / "train") + add_clutter(root / "test") + add_clutter(root)
    layout = detect_layout(root)
    assert layout.layout == "flat" and layout.train.classes == ["cat", "dog"]
    assert len(layout.train) == 6
    assert not {str(c) for c in clutter} & set(layout.train.paths)
    assert find_bad_images(layout.train.paths) == []  # not reported as bad either
    tests = find_unlabelled(root / "test")
    assert [p.name for p in tests] == ["1.jpg", "2.jpg", "3.jpg"]
    assert not any(is_image_file(c) for c in clutter if c.parent.name not in ("__MACOSX", ".ipynb_checkpoints"))


def test_hidden_files_in_class_folders_are_ignored(tmp_path):
    for label, name in enumerate(("cat", "dog")):
        for i in range(2):
            make_image(tmp_path / "train" / name / f"{i}.jpg", label)
        add_clutter(tmp_path / "train" / name)
    add_clutter(tmp_path / "train")  # __MACOSX/ and .ipynb_checkpoints/ next to the class folders
    images_ = read_labelled(tmp_path / "train")
    assert images_.layout == "class_folders" and images_.classes == ["cat", "dog"]
    assert [Path(p).name for p in images_.paths] == ["0.jpg", "1.jpg", "0.jpg", "1.jpg"]
    assert find_bad_images(images_.paths) == []


def test_only_clutter_is_no_images(tmp_path):
    add_clutter(tmp_path / "train")
    (tmp_path / "train" / "__MACOSX").rename(tmp_path / "elsewhere")
    (tmp_path / "train" / ".ipynb_checkpoints").rename(tmp_path / "elsewhere2")
    with pytest.raises(DatasetError, match="no images"):
        detect_layout(tmp_path)


def test_listing_a_missing_or_non_folder(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        list_image_files(tmp_path / "missing")
    with pytest.raises(DatasetError, match="not a folder"):
        list_image_files(make_image(tmp_path / "x.png"))


def test_listing_an_unreadable_folder(tmp_path, monkeypatch):
    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(os, "scandir", denied)
    with pytest.raises(DatasetError, match="permission denied"):
        list_image_files(tmp_path)


def test_find_bad_images_in_threads_is_exact(tmp_path):
    paths, expected = [], []
    kinds = sorted(BAD_FILES)
    for i in range(40):
        if i % 3 == 0:
            p = write(tmp_path / f"cat.{i}.jpg", BAD_FILES[kinds[i % len(kinds)]]())
            expected.append(str(p))
        else:
            p = make_image(tmp_path / f"dog.{i}.jpg", seed=i)
        paths.append(p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        bad = find_bad_images(paths, workers=4)
    assert [p for p, _ in bad] == expected
    assert all(r for _, r in bad)


# ----- bad training files (for tests/unit/data/test_datamodule.py and tests/e2e/test_images.py) -----------------------
def add_bad_training_files(train_dir: Path) -> list[str]:
    """Five unreadable files with valid Kaggle names (the data set's own kinds of fault, and a few more)."""
    bad = [
        write(train_dir / "cat.100.jpg", b""),
        write(train_dir / "dog.100.jpg", _encoded("JPEG", (64, 48))[:300]),
        write(train_dir / "cat.101.jpg", BAD_FILES["html_page"]()),
        write(train_dir / "dog.102.jpg", png_claiming(100_000, 100_000)),
    ]
    link = train_dir / "cat.103.jpg"
    link.symlink_to(train_dir / "deleted.jpg")
    return sorted(str(p) for p in [*bad, link])


def test_exif_rotated_image_is_upright(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").size == (20, 40)


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bytes_in_memory_are_refused_for_the_same_reason_as_the_file(kind, tmp_path):
    """load_image_bytes (uploads) gives the reason load_image gives for the same bytes on disk, naming the upload."""
    data = BAD_FILES[kind]()
    with pytest.raises(BadImageError) as from_file:
        load_image(write(tmp_path / f"{kind}.jpg", data))
    with pytest.raises(BadImageError) as from_bytes:
        images.load_image_bytes(data, "the upload")
    assert from_bytes.value.reason == from_file.value.reason
    assert from_bytes.value.path == "the upload"


@pytest.mark.parametrize("draft_size", [None, 40])
def test_bytes_in_memory_decode_to_the_files_pixels(draft_size, tmp_path):
    path = make_image(tmp_path / "cat.jpg", size=(300, 200), seed=3)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(path).save(path, exif=exif.tobytes())
    expected = np.asarray(load_image(path, draft_size=draft_size))
    got = np.asarray(images.load_image_bytes(path.read_bytes(), "the upload", draft_size=draft_size))
    assert got.shape == expected.shape
    assert got.shape[:2] == (300, 200) or draft_size  # rotated by its EXIF orientation
    assert np.array_equal(got, expected)
