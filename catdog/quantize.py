"""int8 ONNX files: ``python export.py ckpt=RUN format=onnx quantize=int8`` (conf/export.yaml, conf/quantize/).

ONNX Runtime's static quantization (``onnxruntime.quantization.quantize_static``) of the float32 file
:mod:`catdog.exporting` builds: QDQ format (quantize / dequantize nodes around each quantized operator, which ONNX
Runtime fuses into int8 kernels), int8 weights per output channel, int8 activations whose ranges come from a
calibration pass (MinMax) over ``quantize.images`` images of the run's own training split. The node that writes the
``logits`` output stays in float32, so the logits (and the probabilities, computed from them) are not rounded to
int8 steps. The graph is first prepared by ``quant_pre_process`` (shape inference; BatchNorm folded into the
convolutions), as ONNX Runtime recommends.

Before anything is written, the int8 model is scored against the float32 checkpoint on the run's validation images
(``split.csv``'s ``val`` rows, or the fold's images for a k-fold fold), both from the same uint8 crops (decoded as
``predict.py`` decodes them, with the checkpoint's resize, crop and interpolation: the file's contract, see
:mod:`catdog.exported`) and both with the checkpoint's temperature. :func:`quantization_gate` refuses the file when
accuracy falls by more than ``quantize.max_acc_drop`` points or log loss rises by more than
``quantize.max_logloss_rise``; the figures go into the file's metadata (``quantization``).

The images are those the run's ``split.csv`` lists, under the dataset root the checkpoint was trained on
(``quantize.data_dir`` replaces it), read as ``predict.py input=RUN/split.csv labelled=true`` reads them.
"""

from __future__ import annotations

import json
import logging
import math
import random
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from catdog.data.datamodule import default_num_workers
from catdog.data.decode import EvalGeometry, fast_loader
from catdog.data.hf_data import data_root
from catdog.data.layouts import LabelledImages
from catdog.errors import CatdogError, ConfigError, check_known_keys
from catdog.exported import INPUT_NAME, METADATA_KEY, OUTPUT_NAMES, onnx_session
from catdog.metrics import accuracy, log_loss
from catdog.models.calibration import calibrated_probs
from catdog.runs.layout import SPLIT_NAME, read_split, trained_images
from catdog.runs.resume import checkpoint_run

log = logging.getLogger(__name__)

DTYPES = ("int8",)
#: The keys of ``quantize`` in conf/export.yaml.
KEYS = ("dtype", "images", "max_acc_drop", "max_logloss_rise", "data_dir", "num_workers", "batch_size")
#: Compute operators whose output may be the logits: the last one before the ``logits`` output stays float32.
_COMPUTE_OPS = ("Gemm", "MatMul", "Conv", "Add")
METHOD = (
    "onnxruntime.quantization.quantize_static: QDQ, int8 weights per channel, int8 activations, MinMax calibration; "
    "the node writing the logits in float32"
)


class QuantizationRefused(CatdogError):
    """The int8 model lost more accuracy or log loss than ``quantize.max_acc_drop`` / ``max_logloss_rise`` allow."""


