"""catdog/data/decode.py: the fast decoding path gives the pixels of the PIL path within TOLERANCE, leaves every file
the fast decoders do not take or fail on to load_image, raises a BadImageError naming a bad file and keeps the order
of the paths."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import catdog.data.decode as decode
from catdog.data.decode import (
    TOLERANCE,
    DecodedBatches,
    EvalGeometry,
    decode_batch,
    decode_bytes,
    decode_cpu,
    fast_loader,
    jpeg_info,
    nearest_indices,
    read_file,
)
from catdog.data.images import load_image
from catdog.data.jpeg_libraries import LIBRARIES, decode_upright, orient, unavailable
from catdog.data.transforms import eval_transform
from catdog.errors import BadImageError
from tests.unit.data.test_images_fuzz import BASES, FUZZ, MUTATION, mutate

CPU = torch.device("cpu")
# The JPEG libraries of the fast path, each test skipped where one cannot decode (saying why).
LIBRARY_PARAMS = [
    pytest.param(lib, marks=pytest.mark.skipif(unavailable(lib) is not None, reason=str(unavailable(lib))))
    for lib in LIBRARIES
]


# An image at least twice the resize size of a 32 px model (37 px): the CPU path drafts it, the batch path does not.
LARGE = (300, 200)


# The batch path decodes every pixel where the PIL path decodes a JPEG DCT-scaled by 1/2-1/8 (its draft mode).
FULL_VS_DRAFT = (12, 1.5)


def _photo(size, seed: int = 0) -> Image.Image:
    """A smooth gradient with some noise: resizes like a photo, unlike flat colour or pure noise."""
    w, h = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(40, 215, size=3)
    img = np.stack([base[0] * xx / w, base[1] * yy / h, base[2] * (1 - xx * yy / (w * h))], axis=-1) + 30
    img += rng.normal(0, 6, size=img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def _save(img: Image.Image, path, fmt: str = "JPEG", **save):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt, **save)
    return path


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


@pytest.fixture
def mixed(tmp_path):
    """JPEGs of several sizes and aspect ratios (one large enough to draft), greyscale, progressive, EXIF-rotated,
    CMYK, a PNG and a PNG named .jpg."""
    d = tmp_path / "mixed"
    return [
        _save(_photo((40, 36), 1), d / "small.jpg", quality=90),
        _save(_photo((200, 200), 2), d / "square.jpg", quality=90),
        _save(_photo((120, 50), 3), d / "wide.jpg", quality=85),
        _save(_photo((50, 130), 4), d / "tall.jpg", quality=85),
        _save(_photo(LARGE, 5), d / "large.jpg", quality=90),
        _save(_photo((64, 48), 6).convert("L"), d / "grey.jpg", quality=90),
        _save(_photo((64, 48), 7), d / "progressive.jpg", quality=90, progressive=True),
        _save(_photo((60, 40), 8), d / "rotated6.jpg", quality=90, exif=_exif(6)),
        _save(_photo((60, 40), 9), d / "rotated3.jpg", quality=90, exif=_exif(3)),
        _save(_photo((64, 48), 10).convert("CMYK"), d / "cmyk.jpg", quality=90),
        _save(_photo((64, 48), 11), d / "photo.png", "PNG"),
        _save(_photo((48, 64), 12), d / "png_named.jpg", "PNG"),
    ]


def _pil_path(path, geometry: EvalGeometry) -> torch.Tensor:
    """Today's PIL path, as ImageDataset runs it for prediction."""
    transform = eval_transform(geometry.image_size, geometry.crop_pct, geometry.square, geometry.interpolation)
    return transform(load_image(path, draft_size=geometry.resize))


def _drafted(path, geometry: EvalGeometry) -> bool:
    """Whether the PIL path decodes ``path`` in draft mode (a JPEG at least twice the resize size)."""
    info = jpeg_info(path.read_bytes())
    return info is not None and min(info.width, info.height) >= 2 * geometry.resize


def _difference(a: torch.Tensor, b: torch.Tensor) -> tuple[int, float]:
    assert a.shape == b.shape and a.dtype == b.dtype == torch.uint8
    diff = (a.int() - b.int()).abs()
    return int(diff.max()), float(diff.float().mean())


