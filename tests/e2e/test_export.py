"""python -m catdog.export: ONNX and TorchScript files with the preprocessing inside, the same probabilities as the
checkpoint, and predict.py with such a file."""

import csv
import json
import logging
import re
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir

from catdog.cli.export import main as export_main
from catdog.data.images import load_image
from catdog.data.transforms import eval_transform
from catdog.errors import CheckpointError, ConfigError
from catdog.exported import TORCHSCRIPT_DEPRECATED, ExportedClassifier, load_exported, quiet_jit
from catdog.exporting import export
from catdog.inference import load_classifier
from catdog.prediction import predict
from catdog.quantize import QuantizationRefused
from catdog.training import train
from tests.conftest import CONF_DIR, compose_predict, extra_marks, installed, make_flat, needs_extra, tiny_train_cfg

TOLERANCE = 1e-4


def compose_export(overrides, output_dir=None):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="export", overrides=list(overrides))
    if output_dir is not None:
        cfg.paths.output_dir = str(output_dir)
    return cfg


def _export(ckpt, output, *overrides):
    return export(compose_export([f"ckpt={ckpt}", f"output={output}", *overrides]))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny VGG16-BN trained once (with its fitted temperature), exported to ONNX and TorchScript."""
    root = tmp_path_factory.mktemp("export")
    data = make_flat(root / "data", per_class=8, test=6)
    train(tiny_train_cfg(data, root / "run"))
    ckpt = root / "run" / "checkpoints" / "best.ckpt"
    # verify=false: the tests below compare the files with the checkpoint.
    files = {"torchscript": _export(ckpt, root / "model.pt", "format=torchscript", "verify=false")}
    if all(installed(m) for m in ONNX_PACKAGES):
        files["onnx"] = _export(ckpt, root / "model.onnx", "format=onnx", "verify=false")
    return ckpt, data, files


ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


needs_onnx = needs_extra("export", *ONNX_PACKAGES)


def _images(data, size: int) -> torch.Tensor:
    """The test images as predict.py reads them for a ``size`` px model (uint8)."""
    transform = eval_transform(size, 0.875)
    return torch.stack([transform(load_image(p)) for p in sorted((data / "test").iterdir())])


def _expected(model, x):
    with torch.no_grad():
        logits = model(x).float()
    return torch.softmax(logits / (model.temperature or 1.0), dim=1), logits


def _assert_logits_close(got, expected):
    """Logits agree to float32 precision: 1e-4, or 1e-5 of the largest logit (a ResNet trained for one step has
    logits in the thousands, and a small logit of the same row carries the rounding of the large sums behind it)."""
    diff = float((torch.as_tensor(got) - expected).abs().max())
    assert diff <= TOLERANCE + 1e-5 * float(expected.abs().max()), (diff, expected)


def _onnx_outputs(path_or_session, x: torch.Tensor):
    import onnxruntime

    session = path_or_session
    if not isinstance(session, onnxruntime.InferenceSession):
        session = onnxruntime.InferenceSession(str(session), providers=["CPUExecutionProvider"])
    probs, logits = session.run(["probabilities", "logits"], {"images": x.numpy()})
    return torch.from_numpy(probs), torch.from_numpy(logits), session


@needs_onnx
def test_onnx_file_matches_the_checkpoint(trained):
    ckpt, data, files = trained
    model = load_classifier(ckpt)
    assert model.temperature is not None
    x = _images(data, model.hparams.image_size)
    probs, logits = _expected(model, x)
    got_probs, got_logits, session = _onnx_outputs(files["onnx"], x.float() / 255)
    assert (got_probs - probs).abs().max() < TOLERANCE
    _assert_logits_close(got_logits, logits)
    for n in (1, 5):  # any batch size
        p, _, _ = _onnx_outputs(session, x[:n].float() / 255)
        assert (p - probs[:n]).abs().max() < TOLERANCE
    (inp,) = session.get_inputs()
    assert inp.name == "images" and inp.type == "tensor(float)" and inp.shape[1:] == [3, 32, 32]
    assert isinstance(inp.shape[0], str)  # dynamic
    meta = json.loads(session.get_modelmeta().custom_metadata_map["catdog"])
    assert meta["classes"] == ["cat", "dog"] and meta["image_size"] == 32 and meta["resize_size"] == 37
    assert meta["crop_pct"] == 0.875 and meta["interpolation"] == "bilinear"
    assert meta["temperature"] == pytest.approx(model.temperature)


def test_torchscript_file_matches_the_checkpoint_for_uint8_and_float(trained):
    ckpt, data, files = trained
    model = load_classifier(ckpt)
    x = _images(data, model.hparams.image_size)
    probs, logits = _expected(model, x)
    extra = {"catdog.json": ""}
    with quiet_jit():  # torch's per-call notice; catdog labels TorchScript deprecated itself (test below)
        module = torch.jit.load(str(files["torchscript"]), _extra_files=extra)
    with torch.no_grad():
        for inp in (x, x.float() / 255, x[:1]):
            assert (module(inp) - probs[: len(inp)]).abs().max() < TOLERANCE
            _assert_logits_close(module.logits(inp), logits[: len(inp)])
    meta = json.loads(extra["catdog.json"])
    assert meta["classes"] == ["cat", "dog"] and meta["temperature"] == pytest.approx(model.temperature)


def _submission(path) -> dict[str, float]:
    with open(path) as f:
        rows = list(csv.reader(f))[1:]
    return {r[0]: float(r[1]) for r in rows}


# Calibrated without TTA; raw probabilities (whose logits are not flattened by the tiny model's large temperature)
# with TTA.
PREDICT_SETTINGS = ([], ["tta=2", "calibrate=false"])


def _predict(source, data, out, *extra) -> dict[str, float]:
    args = [f"ckpt={source}", f"input={data / 'test'}", "num_workers=0", "device=cpu", "precision=32", *extra]
    return _submission(predict(compose_predict(args, output_dir=out)))


@pytest.fixture(scope="module")
def checkpoint_submissions(trained, tmp_path_factory):
    ckpt, data, _ = trained
    root = tmp_path_factory.mktemp("ckpt_predictions")
    return [_predict(ckpt, data, root / str(i), *extra) for i, extra in enumerate(PREDICT_SETTINGS)]


@pytest.mark.parametrize("fmt", [pytest.param("onnx", marks=extra_marks("export", *ONNX_PACKAGES)), "torchscript"])
def test_predict_py_with_the_exported_file_gives_the_checkpoints_submission(
    trained, checkpoint_submissions, tmp_path, fmt
):
    _, data, files = trained
    for i, extra in enumerate(PREDICT_SETTINGS):
        expected, got = checkpoint_submissions[i], _predict(files[fmt], data, tmp_path / str(i), *extra)
        assert expected.keys() == got.keys()
        assert max(abs(expected[k] - got[k]) for k in expected) < TOLERANCE, extra


def test_exported_classifier_has_the_checkpoints_interface(trained):
    ckpt, data, files = trained
    model = load_classifier(ckpt)
    exported = load_classifier(files["torchscript"])
    assert isinstance(exported, ExportedClassifier)
    assert exported.classes == model.classes and exported.temperature == pytest.approx(model.temperature)
    for key in ("image_size", "crop_pct", "interpolation"):
        assert exported.hparams[key] == model.hparams[key]
    x = _images(data, 32)
    with torch.no_grad():
        for tta in (0, 3):
            torch.testing.assert_close(
                exported.to("cpu").eval().predict_proba(x, tta, 1.3), model.predict_proba(x, tta, 1.3), atol=1e-5,
                rtol=0,
            )  # fmt: skip


def test_torchscript_is_labelled_deprecated_where_written_and_read(trained, tmp_path, caplog):
    ckpt, _, _ = trained
    with caplog.at_level(logging.WARNING, logger="catdog"):
        path = _export(ckpt, tmp_path / "m.pt", "format=torchscript", "verify=false")
        assert f"format=torchscript: {TORCHSCRIPT_DEPRECATED}" in caplog.text
        load_classifier(path)
    assert f"{path}: {TORCHSCRIPT_DEPRECATED}" in caplog.text
    assert "format=onnx, the default" in TORCHSCRIPT_DEPRECATED and "deprecated by torch" in TORCHSCRIPT_DEPRECATED


def test_predict_with_an_exported_file_needs_input(trained, tmp_path):
    _, _, files = trained
    cfg = compose_predict([f"ckpt={files['torchscript']}", "num_workers=0", "device=cpu"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"input= \(or data\.dir=\) is required: .*model\.pt does not say"):
        predict(cfg)
    # a CSV's image paths are read under data.dir, which an exported file cannot supply: the error names both
    listed = tmp_path / "images.csv"
    listed.write_text("image\ntest/1.jpg\n")
    cfg = compose_predict([f"ckpt={files['torchscript']}", f"input={listed}", "num_workers=0"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"data\.dir= is required: the image paths in input=.*images\.csv are read"):
        predict(cfg)


@needs_onnx
def test_resnet18_exports_to_onnx_with_a_fixed_batch(tmp_path):
    data = make_flat(tmp_path / "data", per_class=2, test=3)
    arch = ["model.arch=resnet18", "model.width=1.0", "model.head=native", "+trainer.limit_train_batches=1"]
    train(tiny_train_cfg(data, tmp_path / "run", *arch))
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    path = _export(ckpt, tmp_path / "resnet18.onnx", "batch=2")
    model = load_classifier(ckpt)
    x = _images(data, 32)
    probs, logits = _expected(model, x)
    got_probs, got_logits, session = _onnx_outputs(path, x[:2].float() / 255)
    assert session.get_inputs()[0].shape == [2, 3, 32, 32]
    assert (got_probs - probs[:2]).abs().max() < TOLERANCE
    _assert_logits_close(got_logits, logits[:2])
    exported = load_exported(path)
    assert exported.batch == 2
    _assert_logits_close(exported.logits(x), logits)  # 3 images: a batch of 2, then 1 padded to 2


def test_bad_settings_are_one_line_errors_naming_the_key(trained, tmp_path):
    ckpt, _, files = trained
    with pytest.raises(ConfigError, match=r"format must be one of \['onnx', 'torchscript', 'hub'\], got 'tflite'"):
        _export(ckpt, tmp_path / "m.onnx", "format=tflite")
    # torchscript: format=onnx checks its packages first (catdog.validation.check_export_config), before the ckpt
    with pytest.raises(CheckpointError, match=r"ckpt=.*missing\.ckpt: no such file"):
        _export(tmp_path / "missing.ckpt", tmp_path / "m.pt", "format=torchscript")
    with pytest.raises(ConfigError, match=r"output=.*m\.onnx: a format=torchscript file must end with \.pt"):
        _export(ckpt, tmp_path / "m.onnx", "format=torchscript")
    with pytest.raises(ConfigError, match=r"batch= applies to format=onnx only"):
        _export(ckpt, tmp_path / "m.pt", "format=torchscript", "batch=4")
    with pytest.raises(ConfigError, match=r"batch must be null \(any batch size\) or a positive integer, got 0"):
        _export(ckpt, tmp_path / "m.onnx", "batch=0")
    with pytest.raises(ConfigError, match=r"opset= applies to format=onnx only"):
        _export(ckpt, tmp_path / "m.pt", "format=torchscript", "opset=18")
    with pytest.raises(ConfigError, match=r"already an exported model"):
        _export(files["torchscript"], tmp_path / "m2.pt", "format=torchscript")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "missing, verify, named",
    [
        (["onnx"], "true", "onnx"),
        (["onnxruntime"], "true", "onnxruntime"),  # to verify the file
        (ONNX_PACKAGES, "true", "onnx and onnxscript and onnxruntime"),
        (ONNX_PACKAGES, "false", "onnx and onnxscript"),
    ],
)
def test_format_onnx_names_every_missing_export_package(trained, tmp_path, monkeypatch, missing, verify, named):
    """Whichever export packages this environment has: find_spec reports ``missing`` absent and the others present."""
    import importlib.machinery
    import importlib.util

    ckpt, _, _ = trained
    find_spec = importlib.util.find_spec

    def fake_find_spec(name, *args):
        if name in ONNX_PACKAGES:
            return None if name in missing else importlib.machinery.ModuleSpec(name, None)
        return find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec)
    message = f'format=onnx needs {named}, not installed: pip install -e ".[export]"'
    with pytest.raises(ConfigError, match=re.escape(message)):
        _export(ckpt, tmp_path / "m.onnx", f"verify={verify}")
    assert not list(tmp_path.iterdir())


def _run_cli(monkeypatch, tmp_path, *args):
    """``python -m catdog.export ARGS`` in this process (Hydra and all), from ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["catdog.export", *args, f"hydra.run.dir={tmp_path / 'hydra'}"])
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        export_main()
    finally:  # Hydra configured logging for its run: back to pytest's
        root.handlers[:] = handlers
        root.setLevel(level)