# ----- configuration -----------------------------------------------------------------------------------------------
def _number(value: Any, key: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{key} must be a number ({what}), got {value!r}")
    return float(value)


def _positive_int(value: Any, key: str, what: str, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = "a non-negative" if allow_zero else "a positive"
        raise ConfigError(f"{key} must be {kind} integer ({what}), got {value!r}")
    return value


def check_quantize_config(quantize: Mapping | None, fmt: str) -> str | None:
    """Check ``export.py``'s ``quantize`` block (see conf/export.yaml); the dtype asked for, or None."""
    check_known_keys(quantize, KEYS, "quantize")
    q = dict(quantize or {})
    dtype = q.get("dtype")
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"quantize.dtype must be null (no quantization) or one of {list(DTYPES)}, got {dtype!r}")
    _positive_int(q.get("images", 256), "quantize.images", "training images to calibrate on")
    _number(q.get("max_acc_drop", 0.5), "quantize.max_acc_drop", "accuracy points the int8 model may lose")
    _number(q.get("max_logloss_rise", 0.01), "quantize.max_logloss_rise", "log loss the int8 model may add")
    data_dir = q.get("data_dir")
    if data_dir is not None and (not isinstance(data_dir, str) or not data_dir):
        raise ConfigError(f"quantize.data_dir must be null (the checkpoint's dataset) or a folder, got {data_dir!r}")
    if q.get("num_workers") is not None:
        _positive_int(q["num_workers"], "quantize.num_workers", "DataLoader workers decoding images", allow_zero=True)
    _positive_int(q.get("batch_size", 32), "quantize.batch_size", "images per calibration and scoring batch")
    if dtype is not None and fmt != "onnx":
        raise ConfigError(
            f"quantize={dtype} applies to format=onnx only (ONNX Runtime's static quantization), got format={fmt}"
        )
    return dtype


# ----- the gate ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scores:
    """Accuracy (a fraction) and log loss of one model on the same images."""

    accuracy: float
    log_loss: float


@dataclass(frozen=True)
class Gate:
    """What :func:`quantization_gate` decided: ``passed``, a one-line ``message`` and the ``record`` for the file."""

    passed: bool
    message: str
    record: dict[str, Any]


def quantization_gate(fp32: Scores, int8: Scores, images: int, max_acc_drop: float, max_logloss_rise: float) -> Gate:
    """Accept the int8 model unless its accuracy is more than ``max_acc_drop`` points (of 100) below the float32
    model's, or its log loss more than ``max_logloss_rise`` above it, both measured on the same ``images`` images."""
    drop = (fp32.accuracy - int8.accuracy) * 100.0
    rise = int8.log_loss - fp32.log_loss
    # 1e-9: accuracies are fractions k / n, whose difference times 100 can land a rounding error above the limit
    failed = []
    if drop > max_acc_drop + 1e-9:
        failed.append(f"accuracy fell {drop:.2f} points > quantize.max_acc_drop={max_acc_drop:g}")
    if rise > max_logloss_rise + 1e-12:
        failed.append(f"log loss rose {rise:.4f} > quantize.max_logloss_rise={max_logloss_rise:g}")
    figures = (
        f"on {images} validation images accuracy {fp32.accuracy:.2%} (float32) -> {int8.accuracy:.2%} (int8), "
        f"log loss {fp32.log_loss:.4f} -> {int8.log_loss:.4f}"
    )
    if failed:
        message = f"int8 model refused ({'; '.join(failed)}): {figures}; nothing was written"
    else:
        message = (
            f"int8 model accepted: {figures} (accuracy {-drop:+.2f} points, at most -{max_acc_drop:g}; log loss "
            f"{rise:+.4f}, at most +{max_logloss_rise:g})"
        )
    record = {
        "validation_images": int(images),
        "float32": {"accuracy": fp32.accuracy, "log_loss": fp32.log_loss},
        "int8": {"accuracy": int8.accuracy, "log_loss": int8.log_loss},
        "accuracy_drop_points": drop,
        "log_loss_rise": rise,
        "max_acc_drop": float(max_acc_drop),
        "max_logloss_rise": float(max_logloss_rise),
    }
    return Gate(not failed, message, record)


# ----- the run's images --------------------------------------------------------------------------------------------
def calibration_sample(paths: Sequence[str], n: int, seed: int = 0) -> list[str]:
    """``n`` of ``paths`` drawn without replacement by ``seed`` (all of them, sorted, when there are no more)."""
    ordered = sorted(paths)
    if n >= len(ordered):
        return ordered
    return random.Random(seed).sample(ordered, n)


def run_images(ckpt: Path, data_dir: str | None, classes: Sequence[str]) -> tuple[list[str], LabelledImages]:
    """(every training image, the validation images) of the run ``ckpt`` belongs to, from its ``split.csv``, whose
    paths are relative to ``data_dir`` (the dataset root the run was trained on)."""
    run = checkpoint_run(ckpt)
    if run is None:
        raise ConfigError(
            f"quantize=int8 calibrates on the run's training images and scores on its validation images, from the "
            f"run's {SPLIT_NAME}: ckpt={ckpt} is not in a run folder (RUN/checkpoints/*.ckpt beside RUN/{SPLIT_NAME})"
        )
    if not data_dir:
        raise ConfigError(
            f"quantize.data_dir= is required: {ckpt} does not say which dataset it was trained on (its images are "
            f"listed relative to it in {run / SPLIT_NAME})"
        )
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise ConfigError(
            f"the dataset {root} of {ckpt} is not a folder here: pass quantize.data_dir=DATA (the folder the run "
            "was trained on)"
        )
    train = [str(root / p) for p in trained_images(run)]
    if not train:
        raise ConfigError(f"{run / SPLIT_NAME} lists no training images to calibrate on")
    return train, read_split(run / SPLIT_NAME, root, classes)


def image_batches(
    paths: Sequence[str], geometry: EvalGeometry, batch_size: int, workers: int, on_bad_image: str = "error"
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 crops (B, 3, S, S), their positions in ``paths``) as ``predict.py`` decodes them on the CPU."""
    for x, _, idx in fast_loader(paths, geometry, batch_size, "cpu", workers, on_bad_image):
        if len(idx):
            yield x, idx


def padded(x: torch.Tensor, batch: int | None) -> torch.Tensor:
    """``x`` repeated to ``batch`` rows (a file exported with a fixed batch size); unchanged without one."""
    if batch is None or len(x) == batch:
        return x
    reps = -(-batch // len(x))
    return x.repeat(reps, *([1] * (x.ndim - 1)))[:batch]


def as_input(x: torch.Tensor) -> np.ndarray:
    """uint8 crops -> the file's input: float32 in [0, 1]."""
    return x.float().div_(255.0).contiguous().numpy()


class CalibrationImages:
    """An ONNX Runtime ``CalibrationDataReader`` (which it recognises by ``get_next``) over uint8 batches: each
    ``get_next()`` gives the next batch as the file's input, None at the end."""

    def __init__(self, batches: Iterator[torch.Tensor], batch: int | None = None):
        self._batches = iter(batches)
        self.batch = batch
        self.images = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._batches, None)
        if x is None:
            return None
        self.images += len(x)
        return {INPUT_NAME: as_input(padded(x, self.batch))}