def _within(a, b, tolerance=TOLERANCE, what=""):
    worst, mean = _difference(a, b)
    assert worst <= tolerance[0] and mean <= tolerance[1], f"{what}: max {worst}, mean {mean:.4f} > {tolerance}"


GEOMETRIES = [
    EvalGeometry(32, 0.875, False, "bilinear"),
    EvalGeometry(32, 0.875, True, "bilinear"),
    EvalGeometry(48, 0.875, False, "bicubic"),
    EvalGeometry(48, 0.75, True, "bicubic"),
    EvalGeometry(32, 0.875, False, "nearest"),
]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: f"{g.image_size}-{g.interpolation}-sq{int(g.square)}")
def test_cpu_path_matches_the_pil_path(mixed, geometry):
    for path in mixed:
        fast, reference = decode_cpu(path, geometry), _pil_path(path, geometry)
        _within(fast, reference, what=path.name)
        if geometry.interpolation == "nearest":  # PIL's own source pixels: exact
            assert torch.equal(fast, reference), path.name


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: f"{g.image_size}-{g.interpolation}-sq{int(g.square)}")
def test_batch_path_on_cpu_tensors_matches_the_pil_path(mixed, geometry):
    """The path nvJPEG takes on CUDA, here with torchvision's CPU decoder: batched, then resized by size groups."""
    out = decode_batch([str(p) for p in mixed], [read_file(str(p)) for p in mixed], geometry, CPU)
    for path, fast in zip(mixed, out):
        reference = _pil_path(path, geometry)
        if _drafted(path, geometry):  # decoded in full, not DCT-scaled by the draft: another (finer) downscale
            nearest = geometry.interpolation == "nearest"  # one source pixel where the draft averaged a block
            _within(fast, reference, (255, 4.0) if nearest else FULL_VS_DRAFT, path.name)
        else:
            _within(fast, reference, what=path.name)


@pytest.mark.parametrize("library", LIBRARY_PARAMS)
def test_the_cpu_decoders_give_pils_pixels(mixed, library):
    """Before any resize: libjpeg-turbo through each library and PIL decode JPEGs to the same RGB pixels, upright."""
    for path in mixed:
        info = jpeg_info(path.read_bytes())
        if info is None:
            continue
        x = decode_upright([path.read_bytes()], [info.orientation], CPU, library)[0]
        assert torch.equal(x, decode.pil_to_tensor(load_image(path))), path.name


@pytest.mark.parametrize("geometry", GEOMETRIES[:3], ids=lambda g: f"{g.image_size}-{g.interpolation}")
@pytest.mark.parametrize("library", LIBRARY_PARAMS)
def test_each_library_matches_the_pil_path(mixed, geometry, library):
    """Whichever library decodes, the crops are PIL's within TOLERANCE, through one image and through a batch."""
    out = decode_batch([str(p) for p in mixed], [read_file(str(p)) for p in mixed], geometry, CPU, library=library)
    for path, batched in zip(mixed, out):
        reference = _pil_path(path, geometry)
        _within(decode_cpu(path, geometry, library), reference, what=path.name)
        if not _drafted(path, geometry):
            _within(batched, reference, what=path.name)


