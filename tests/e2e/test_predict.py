import csv
import json

import numpy as np
import pytest
import torch

from catdog.data.images import load_image
from catdog.data.transforms import eval_transform
from catdog.errors import BadImageError, CheckpointError, ConfigError, DatasetError
from catdog.fileio import OutputExistsError
from catdog.inference import load_classifier
from catdog.prediction import predict
from catdog.training import train
from tests.conftest import compose_predict, make_image, tiny_train_cfg


def _predict(ckpt, tmp_path, *overrides):
    cfg = compose_predict([f"ckpt={ckpt}", "num_workers=0", "device=cpu", *overrides], output_dir=tmp_path)
    return predict(cfg)


def _read(path):
    with open(path) as f:
        return list(csv.reader(f))


def test_submission_is_valid_and_sorted_numerically(trained, tmp_path):
    ckpt, _ = trained
    path = _predict(ckpt, tmp_path)
    rows = _read(path)
    assert rows[0] == ["id", "label"]
    ids = [r[0] for r in rows[1:]]
    assert ids == [str(i) for i in range(1, 13)]  # 1, 2, ..., 10, 11, 12: numeric order, not text order
    probs = np.array([float(r[1]) for r in rows[1:]])
    assert np.all((probs >= 0) & (probs <= 1))


def test_tta0_equals_plain_forward(trained, tmp_path):
    ckpt, data = trained
    rows = _read(_predict(ckpt, tmp_path, "tta=0", "precision=32", "decoder=pil"))
    model = load_classifier(ckpt)
    assert model.temperature is not None  # applied by default (calibrate=true)
    transform = eval_transform(model.hparams.image_size, model.hparams.crop_pct)
    x = torch.stack([transform(load_image(data / "test" / f"{r[0]}.jpg")) for r in rows[1:]])
    with torch.no_grad():
        expected = torch.softmax(model(x) / model.temperature, dim=1)[:, 1].numpy()
    got = np.array([float(r[1]) for r in rows[1:]])
    np.testing.assert_allclose(got, expected, atol=2e-6)


def test_tta_changes_predictions_and_stays_probabilities(trained, tmp_path):
    ckpt, _ = trained
    plain = np.array([float(r[1]) for r in _read(_predict(ckpt, tmp_path / "a", "tta=0"))[1:]])
    tta = np.array([float(r[1]) for r in _read(_predict(ckpt, tmp_path / "b", "tta=5"))[1:]])
    assert not np.allclose(plain, tta)
    assert np.all((tta >= 0) & (tta <= 1))


def test_tta_depth_beyond_available_views_is_rejected(trained, tmp_path):
    ckpt, _ = trained
    with pytest.raises(ConfigError, match="tta must be an integer from 0 to 11"):
        _predict(ckpt, tmp_path, "tta=12")


def test_clip_bounds_probabilities(trained, tmp_path):
    ckpt, _ = trained
    probs = np.array([float(r[1]) for r in _read(_predict(ckpt, tmp_path, "clip=[0.2,0.8]"))[1:]])
    assert probs.min() >= 0.2 - 1e-9 and probs.max() <= 0.8 + 1e-9
    with pytest.raises(ConfigError, match="clip"):
        _predict(ckpt, tmp_path / "x", "clip=[0.6,0.9]")


def test_refuses_to_overwrite(trained, tmp_path):
    ckpt, _ = trained
    out = tmp_path / "sub.csv"
    out.write_text("precious\n")
    with pytest.raises(OutputExistsError, match="overwrite=true"):
        _predict(ckpt, tmp_path, f"output={out}")
    assert out.read_text() == "precious\n"
    _predict(ckpt, tmp_path, f"output={out}", "overwrite=true")
    assert out.read_text().startswith("id,label")


def test_bad_images_fail_before_compute_listing_all(trained, tmp_path):
    ckpt, _ = trained
    folder = tmp_path / "in"
    make_image(folder / "1.jpg")
    (folder / "2.jpg").write_bytes(b"")
    (folder / "3.jpg").write_text("<html>not an image</html>")
    with pytest.raises(BadImageError) as err:
        _predict(ckpt, tmp_path, f"input={folder}")
    assert "2.jpg" in str(err.value) and "3.jpg" in str(err.value) and "2 of 3" in str(err.value)
    assert not (tmp_path / "submission.csv").exists()