# ----- quantizing --------------------------------------------------------------------------------------------------
def logits_nodes(model) -> list[str]:
    """The names of the nodes from the last compute operator to the ``logits`` output (an ONNX ``ModelProto``)."""
    producer = {out: node for node in model.graph.node for out in node.output}
    names, tensor = [], OUTPUT_NAMES[1]
    while tensor in producer:
        node = producer[tensor]
        names.append(node.name)
        if node.op_type in _COMPUTE_OPS or not node.input:
            break
        tensor = node.input[0]
    return names


def quantize_onnx(fp32: bytes, reader: CalibrationImages, workdir: Path) -> bytes:
    """The int8 QDQ model of the serialized float32 model ``fp32``, calibrated on ``reader``'s images."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source, prepared, output = workdir / "fp32.onnx", workdir / "prepared.onnx", workdir / "int8.onnx"
    source.write_bytes(fp32)
    try:
        quant_pre_process(str(source), str(prepared))
    except Exception as exc:  # noqa: BLE001 - shape inference and the optimizer raise many kinds of errors
        log.warning("quant_pre_process failed (%s): quantizing the model as exported", str(exc).splitlines()[0])
        prepared = source
    model = onnx.load(str(prepared))
    quantize_static(
        model, str(output), reader, quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=logits_nodes(model),
    )  # fmt: skip
    if not reader.images:
        raise ConfigError("quantize=int8: no calibration image could be read")
    return output.read_bytes()


def read_metadata(data: bytes) -> dict[str, Any]:
    """The catdog metadata of the serialized ONNX model ``data``."""
    import onnx

    proto = onnx.load_from_string(data)
    return json.loads(next(p.value for p in proto.metadata_props if p.key == METADATA_KEY))


def with_metadata(data: bytes, metadata: dict[str, Any]) -> bytes:
    """The serialized ONNX model ``data`` with ``metadata`` as its catdog ``metadata_props`` entry (replacing any)."""
    import onnx

    proto = onnx.load_from_string(data)
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    for key, value in [*kept, (METADATA_KEY, json.dumps(metadata))]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


@torch.no_grad()
def score_both(
    model, session, images: LabelledImages, geometry: EvalGeometry, batch_size: int, workers: int, batch: int | None
) -> tuple[Scores, Scores]:
    """(float32 checkpoint, int8 file) scores on ``images``, both from the same uint8 crops and both with the
    checkpoint's temperature, as ``predict.py`` applies it."""
    n = len(images)
    fp32_logits = torch.empty(n, len(images.classes), dtype=torch.float64)
    int8_logits = torch.empty_like(fp32_logits)
    for x, idx in image_batches(images.paths, geometry, batch_size, workers):
        fp32_logits[idx] = model(x).double()
        (out,) = session.run([OUTPUT_NAMES[1]], {INPUT_NAME: as_input(padded(x, batch))})
        int8_logits[idx] = torch.from_numpy(out[: len(x)]).double()
    targets = torch.tensor(images.labels)

    def scores(logits: torch.Tensor) -> Scores:
        probs = calibrated_probs(logits, model.temperature)
        return Scores(accuracy(probs, targets), log_loss(probs, targets))

    return scores(fp32_logits), scores(int8_logits)