def _one_line(capsys) -> str:
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_command_line_refuses_to_replace_a_file_and_errors_are_one_line(trained, tmp_path, monkeypatch, capsys):
    ckpt, _, _ = trained
    target = tmp_path / "cli.pt"
    target.write_bytes(b"keep me")
    args = [f"ckpt={ckpt}", "format=torchscript", "output=cli.pt"]
    with pytest.raises(SystemExit) as exit_info:
        _run_cli(monkeypatch, tmp_path, *args)
    assert exit_info.value.code == 2
    assert _one_line(capsys).endswith("cli.pt already exists; choose another output= or pass overwrite=true")
    assert target.read_bytes() == b"keep me"
    _run_cli(monkeypatch, tmp_path, *args, "overwrite=true")  # verify=true: the file is checked before writing
    assert "wrote cli.pt" in capsys.readouterr().out
    assert isinstance(load_exported(target), ExportedClassifier)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(SystemExit) as exit_info:
        _run_cli(monkeypatch, tmp_path, "ckpt=missing.ckpt", "format=tflite")
    assert exit_info.value.code == 2
    assert _one_line(capsys).endswith("format must be one of ['onnx', 'torchscript', 'hub'], got 'tflite'")


# ----- quantize=int8 -------------------------------------------------------------------------------------------------
def _int8(trained, output, *overrides):
    ckpt, _, _ = trained
    args = ["quantize=int8", "quantize.images=8", "quantize.num_workers=0", "quantize.batch_size=4", *overrides]
    return _export(ckpt, output, *args)