def test_what_the_fast_decoders_take(mixed, tmp_path):
    taken = {p.name for p in mixed if jpeg_info(p.read_bytes()) is not None}
    assert taken == {
        "small.jpg", "square.jpg", "wide.jpg", "tall.jpg", "large.jpg", "grey.jpg", "progressive.jpg",
        "rotated6.jpg", "rotated3.jpg",
    }  # fmt: skip
    rotated = jpeg_info((tmp_path / "mixed" / "rotated6.jpg").read_bytes())
    assert (rotated.width, rotated.height, rotated.orientation) == (60, 40, 6)
    data = (tmp_path / "mixed" / "small.jpg").read_bytes()
    assert jpeg_info(data[: len(data) // 2]) is None  # truncated: no end-of-image marker
    assert jpeg_info(data + b"\x00" * 8) is not None  # zero padding after the end is fine
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    turned = _save(_photo((40, 30)), tmp_path / "xmp.jpg", xmp=xmp)
    assert jpeg_info(turned.read_bytes()) is None  # PIL reads an orientation there too: left to it
    assert load_image(turned).size == (30, 40)
    geometry = EvalGeometry(32, 0.875, True)
    _within(decode_cpu(turned, geometry), _pil_path(turned, geometry))
    assert jpeg_info(b"") is None and jpeg_info(b"\xff\xd8\xff\xd9") is None


@pytest.mark.parametrize("library", LIBRARY_PARAMS)
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_as_pil_applies_it(tmp_path, orientation, library):
    """Exactly once whatever the library: one that turns the image itself (TorchCodec) is not turned again."""
    path = _save(_photo((60, 40), orientation), tmp_path / f"o{orientation}.jpg", quality=95, exif=_exif(orientation))
    assert jpeg_info(path.read_bytes()).orientation == orientation
    x = decode.pil_to_tensor(Image.open(path).convert("RGB"))
    upright = decode.pil_to_tensor(load_image(path))
    assert torch.equal(orient(x, orientation), upright)
    geometry = EvalGeometry(32, 0.875, True)  # the TTA square keeps the whole shorter side: any turn shows
    reference = _pil_path(path, geometry)
    _within(decode_cpu(path, geometry, library), reference)
    _within(decode_batch([str(path)], [path.read_bytes()], geometry, CPU, library=library)[0], reference)
    assert torch.equal(decode_upright([path.read_bytes()], [orientation], CPU, library)[0], upright)


def test_nearest_picks_the_source_pixels_pil_picks():
    rng = np.random.default_rng(0)
    for length, out in [(200, 146), (37, 37), (500, 73), (7, 3), *rng.integers(2, 900, (40, 2)).tolist()]:
        row = np.arange(length, dtype=np.int32)[None, :].repeat(2, 0)
        pil = np.asarray(Image.fromarray(row, "I").resize((out, 2), Image.NEAREST))[0]
        assert nearest_indices(length, out).tolist() == pil.tolist(), (length, out)


def test_bad_files_raise_bad_image_error_naming_them(tmp_path):
    good = _save(_photo((40, 30)), tmp_path / "good.jpg")
    data = good.read_bytes()
    bad = {
        "truncated.jpg": data[: len(data) // 2],
        "empty.jpg": b"",
        "page.jpg": b"<html>not an image</html>",
        "garbage.jpg": b"\xff\xd8\xff\xe0garbage\xff\xd9",
    }
    for name, content in bad.items():
        (tmp_path / name).write_bytes(content)
    (tmp_path / "folder.jpg").mkdir()
    paths = [str(tmp_path / n) for n in (*bad, "folder.jpg", "missing.jpg")]
    if hasattr(os, "mkfifo"):  # a pipe is refused, never waited on
        os.mkfifo(tmp_path / "pipe.jpg")
        paths.append(str(tmp_path / "pipe.jpg"))
    geometry = EvalGeometry(32)
    for path in paths:
        with pytest.raises(BadImageError) as err:
            decode_cpu(path, geometry)
        assert err.value.path == path and path in str(err.value)
    out = decode_batch([str(good), *paths], [read_file(p) for p in (str(good), *paths)], geometry, CPU)
    assert isinstance(out[0], torch.Tensor)
    assert [e.path for e in out[1:]] == paths and all(isinstance(e, BadImageError) for e in out[1:])


@settings(FUZZ, max_examples=120)
@given(
    name=st.sampled_from(["jpeg", "jpeg_progressive_exif6", "jpeg_cmyk"]),
    mutations=st.lists(MUTATION, min_size=1, max_size=4),
)
def test_damaged_jpegs_decode_or_raise_bad_image_error(tmp_path, name, mutations):
    path = tmp_path / "cat.1.jpg"
    path.write_bytes(mutate(BASES[name], mutations))
    geometry = EvalGeometry(32)
    try:
        x = decode_cpu(path, geometry)
        assert x.shape == (3, 32, 32) and x.dtype == torch.uint8
    except BadImageError as exc:
        assert exc.path == str(path) and exc.reason
    (y,) = decode_batch([str(path)], [read_file(str(path))], geometry, CPU)
    assert (isinstance(y, BadImageError) and y.path == str(path)) or y.shape == (3, 32, 32)


@pytest.mark.parametrize("device", ["cpu", "cpu-batched"])
def test_order_is_kept_and_bad_images_follow_the_policy(mixed, tmp_path, device):
    """CPU: DecodedImages in a DataLoader; cpu-batched: DecodedBatches, the CUDA loader, on CPU tensors."""
    (tmp_path / "mixed" / "truncated.jpg").write_bytes(mixed[0].read_bytes()[:100])
    paths = [*mixed[:5], tmp_path / "mixed" / "truncated.jpg", *mixed[5:]]
    geometry = EvalGeometry(32)

    def loader(policy):
        if device == "cpu":
            return fast_loader(paths, geometry, 3, CPU, 0, policy)
        return DecodedBatches(paths, geometry, 3, CPU, workers=2, on_bad_image=policy)

    with pytest.warns(UserWarning, match="skipping unreadable image .*truncated.jpg"):
        batches = list(loader("skip"))
    assert [len(i) for _, _, i in batches] == [3, 3 - 1, 3, 3, 1]
    indices = torch.cat([i for _, _, i in batches]).tolist()
    assert indices == [i for i in range(len(paths)) if i != 5]
    assert set(torch.cat([y for _, y, _ in batches]).tolist()) == {-1}
    x = torch.cat([x for x, _, _ in batches])
    for row, i in zip(x, indices):
        one = str(paths[i])
        expected = (
            decode_cpu(one, geometry) if device == "cpu" else decode_batch([one], [read_file(one)], geometry, CPU)[0]
        )
        assert torch.equal(row, expected), paths[i].name
    with pytest.raises(BadImageError, match="truncated.jpg"):
        list(loader("error"))
    assert len(loader("error").dataset) == len(paths)


def test_a_refused_batch_is_retried_one_by_one_then_left_to_pil(mixed, monkeypatch):
    """nvJPEG refusing one file fails the whole batched call: the others are decoded one by one, that one by PIL."""
    real = decode.decode_upright
    refused = mixed[1].read_bytes()
    calls = []

    def picky(datas, orientations, device, library):
        calls.append(len(datas))
        if any(d == refused for d in datas):
            raise RuntimeError("nvjpeg: unsupported")
        return real(datas, orientations, device, library)

    geometry = EvalGeometry(32)
    expected = decode_batch([str(p) for p in mixed], [read_file(str(p)) for p in mixed], geometry, CPU)
    monkeypatch.setattr(decode, "decode_upright", picky)
    out = decode_batch([str(p) for p in mixed], [read_file(str(p)) for p in mixed], geometry, CPU)
    taken = sum(jpeg_info(p.read_bytes()) is not None for p in mixed)
    assert calls == [taken] + [1] * taken
    for path, a, b in zip(mixed, out, expected):
        if path != mixed[1]:
            assert torch.equal(a, b), path.name
    _within(out[1], _pil_path(mixed[1], geometry))  # through load_image, drafted as the PIL path drafts


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nvJPEG needs a CUDA GPU")
def test_nvjpeg_batch_is_close_to_the_pil_path(mixed):
    """nvJPEG's own IDCT and chroma upsampling: close to PIL's pixels, not equal to them."""
    geometry = EvalGeometry(32)
    cuda = torch.device("cuda")
    out = decode_batch([str(p) for p in mixed], [read_file(str(p)) for p in mixed], geometry, cuda)
    for path, x in zip(mixed, out):
        assert x.device.type == "cuda"
        _within(x.cpu(), _pil_path(path, geometry), (40, 2.0), path.name)
    batches = list(DecodedBatches(mixed, geometry, 5, cuda, workers=2))
    assert all(x.device.type == "cuda" for x, _, _ in batches)
    assert torch.cat([i for _, _, i in batches]).tolist() == list(range(len(mixed)))


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: f"{g.image_size}-{g.interpolation}-sq{int(g.square)}")
def test_bytes_in_memory_decode_as_the_file_does(mixed, geometry):
    """decode_bytes (an upload) gives decode_cpu's pixels (a file) exactly: the same code after reading."""
    for path in mixed:
        assert torch.equal(decode_bytes(path.read_bytes(), "the upload", geometry), decode_cpu(path, geometry)), path


def test_bytes_over_max_pixels_are_refused_before_decoding(mixed):
    data = mixed[1].read_bytes()  # 200 x 200
    with pytest.raises(BadImageError, match="more than the limit of 1,000"):
        decode_bytes(data, "the upload", GEOMETRIES[0], max_pixels=1_000)