@dataclass(frozen=True)
class Plan:
    """What :func:`int8_model` calibrates on and scores with, settled before any export work."""

    calibration: list[str]
    validation: LabelledImages
    training_images: int
    geometry: EvalGeometry
    batch_size: int
    workers: int
    max_acc_drop: float
    max_logloss_rise: float


def plan(model, ckpt: Path, settings: Mapping, batch: int | None = None) -> Plan:
    """The images and settings of ``quantize=int8`` for ``model`` (loaded from ``ckpt``): ``settings`` is export.py's
    ``quantize`` block, ``batch`` the file's fixed batch size (None: any). Raises a :class:`ConfigError` when the
    checkpoint is not in a run folder or its dataset is not here."""
    hp = model.hparams
    data_dir = settings.get("data_dir") or data_root(getattr(model, "datamodule_hparams", None) or {})
    train, val = run_images(ckpt, data_dir, model.classes)
    workers = settings.get("num_workers")
    return Plan(
        calibration=calibration_sample(train, int(settings.get("images", 256))),
        validation=val,
        training_images=len(train),
        geometry=EvalGeometry(int(hp.image_size), float(hp.crop_pct), False, str(hp.interpolation)),
        batch_size=int(batch or settings.get("batch_size") or 32),
        workers=default_num_workers() if workers is None else int(workers),
        max_acc_drop=float(settings.get("max_acc_drop", 0.5)),
        max_logloss_rise=float(settings.get("max_logloss_rise", 0.01)),
    )


def int8_model(model, fp32: bytes, plan: Plan) -> bytes:
    """The int8 file of ``model`` (``fp32``: its float32 ONNX file) if it passes :func:`quantization_gate`, with the
    float32 file's metadata and the gate's record; raises :class:`QuantizationRefused` otherwise."""
    import onnxruntime

    metadata = read_metadata(fp32)
    batch = metadata.get("batch")
    log.info(
        "quantize=int8: calibrating on %d of the run's %d training images, scoring on its %d validation images",
        len(plan.calibration), plan.training_images, len(plan.validation),
    )  # fmt: skip
    batches = image_batches(plan.calibration, plan.geometry, plan.batch_size, plan.workers, on_bad_image="skip")
    reader = CalibrationImages((x for x, _ in batches), batch)
    with tempfile.TemporaryDirectory(prefix="catdog-quantize-") as tmp:
        data = quantize_onnx(fp32, reader, Path(tmp))
    session = onnx_session(data)
    fp32_scores, int8_scores = score_both(
        model, session, plan.validation, plan.geometry, plan.batch_size, plan.workers, batch
    )
    gate = quantization_gate(fp32_scores, int8_scores, len(plan.validation), plan.max_acc_drop, plan.max_logloss_rise)
    if not gate.passed:
        raise QuantizationRefused(gate.message)
    log.info("%s", gate.message)
    record = {
        "dtype": "int8", "method": METHOD, "calibration_images": reader.images,
        "calibrated_on": f"the run's training images ({SPLIT_NAME})",
        "scored_on": f"the run's validation images ({SPLIT_NAME})", **gate.record,
        "onnxruntime": onnxruntime.__version__,
    }  # fmt: skip
    return with_metadata(data, {**metadata, "precision": "int8", "quantization": record})


def int8_path(ckpt: Path) -> Path:
    """The default output of ``quantize=int8``: the checkpoint's name with ``.int8.onnx``, e.g. ``best.int8.onnx``."""
    return ckpt.with_suffix(".int8.onnx")
