"""The fast decoding path (catdog/data/decode.py): the pixels of the PIL path within TOLERANCE, every file the fast
decoders do not take or fail on left to load_image, a BadImageError naming the file and nothing else for a bad one,
the order of the paths kept, and predict.py giving the same probabilities with decoder=fast as with decoder=pil."""

from __future__ import annotations

import csv
import logging

import numpy as np
import pytest

import catdog.data.decode as decode
from catdog import prediction
from catdog.data.decode import fast_loader, resolve_decoder
from catdog.data.jpeg_libraries import LIBRARIES, best_library, describe, unavailable
from catdog.errors import BadImageError, ConfigError
from catdog.prediction import predict
from tests.conftest import compose_predict, make_image
from tests.unit.data.test_decode import _exif, _photo, _save


def test_decoder_setting_is_checked_and_resolved(monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match=r"decoder must be one of \['auto', 'pil', 'fast', 'torchcodec', 'torchvisi"):
        predict(compose_predict(["ckpt=none.ckpt", "decoder=turbo", "device=cpu"], output_dir=tmp_path))
    assert resolve_decoder("auto") == best_library() and resolve_decoder("pil") == "pil"
    monkeypatch.setattr(decode, "best_library", lambda: None)
    monkeypatch.setattr(decode, "unavailable", lambda lib: f"{lib} is not here")
    assert resolve_decoder("auto") == "pil"
    with pytest.raises(ConfigError, match="decoder=fast, but no JPEG library decodes here"):
        resolve_decoder("fast")


def _probs(path):
    with open(path) as f:
        return {r[0]: float(r[1]) for r in list(csv.reader(f))[1:]}


def _predict(ckpt, out, *overrides):
    cfg = compose_predict([f"ckpt={ckpt}", "num_workers=0", "device=cpu", "precision=32", *overrides], output_dir=out)
    return predict(cfg)


@pytest.mark.parametrize("tta", ["tta=0", "tta=5", "tta=3 tta_views=crops"])
def test_predict_with_the_fast_decoder_matches_pil(trained, tmp_path, tta, monkeypatch):
    ckpt, data = trained
    made = []

    def counted(paths, geometry, *args, **kwargs):
        made.append(geometry)
        return fast_loader(paths, geometry, *args, **kwargs)

    monkeypatch.setattr(prediction, "fast_loader", counted)
    folder = tmp_path / "in"
    folder.mkdir()
    for src in sorted((data / "test").iterdir()):
        (folder / src.name).write_bytes(src.read_bytes())
    _save(_photo((500, 300), 1), folder / "100.jpg", quality=90)  # drafted on the CPU
    _save(_photo((40, 60), 2), folder / "101.jpg", exif=_exif(8))
    make_image(folder / "102.png", 1)
    make_image(folder / "103.jpg", 0, fmt="PNG")
    pil = _probs(_predict(ckpt, tmp_path / "pil", f"input={folder}", *tta.split(), "decoder=pil"))
    fast = _probs(_predict(ckpt, tmp_path / "fast", f"input={folder}", *tta.split(), "decoder=fast"))
    assert len(made) == 1 and made[0].square == ("crops" in tta)  # pil made none, fast one
    assert list(fast) == list(pil) and len(pil) == 16
    np.testing.assert_allclose(list(fast.values()), list(pil.values()), atol=2e-3)


def test_predict_logs_the_library_and_each_library_gives_the_same_predictions(trained, tmp_path, caplog):
    ckpt, data = trained
    libraries = [lib for lib in LIBRARIES if unavailable(lib) is None]
    if len(libraries) < 2:
        pytest.skip(f"needs both JPEG libraries: {'; '.join(unavailable(lib) or lib for lib in LIBRARIES)}")
    with caplog.at_level(logging.INFO, logger="catdog.prediction"):
        rows = [_probs(_predict(ckpt, tmp_path / lib, f"input={data / 'test'}", f"decoder={lib}")) for lib in libraries]
    for lib in libraries:
        assert f"decoder={lib}: {describe(lib)} for JPEGs, PIL for other images" in caplog.text
    assert list(rows[0]) == list(rows[1]) and len(rows[0]) > 0
    # the same libjpeg-turbo pixels, TOLERANCE at most after the resize: probabilities as close as pil's are to fast's
    np.testing.assert_allclose(list(rows[0].values()), list(rows[1].values()), atol=2e-3)


def test_predict_with_the_fast_decoder_keeps_the_bad_image_policy(trained, tmp_path, caplog):
    ckpt, _ = trained
    folder = tmp_path / "in"
    make_image(folder / "1.jpg")
    (folder / "2.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    make_image(folder / "3.jpg", 1)
    with pytest.raises(BadImageError, match="2.jpg"):
        _predict(ckpt, tmp_path / "a", f"input={folder}", "decoder=fast")
    path = _predict(ckpt, tmp_path / "b", f"input={folder}", "decoder=fast", "on_bad_image=skip")
    assert list(_probs(path)) == ["1", "3"]
    assert "ids missing from the output: 2" in caplog.text