def _meta(path) -> dict:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return json.loads(session.get_modelmeta().custom_metadata_map["catdog"])


def _evaluation(source, data, out, *extra) -> dict:
    """predict.py labelled=true on the run's validation images (its split.csv): accuracy and log loss."""
    args = [f"ckpt={source}", f"data.dir={data}", "labelled=true", "num_workers=0", "device=cpu", "precision=32"]
    return predict(compose_predict([*args, *extra], output_dir=out))


@needs_onnx
def test_int8_file_holds_its_gate_and_predicts_as_the_gate_scored_it(trained, tmp_path):
    """An int8 file written through its gate: int8 operators inside, the gate's figures in its metadata, and
    predict.py reading it scores the run's validation images exactly as the gate did (the same crops through the
    same file), the checkpoint as the gate's float32 figures; the int8 file stays within the gate of them."""
    import onnx

    ckpt, data, _ = trained
    # 4 validation images: one flipped prediction is 25 points, so the accuracy limit allows one; log loss as default
    path = _int8(trained, tmp_path / "model.int8.onnx", "quantize.max_acc_drop=25")
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    meta = _meta(path)
    assert meta["precision"] == "int8" and meta["classes"] == ["cat", "dog"] and meta["image_size"] == 32
    q = meta["quantization"]
    assert q["dtype"] == "int8" and q["calibration_images"] == 8 and q["max_acc_drop"] == 25
    split = ckpt.parents[1] / "split.csv"
    val = sum(1 for line in split.read_text().splitlines()[1:] if line.endswith(",val"))
    assert q["validation_images"] == val > 0
    assert q["float32"]["accuracy"] - q["int8"]["accuracy"] <= 0.25
    assert q["int8"]["log_loss"] - q["float32"]["log_loss"] <= 0.01
    for source, key in ((path, "int8"), (ckpt, "float32")):
        scores = _evaluation(source, data, tmp_path / key, f"input={split}")
        assert scores["images"] == val
        assert scores["accuracy"] == pytest.approx(q[key]["accuracy"], abs=1e-9)
        assert scores["log_loss"] == pytest.approx(q[key]["log_loss"], abs=1e-5), key
    # predict.py on unlabelled images: the classes of the checkpoint wherever it is not close to undecided
    got, expected = _predict(path, data, tmp_path / "sub_int8"), _predict(ckpt, data, tmp_path / "sub_fp32")
    assert got.keys() == expected.keys()
    for k in expected:
        # within 0.05 of the checkpoint's P(dog), or on the same side of 0.5: the gate bounds scores, not single
        # images, and the rounding of the 14 quantized layers (13 convolutions, 1 linear) moves an undecided
        # image's probability most
        assert abs(got[k] - expected[k]) <= 0.05 or (got[k] > 0.5) == (expected[k] > 0.5), (k, got[k], expected[k])


