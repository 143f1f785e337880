"""catdog.quantize without ONNX Runtime: the gate's decision and message, the config checks, the calibration draw."""

import pytest
import torch

from catdog.errors import ConfigError
from catdog.exporting import output_path
from catdog.quantize import (
    CalibrationImages,
    Scores,
    calibration_sample,
    check_quantize_config,
    padded,
    quantization_gate,
)

FP32 = Scores(accuracy=0.9500, log_loss=0.1500)


@pytest.mark.parametrize(
    "int8, passed",
    [
        (Scores(0.9500, 0.1500), True),  # unchanged
        (Scores(0.9460, 0.1590), True),  # within both limits
        (Scores(0.9450, 0.1600), True),  # exactly at both limits: "more than" refuses, "as much as" does not
        (Scores(0.9525, 0.1400), True),  # better
        (Scores(0.9440, 0.1500), False),  # accuracy 0.6 points down
        (Scores(0.9500, 0.1610), False),  # log loss 0.011 up
        (Scores(0.9000, 0.3000), False),  # both
    ],
)
def test_gate_refuses_more_than_the_allowed_accuracy_fall_or_log_loss_rise(int8, passed):
    gate = quantization_gate(FP32, int8, 4000, max_acc_drop=0.5, max_logloss_rise=0.01)
    assert gate.passed is passed
    assert "\n" not in gate.message
    # both figures of both models, and how many images they come from, are in the one line
    for figure in ("95.00%", f"{int8.accuracy:.2%}", "0.1500", f"{int8.log_loss:.4f}", "4000 validation images"):
        assert figure in gate.message, (figure, gate.message)
    assert gate.record["float32"] == {"accuracy": 0.95, "log_loss": 0.15}
    assert gate.record["int8"] == {"accuracy": int8.accuracy, "log_loss": int8.log_loss}
    assert gate.record["validation_images"] == 4000
    assert gate.record["accuracy_drop_points"] == pytest.approx((0.95 - int8.accuracy) * 100)
    assert gate.record["log_loss_rise"] == pytest.approx(int8.log_loss - 0.15)


def test_refusal_names_the_limit_that_failed_and_says_nothing_was_written():
    gate = quantization_gate(FP32, Scores(0.9440, 0.1500), 100, 0.5, 0.01)
    assert gate.message.startswith("int8 model refused (accuracy fell 0.60 points > quantize.max_acc_drop=0.5)")
    assert gate.message.endswith("nothing was written")
    assert "max_logloss_rise" not in gate.message
    gate = quantization_gate(FP32, Scores(0.95, 0.1620), 100, 0.5, 0.01)
    assert "(log loss rose 0.0120 > quantize.max_logloss_rise=0.01)" in gate.message
    assert "max_acc_drop" not in gate.message
    both = quantization_gate(FP32, Scores(0.90, 0.30), 100, 0.5, 0.01).message
    assert "quantize.max_acc_drop" in both and "quantize.max_logloss_rise" in both


def test_negative_limits_refuse_even_an_identical_model():
    assert not quantization_gate(FP32, FP32, 10, max_acc_drop=-0.1, max_logloss_rise=1).passed
    assert not quantization_gate(FP32, FP32, 10, max_acc_drop=1, max_logloss_rise=-1).passed


def test_accuracy_fractions_at_the_limit_pass_despite_rounding():
    # 179/200 vs 180/200: 0.5 points, but (0.9 - 0.895) * 100 = 0.5000000000000004 in floating point
    gate = quantization_gate(Scores(180 / 200, 0.2), Scores(179 / 200, 0.2), 200, 0.5, 0.01)
    assert gate.passed, gate.message


VALID = {"dtype": "int8", "images": 256, "max_acc_drop": 0.5, "max_logloss_rise": 0.01}


def test_config_check_returns_the_dtype():
    assert check_quantize_config(VALID, "onnx") == "int8"
    assert check_quantize_config({**VALID, "dtype": None}, "torchscript") is None
    assert check_quantize_config(None, "onnx") is None
    assert check_quantize_config({**VALID, "max_acc_drop": -1, "max_logloss_rise": -1}, "onnx") == "int8"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"dtype": "int4"}, r"quantize\.dtype must be null \(no quantization\) or one of \['int8'\], got 'int4'"),
        ({"images": 0}, r"quantize\.images must be a positive integer .*got 0"),
        ({"images": 2.5}, r"quantize\.images must be a positive integer .*got 2\.5"),
        ({"images": True}, r"quantize\.images must be a positive integer .*got True"),
        ({"max_acc_drop": "half"}, r"quantize\.max_acc_drop must be a number .*got 'half'"),
        ({"max_acc_drop": float("nan")}, r"quantize\.max_acc_drop must be a number .*got nan"),
        ({"max_logloss_rise": None}, r"quantize\.max_logloss_rise must be a number .*got None"),
        ({"data_dir": 3}, r"quantize\.data_dir must be null .*got 3"),
        ({"num_workers": -1}, r"quantize\.num_workers must be a non-negative integer .*got -1"),
        ({"batch_size": 0}, r"quantize\.batch_size must be a positive integer .*got 0"),
        ({"bits": 8}, r"quantize has unknown key\(s\) \['bits'\]"),
    ],
)
def test_every_bad_value_is_an_error_naming_its_key(change, message):
    with pytest.raises(ConfigError, match=message):
        check_quantize_config({**VALID, **change}, "onnx")


def test_int8_needs_format_onnx():
    with pytest.raises(ConfigError, match=r"quantize=int8 applies to format=onnx only .*got format=torchscript"):
        check_quantize_config(VALID, "torchscript")


def test_calibration_sample_is_a_fixed_draw_without_repeats():
    paths = [f"train/{c}.{i}.jpg" for c in ("cat", "dog") for i in range(50)]
    first = calibration_sample(paths, 10)
    assert first == calibration_sample(list(reversed(paths)), 10)  # whatever order split.csv lists them in
    assert len(set(first)) == 10 and set(first) <= set(paths)
    assert calibration_sample(paths, 10, seed=1) != first
    assert calibration_sample(paths, 500) == sorted(paths)


def test_a_fixed_batch_is_filled_with_the_batchs_own_images():
    x = torch.arange(3 * 2).view(3, 2)
    assert padded(x, None) is x and padded(x, 3) is x
    assert padded(x, 7).tolist() == [[0, 1], [2, 3], [4, 5], [0, 1], [2, 3], [4, 5], [0, 1]]
    reader = CalibrationImages(iter([torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)]), batch=4)
    first = reader.get_next()["images"]
    assert first.shape == (4, 3, 4, 4) and first.dtype == "float32" and float(first.max()) == 1.0
    assert reader.get_next() is None and reader.images == 2


def test_int8_file_goes_beside_the_checkpoint_by_default(tmp_path):
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    assert output_path(None, "onnx", ckpt, "int8") == tmp_path / "run" / "checkpoints" / "best.int8.onnx"
    assert output_path(None, "onnx", ckpt) == tmp_path / "run" / "checkpoints" / "best.onnx"
    assert output_path(str(tmp_path / "m.onnx"), "onnx", ckpt, "int8") == tmp_path / "m.onnx"
