"""The server's predictor (catdog.serving.predictor) answers an upload as predict.py answers the file: same decoding,
TTA, temperature and ensembling; Grad-CAM overlays; bad uploads as values, not exceptions. No HTTP here (the server
itself: tests/e2e/test_serve_http.py)."""

import base64
import csv
import io

import numpy as np
import pytest
from PIL import Image

from catdog.errors import ConfigError
from catdog.exporting import export
from catdog.prediction import predict
from catdog.serving.predictor import Predictor
from catdog.serving.uploads import UploadError
from tests.conftest import compose_predict
from tests.e2e.test_export import compose_export

#: predict.py writes probabilities with 9 significant digits: half a unit in the last one, for values in [0, 1].
CSV_ROUNDING = 5e-10


def _predict_py(ckpt, tmp_path, *overrides) -> dict[str, float]:
    cfg = compose_predict(
        [f"ckpt={ckpt}", "num_workers=0", "device=cpu", "precision=32", *overrides], output_dir=tmp_path
    )
    with open(predict(cfg)) as f:
        return {row[0]: float(row[1]) for row in list(csv.reader(f))[1:]}


@pytest.mark.parametrize(
    "decoder, tta, views", [("pil", 0, "zoom"), ("fast", 0, "zoom"), ("fast", 2, "zoom"), ("pil", 3, "crops")]
)
def test_an_upload_gets_the_probability_predict_py_writes_for_the_file(trained, tmp_path, decoder, tta, views):
    ckpt, data = trained
    expected = _predict_py(ckpt, tmp_path, f"decoder={decoder}", f"tta={tta}", f"tta_views={views}")
    paths = sorted((data / "test").iterdir())
    predictor = Predictor([ckpt], tta=tta, views=views, decoder=decoder, precision="32")
    # one batch holding every image, as predict.py's single batch of these 12
    probs = predictor.probabilities([predictor.decode(p.read_bytes()) for p in paths])
    got = {p.stem: float(row[1]) for p, row in zip(paths, probs)}
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert abs(got[key] - value) <= CSV_ROUNDING, (key, got[key], value)


def test_an_answer_names_the_class_the_model_and_its_temperature(trained):
    ckpt, data = trained
    predictor = Predictor([ckpt], decoder="pil", precision="32")
    answer = predictor.predict([predictor.decode((data / "test" / "1.jpg").read_bytes())])[0]
    assert set(answer["probabilities"]) == {"cat", "dog"}
    assert answer["class"] == max(answer["probabilities"], key=answer["probabilities"].get)
    assert answer["probability"] == answer["probabilities"][answer["class"]]
    assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    member = answer["model"]["members"][0]
    assert member["run"] == ckpt.parent.parent.name and member["checkpoint"] == "best.ckpt"
    assert len(member["sha1"]) == 40 and member["temperature"] == predictor.models[0].temperature
    assert str(ckpt.parent) not in repr(answer)  # no server path is told


def test_bad_uploads_are_answered_in_place_without_failing_the_batch(trained):
    ckpt, data = trained
    predictor = Predictor([ckpt], decoder="fast", precision="32")
    good = predictor.decode((data / "test" / "2.jpg").read_bytes())
    bad = predictor.decode(b"<html>not a picture</html>")
    assert isinstance(bad, UploadError) and bad.status == 415
    answers = predictor.predict([good, bad, good])
    assert answers[1] is bad
    assert answers[0]["probabilities"] == answers[2]["probabilities"]
    alone = predictor.predict([good])[0]
    for c, p in alone["probabilities"].items():
        assert abs(p - answers[0]["probabilities"][c]) <= 1e-6  # float32 rounding of a batch of 3 vs 1


def test_gradcam_overlays_the_crop_the_model_saw(trained):
    ckpt, data = trained
    predictor = Predictor([ckpt, ckpt], decoder="pil", precision="32", gradcam=True)
    answer = predictor.predict([predictor.decode((data / "test" / "3.jpg").read_bytes())])[0]
    cam = answer["gradcam"]
    assert cam["class"] == answer["class"] and "2 members" in cam["explained_by"]
    png = Image.open(io.BytesIO(base64.b64decode(cam["image"].split(",", 1)[1])))
    size = predictor.models[0].hparams.image_size
    assert png.size == (size, size)
    crop = predictor.decode((data / "test" / "3.jpg").read_bytes())[predictor.cam_geometries[0]]
    assert not np.array_equal(np.asarray(png.convert("RGB")), crop.permute(1, 2, 0).numpy())  # coloured over


def test_gradcam_of_an_exported_file_is_refused(trained, tmp_path):
    ckpt, _ = trained
    path = export(compose_export([f"ckpt={ckpt}", f"output={tmp_path / 'm.pt'}", "format=torchscript"]))
    with pytest.raises(ConfigError, match="serve.gradcam=true needs the network's layers"):
        Predictor([path], gradcam=True)
    answer = Predictor([path], decoder="pil").info()
    assert answer["classes"] == ["cat", "dog"] and answer["members"][0]["checkpoint"] == "m.pt"