def test_bad_images_skipped_on_request(trained, tmp_path, caplog):
    ckpt, _ = trained
    folder = tmp_path / "in"
    make_image(folder / "1.jpg")
    make_image(folder / "4.png")
    (folder / "2.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    path = _predict(ckpt, tmp_path, f"input={folder}", "on_bad_image=skip")
    assert [r[0] for r in _read(path)[1:]] == ["1", "4"]
    assert "ids missing from the output: 2" in caplog.text


def test_data_dir_selects_the_test_folder(trained, tmp_path):
    ckpt, _ = trained
    make_image(tmp_path / "other" / "test" / "42.jpg")
    rows = _read(_predict(ckpt, tmp_path, f"data.dir={tmp_path / 'other'}"))
    assert [r[0] for r in rows[1:]] == ["42"]


def test_input_single_file_and_nested_test_folder(trained, tmp_path):
    ckpt, _ = trained
    img = make_image(tmp_path / "in" / "test" / "cat_photo.jpg")
    assert [r[0] for r in _read(_predict(ckpt, tmp_path / "a", f"input={tmp_path / 'in'}"))[1:]] == ["cat_photo"]
    assert [r[0] for r in _read(_predict(ckpt, tmp_path / "b", f"input={img}"))[1:]] == ["cat_photo"]


def test_labelled_folder_is_scored(trained, tmp_path, capsys):
    ckpt, data = trained
    scores = _predict(ckpt, tmp_path, f"input={data / 'train'}", "labelled=true")
    assert scores["images"] == 16
    assert 0 <= scores["accuracy"] <= 1 and scores["log_loss"] > 0
    out = capsys.readouterr().out
    assert "| images | tta | calibrated | accuracy | log loss |" in out
    assert "| id | true label | predicted | P(true label) |" in out
    rows = _read(tmp_path / "predictions.csv")
    assert rows[0] == ["id", "label", "true_label"] and len(rows) == 17
    assert not (tmp_path / "submission.csv").exists()  # scoring is not a submission
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert saved["accuracy"] == scores["accuracy"] and saved["log_loss"] == scores["log_loss"]
    assert saved["images"] == 16 and saved["tta"] == 0
    assert "| images | tta | calibrated | accuracy | log loss |" in (tmp_path / "evaluation.md").read_text()


def test_labelled_class_folders_numbered_per_class_with_capitalized_names(trained, tmp_path):
    """Microsoft's PetImages layout: Cat/0.jpg and Dog/0.jpg, for a model trained on classes cat and dog."""
    ckpt, _ = trained
    for label, name in enumerate(("Cat", "Dog")):
        for i in range(3):
            make_image(tmp_path / "PetImages" / name / f"{i}.jpg", label, seed=10 * label + i)
    out = tmp_path / "eval" / "val.csv"
    scores = _predict(ckpt, tmp_path, f"input={tmp_path / 'PetImages'}", "labelled=true", f"output={out}")
    assert scores["images"] == 6
    rows = _read(out)
    assert sorted(r[0] for r in rows[1:]) == [f"{c}/{i}.jpg" for c in ("Cat", "Dog") for i in range(3)]
    assert {r[0].split("/")[0]: r[2] for r in rows[1:]} == {"Cat": "cat", "Dog": "dog"}
    assert (tmp_path / "eval" / "val_evaluation.md").is_file() and (tmp_path / "eval" / "val_evaluation.json").is_file()
    # Ambiguous names are still refused: two folders that both match "cat".
    make_image(tmp_path / "PetImages" / "cat" / "9.jpg", 0)
    with pytest.raises(DatasetError, match=r"class folders \['Cat', 'Dog', 'cat'\], but the training classes"):
        _predict(ckpt, tmp_path / "b", f"input={tmp_path / 'PetImages'}", "labelled=true")


def test_run_split_file_scores_the_validation_images(trained, tmp_path):
    ckpt, _ = trained
    run = ckpt.parent.parent
    result = json.loads((run / "result.json").read_text())
    val_rows = [r for r in _read(run / "split.csv")[1:] if r[2] == "val"]
    for calibrate, key in (("false", "val/logloss"), ("true", "val/logloss_calibrated_in_sample")):
        scores = _predict(
            ckpt, tmp_path / calibrate, f"input={run / 'split.csv'}", "labelled=true", f"calibrate={calibrate}"
        )
        assert scores["images"] == len(val_rows)
        assert scores["log_loss"] == pytest.approx(result[key], abs=2e-3)
        assert scores["accuracy"] == pytest.approx(result["val/acc"])
        # These images chose the checkpoint's epoch and fitted its temperature: the evaluation says so.
        assert json.loads((tmp_path / calibrate / "evaluation.json").read_text())["in_sample"] is True
    # Any other CSV is read as a dataset CSV (data.csv_columns): oof.csv has no image column.
    with pytest.raises(DatasetError, match=r"oof.csv has no column 'image' \(columns: \['path', 'label', 'fold'"):
        _predict(ckpt, tmp_path / "bad", f"input={run / 'oof.csv'}", "labelled=true")
    with pytest.raises(ConfigError, match="is a run's split.csv: add labelled=true"):
        _predict(ckpt, tmp_path / "unlabelled", f"input={run / 'split.csv'}")


def test_more_than_two_classes_writes_a_column_per_class(tmp_path):
    from tests.conftest import make_class_folders

    data = make_class_folders(tmp_path / "data", per_class=4, classes=("ant", "bee", "cow"), validation=False)
    make_image(data / "test" / "7.jpg")
    train(tiny_train_cfg(data, tmp_path / "run"))
    rows = _read(_predict(tmp_path / "run" / "checkpoints" / "best.ckpt", tmp_path))
    assert rows[0] == ["id", "ant", "bee", "cow"]
    assert abs(sum(float(v) for v in rows[1][1:]) - 1) < 1e-4


def test_missing_checkpoint_and_latest(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        _predict(tmp_path / "nope.ckpt", tmp_path)
    with pytest.raises(CheckpointError, match="ckpt=latest"):
        _predict("latest", tmp_path, f"paths.log_dir={tmp_path}")


def test_bf16_prediction_on_cpu_is_close_to_fp32(trained, tmp_path):
    ckpt, _ = trained
    fp32 = np.array([float(r[1]) for r in _read(_predict(ckpt, tmp_path / "a", "precision=32"))[1:]])
    try:
        bf16 = np.array([float(r[1]) for r in _read(_predict(ckpt, tmp_path / "b", "precision=bf16"))[1:]])
    except RuntimeError as exc:  # pragma: no cover - CPUs without bf16 kernels
        pytest.skip(f"no bf16 on this CPU: {exc}")
    np.testing.assert_allclose(bf16, fp32, atol=3e-2)
    with pytest.raises(ConfigError, match="precision must be one of"):
        _predict(ckpt, tmp_path / "c", "precision=fp8")


def test_compiled_prediction_matches_eager(trained, tmp_path):
    ckpt, _ = trained
    eager = np.array([float(r[1]) for r in _read(_predict(ckpt, tmp_path / "a", "tta=1"))[1:]])
    compiled = np.array([float(r[1]) for r in _read(_predict(ckpt, tmp_path / "b", "tta=1", "compile=true"))[1:]])
    np.testing.assert_allclose(compiled, eager, atol=1e-5)


def test_tta_view_sets_are_a_switch_that_leaves_the_plain_pass_alone(trained, tmp_path):
    ckpt, _ = trained

    def probs(name, *overrides):
        return [float(r[1]) for r in _read(_predict(ckpt, tmp_path / name, *overrides))[1:]]

    zoom, crops = probs("zoom", "tta=5"), probs("crops", "tta=5", "tta_views=crops")
    assert zoom != crops  # other views, other averages
    assert probs("plain", "tta=0") == probs("plain_crops", "tta=0", "tta_views=crops")
    with pytest.raises(ConfigError, match=r"tta_views must be one of \['zoom', 'crops'\]"):
        _predict(ckpt, tmp_path / "bad", "tta=5", "tta_views=ten")
