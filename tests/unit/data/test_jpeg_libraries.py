"""catdog/data/jpeg_libraries.py: which JPEG library decodes, why one is refused, and EXIF orientation applied exactly
once whether the library turns images itself or not."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

import catdog.data.decode as decode
import catdog.data.jpeg_libraries as jl
from catdog.data.decode import decoder_description, resolve_decoder
from catdog.data.jpeg_libraries import LIBRARIES, best_library, orient, probe_jpeg, unavailable, version_tuple
from catdog.errors import ConfigError

CPU = torch.device("cpu")


@pytest.fixture
def fresh_caches():
    """The per-process caches emptied before and after (a test that fakes a library must not leave it behind)."""
    for cached in (jl.unavailable, jl.orients):
        cached.cache_clear()
    yield
    for cached in (jl.unavailable, jl.orients):
        cached.cache_clear()


def _pixels(data: bytes) -> torch.Tensor:
    """The stored pixels of a JPEG, as PIL decodes them, EXIF ignored."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    return torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(img.height, img.width, 3).permute(2, 0, 1)


def _fake_library(monkeypatch, name: str, turns_itself: bool) -> list[int]:
    """Replace ``name`` by PIL: decoding the stored pixels, turned upright as PIL turns them when ``turns_itself``."""
    calls = []

    def fake(datas, device):
        calls.append(len(datas))
        out = []
        for data in datas:
            img = Image.open(io.BytesIO(data))
            orientation = img.getexif().get(0x0112, 1)
            x = _pixels(data)
            out.append(orient(x, orientation) if turns_itself else x)
        return out

    monkeypatch.setitem(jl._DECODE, name, fake)
    return calls


def test_version_tuple_reads_local_versions():
    assert version_tuple("0.17.0+cu130") == (0, 17, 0)
    assert version_tuple("0.16") >= jl.MIN_TORCHCODEC > version_tuple("0.15.9")
    assert version_tuple("unknown") == ()


@pytest.mark.parametrize("turns_itself", [True, False])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_is_applied_exactly_once(monkeypatch, fresh_caches, orientation, turns_itself):
    """The probe finds out whether the library turned the image; catdog turns it only where it did not."""
    _fake_library(monkeypatch, "torchvision", turns_itself)
    assert jl.orients("torchvision", "cpu") is turns_itself
    data = probe_jpeg(orientation)
    upright = orient(_pixels(data), orientation)
    assert torch.equal(jl.decode_upright([data], [orientation], CPU, "torchvision")[0], upright)


def test_a_library_that_is_too_old_or_broken_is_refused_saying_why(monkeypatch, fresh_caches):
    real_version = jl.library_version
    monkeypatch.setattr(jl, "library_version", lambda lib: "0.15.1" if lib == "torchcodec" else real_version(lib))
    assert unavailable("torchcodec") == (
        "torchcodec 0.15.1 has no image decoders (they came in 0.16); pip install 'torchcodec>=0.16'"
    )
    jl.unavailable.cache_clear()

    def broken(datas, device):
        raise RuntimeError("Could not load libtorchcodec_core\nlong traceback")

    monkeypatch.setitem(jl._DECODE, "torchvision", broken)
    assert unavailable("torchvision").endswith("cannot decode a test JPEG here: Could not load libtorchcodec_core")
    assert unavailable("nvimgcodec") == "unknown JPEG library 'nvimgcodec' (one of ['torchcodec', 'torchvision'])"


def test_a_missing_torchcodec_falls_back_to_torchvision_then_pil(monkeypatch, fresh_caches):
    def not_installed(lib):
        if lib == "torchcodec":
            raise ImportError("No module named 'torchcodec'")
        return "0.29.1"

    monkeypatch.setattr(jl, "library_version", not_installed)
    _fake_library(monkeypatch, "torchvision", turns_itself=False)
    assert unavailable("torchcodec").startswith("torchcodec is not installed (No module named 'torchcodec')")
    assert best_library() == "torchvision" and resolve_decoder("auto") == resolve_decoder("fast") == "torchvision"
    assert decoder_description("torchvision") == (
        "torchvision 0.29.1 for JPEGs, PIL for other images (torchcodec is not installed (No module named "
        "'torchcodec'); pip install 'torchcodec>=0.16')"
    )
    with pytest.raises(ConfigError, match=r"^decoder=torchcodec: torchcodec is not installed .* or pil$"):
        resolve_decoder("torchcodec")

    def broken(datas, device):
        raise RuntimeError("no image extension")

    jl.unavailable.cache_clear()
    monkeypatch.setitem(jl._DECODE, "torchvision", broken)
    assert best_library() is None and resolve_decoder("auto") == "pil"
    with pytest.raises(ConfigError, match=r"^decoder=fast, but no JPEG library decodes here \(torchcodec is not"):
        resolve_decoder("fast")
    assert decoder_description("pil").startswith("PIL for every image (torchcodec is not installed")


def test_the_decoder_setting_names_the_libraries():
    with pytest.raises(ConfigError, match=r"decoder must be one of \['auto', 'pil', 'fast', 'torchcodec', 'torch"):
        resolve_decoder("turbo")
    assert resolve_decoder("pil") == "pil"
    assert resolve_decoder("auto") in (*LIBRARIES, "pil")


@pytest.mark.parametrize("library", LIBRARIES)
def test_the_installed_libraries_decode_the_probe_upright(library):
    """The real libraries (skipped where one is absent): a JPEG with orientation 6 comes out turned, once."""
    if unavailable(library) is not None:
        pytest.skip(unavailable(library))
    data = probe_jpeg(6)
    x = jl.decode_upright([data], [6], CPU, library)[0]
    assert tuple(x.shape) == (3, 16, 8)
    assert torch.equal(x, orient(_pixels(data), 6))


def test_decode_uses_the_library_it_is_given(monkeypatch, fresh_caches, tmp_path):
    calls = _fake_library(monkeypatch, "torchvision", turns_itself=False)
    path = tmp_path / "a.jpg"
    path.write_bytes(probe_jpeg(3))
    x = decode.decode_cpu(path, decode.EvalGeometry(8, 1.0), library="torchvision")
    assert calls == [1, 1] and tuple(x.shape) == (3, 8, 8)  # the probe of orients(), then the image