@needs_onnx
def test_int8_file_failing_its_gate_is_not_written_and_replaces_nothing(trained, tmp_path):
    """Limits no model can meet (a negative fall, a negative rise): refused, naming the limit, whatever the scores."""
    fresh = tmp_path / "fresh.int8.onnx"
    refused = r"^int8 model refused \(accuracy fell -?\d+\.\d\d points > quantize\.max_acc_drop=-1\): on \d+ validation"
    with pytest.raises(QuantizationRefused, match=refused):
        _int8(trained, fresh, "quantize.max_acc_drop=-1", "verify=false")
    existing = tmp_path / "existing.int8.onnx"
    existing.write_bytes(b"keep me")
    refused = r"^int8 model refused \(log loss rose .* > quantize\.max_logloss_rise=-1\): .*; nothing was written$"
    with pytest.raises(QuantizationRefused, match=refused):
        _int8(trained, existing, "quantize.max_logloss_rise=-1", "overwrite=true", "verify=false")
    assert existing.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.int8.onnx"]


@needs_onnx
def test_int8_refusal_on_the_command_line_is_one_line_with_both_figures(trained, tmp_path, monkeypatch, capsys):
    ckpt, _, _ = trained
    args = [f"ckpt={ckpt}", "output=m.int8.onnx", "quantize=int8", "quantize.images=4", "quantize.num_workers=0"]
    with pytest.raises(SystemExit) as exit_info:
        _run_cli(monkeypatch, tmp_path, *args, "quantize.max_logloss_rise=-1")
    assert exit_info.value.code == 2
    (line,) = [line for line in capsys.readouterr().out.splitlines() if "[ERROR]" in line]
    assert "int8 model refused (log loss rose" in line and line.endswith("nothing was written")
    assert re.search(r"accuracy \d+\.\d\d% \(float32\) -> \d+\.\d\d% \(int8\), log loss \d\.\d{4} -> \d\.\d{4}", line)
    assert not (tmp_path / "m.int8.onnx").exists()


def test_int8_needs_onnx_and_a_run_folder(trained, tmp_path):
    ckpt, _, _ = trained
    with pytest.raises(ConfigError, match=r"quantize=int8 applies to format=onnx only"):
        _export(ckpt, tmp_path / "m.pt", "format=torchscript", "quantize=int8")
    lone = tmp_path / "lone.ckpt"
    lone.write_bytes(ckpt.read_bytes())
    if all(installed(m) for m in ONNX_PACKAGES):
        with pytest.raises(ConfigError, match=r"ckpt=.*lone\.ckpt is not in a run folder"):
            _export(lone, tmp_path / "m.int8.onnx", "quantize=int8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lone.ckpt"]
