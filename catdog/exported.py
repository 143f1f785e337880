"""Predicting with a model file written by ``export.py``: ONNX (run by ONNX Runtime) or TorchScript.

What an exported file holds, in both formats:

- input ``images``: a batch of RGB images ``(N, 3, S, S)``, ``S`` = the checkpoint's ``image_size``, already resized
  and centre-cropped (see below), as float32 in [0, 1]. The TorchScript model also takes uint8 in [0, 255] (divided
  by 255 inside); for the ONNX model divide uint8 images by 255 first. The batch size ``N`` is free unless the file
  was exported with ``batch=N``.
- the normalization by the checkpoint's mean / std, then the network, all in float32; or, in an ONNX file written with
  ``quantize=int8`` (:mod:`catdog.quantize`), the network's convolutions and matrix products in int8 between
  quantize / dequantize nodes (QDQ), still with float32 input and outputs;
- output ``probabilities`` ``(N, K)``: ``softmax(logits / T)``, ``T`` the temperature fitted after training (so
  calibrated), or plain ``softmax(logits)`` when the checkpoint has none; and output ``logits`` ``(N, K)``, before any
  temperature. The ONNX graph has both outputs; the TorchScript module returns the probabilities from ``forward`` and
  the logits from its ``logits`` method.
- metadata, a JSON object: the ONNX ``metadata_props`` entry ``catdog``, the TorchScript extra file ``catdog.json``.
  It holds ``classes`` (the order of the K columns), ``image_size``, ``crop_pct``, ``resize_size``,
  ``interpolation``, ``mean``, ``std``, ``temperature`` and ``precision`` (``float32`` or ``int8``); an int8 file
  also ``quantization``: how it was calibrated and its scores against the checkpoint's on the run's validation
  images.

The resizing stays outside the file: resize the shorter side to ``resize_size`` (= ``round(image_size /
crop_pct)``) with ``interpolation``, antialiased, then centre-crop ``image_size``, which is what ``predict.py`` does
from the metadata.

``predict.py ckpt=model.onnx`` (or a TorchScript ``.pt``) loads the file with :func:`load_exported` into an
:class:`ExportedClassifier`, which does for ``predict()`` what a checkpoint's ``ClassifierModule`` does: it takes the
file's raw ``logits`` output and applies the temperature the same way, so ``calibrate=false``, ``tta=N`` (views made
in torch and run through the file) and ensembles mixing exported files and checkpoints behave as with checkpoints.
The file runs as it was written (float32, or int8 where quantized) whatever ``precision=`` says, and
``compile=true`` does not apply to it. ONNX Runtime runs it with explicit thread settings (:func:`onnx_session`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from catdog.errors import CheckpointError, ConfigError
from catdog.models.calibration import valid_temperature
from catdog.models.tta import predict_views

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
#: What ``export.py format=`` takes: the model files above, or a Hugging Face Hub folder (catdog.hub).
EXPORT_FORMATS = (*FORMATS, "hub")
#: The ONNX ``metadata_props`` key of the JSON metadata.
METADATA_KEY = "catdog"
#: The TorchScript extra file holding the same JSON.
TORCHSCRIPT_EXTRA = "catdog.json"
FORMAT_VERSION = 1
INPUT_NAME = "images"
OUTPUT_NAMES = ("probabilities", "logits")
SUFFIXES = {"onnx": (".onnx",), "torchscript": (".pt", ".torchscript")}
INSTALL_HINT = 'pip install -e ".[export]"'
#: Metadata keys prediction needs.
REQUIRED_KEYS = ("classes", "image_size", "crop_pct", "interpolation", "temperature")


#: What catdog says, once per export or load, where TorchScript is used.
TORCHSCRIPT_DEPRECATED = (
    "TorchScript is deprecated by torch (torch.jit.* warn since torch 2.14 and may go in a future release): "
    "format=onnx, the default, is the supported model file"
)


@contextlib.contextmanager
def quiet_jit() -> Iterator[None]:
    """torch's per-call deprecation notices for ``torch.jit`` left out: catdog logs :data:`TORCHSCRIPT_DEPRECATED`
    once instead, where TorchScript is written or read."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        yield


def exported_format(path: str | os.PathLike) -> str | None:
    """``onnx`` for a ``.onnx`` file, ``torchscript`` for a TorchScript archive (whatever its suffix), else None
    (a checkpoint)."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return "onnx"
    try:
        if not (path.is_file() and zipfile.is_zipfile(path)):
            return None
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return None
    # torch.save archives hold data.pkl and tensors; TorchScript archives also hold code/ and constants.pkl.
    if any(name.endswith("/constants.pkl") or "/code/" in name for name in names):
        return "torchscript"
    return None


def parse_metadata(text: str | bytes | None, path: Path) -> dict[str, Any]:
    if not text:
        raise CheckpointError(
            f"{path} has no catdog metadata ({METADATA_KEY}): it was not written by export.py (python -m catdog.export)"
        )
    try:
        meta = json.loads(text)
    except ValueError as exc:
        raise CheckpointError(f"{path}: its catdog metadata is not valid JSON ({exc})") from None
    missing = [k for k in REQUIRED_KEYS if k not in meta] if isinstance(meta, dict) else list(REQUIRED_KEYS)
    if missing:
        raise CheckpointError(f"{path}: its catdog metadata lacks {missing}")
    if int(meta.get("format_version", 1)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was exported by a newer catdog (metadata version {meta['format_version']}); update catdog"
        )
    return meta


def onnx_threads() -> int:
    """Intra-op threads for an ONNX Runtime session: torch's (the physical cores, or ``OMP_NUM_THREADS`` /
    ``torch.set_num_threads``), so that an exported file and a checkpoint use the same cores."""
    return max(1, torch.get_num_threads())


def onnx_session(model: str | bytes, providers: list | None = None, threads: int | None = None):
    """An ONNX Runtime session for ``model`` (a path or the serialized model) with explicit thread settings:
    ``threads`` intra-op threads (default :func:`onnx_threads`), one inter-op thread and sequential execution (a
    classifier's graph is one chain of operators: nothing to run side by side), every graph optimization, and threads
    that sleep instead of spinning between operators: the DataLoader workers decoding the next images share the
    cores (on 2 cores with other processes running, 13-27 % more images/s through predict.py's loader; the same
    within noise on an idle machine: docs/benchmarks.md)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = int(threads or onnx_threads())
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return onnxruntime.InferenceSession(model, sess_options=options, providers=providers or ["CPUExecutionProvider"])


class _OnnxRunner:
    """An ONNX Runtime session on the CPU, or on the GPU when the device is CUDA and ONNX Runtime has its provider."""

    def __init__(self, path: Path):
        try:
            import onnxruntime
        except ImportError:
            raise CheckpointError(
                f"ckpt={path} is an ONNX model; predicting with it needs onnxruntime: {INSTALL_HINT}"
            ) from None
        self.ort = onnxruntime
        self.path = path
        self.providers: list | None = None
        self.session = None
        self.to(torch.device("cpu"))

    def metadata(self) -> str | None:
        return self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)

    def to(self, device: torch.device) -> None:
        providers: list = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" in self.ort.get_available_providers():
                providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
            else:
                log.warning("onnxruntime has no CUDA provider here (onnxruntime-gpu): %s runs on the CPU", self.path)
        if providers == self.providers:
            return
        try:
            self.session = onnx_session(str(self.path), providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise CheckpointError(f"cannot load ONNX model {self.path}: {str(exc).splitlines()[0]}") from None
        self.providers = providers

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (logits,) = self.session.run([OUTPUT_NAMES[1]], {INPUT_NAME: array})
        return torch.from_numpy(logits).to(x.device)


class _TorchScriptRunner:
    def __init__(self, path: Path):
        log.warning("%s: %s", path, TORCHSCRIPT_DEPRECATED)
        extra = {TORCHSCRIPT_EXTRA: ""}
        try:
            with quiet_jit():
                self.module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except Exception as exc:  # noqa: BLE001 - torch.jit.load raises RuntimeError and others on foreign files
            raise CheckpointError(f"cannot load TorchScript model {path}: {str(exc).splitlines()[0]}") from None
        self.module.eval()
        self.path = path
        self._metadata = extra[TORCHSCRIPT_EXTRA]
        if not hasattr(self.module, "logits"):
            raise CheckpointError(f"{path} is a TorchScript file without a logits method: not exported by catdog")

    def metadata(self) -> str | bytes | None:
        return self._metadata

    def to(self, device: torch.device) -> None:
        self.module.to(device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.logits(x)


class ExportedClassifier:
    """An exported model file with what :func:`catdog.prediction.predict` uses of a ``ClassifierModule``:
    ``classes``, ``hparams`` (``image_size``, ``crop_pct``, ``interpolation``, ...), ``temperature``,
    ``predict_proba(x, tta, temperature)``, ``to(device)``, ``eval()``; calling it gives the logits."""

    #: predict_loader does not torch.compile an exported file.
    exported = True

    def __init__(self, path: Path, fmt: str, runner, metadata: dict[str, Any]):
        from pytorch_lightning.utilities.parsing import AttributeDict

        self.checkpoint_path = str(path)
        self._runner = runner
        self.hparams = AttributeDict(
            classes=list(metadata["classes"]),
            image_size=int(metadata["image_size"]),
            crop_pct=float(metadata["crop_pct"]),
            interpolation=str(metadata["interpolation"]),
            mean=metadata.get("mean"),
            std=metadata.get("std"),
            arch=metadata.get("arch"),
        )
        self.temperature = valid_temperature(metadata["temperature"])
        # An exported file does not say which dataset it was trained on: predict.py needs input= (or data.dir=).
        self.datamodule_hparams: dict[str, Any] = {}
        batch = metadata.get("batch")
        self.batch: int | None = int(batch) if batch else None
        self.device = torch.device("cpu")

    @property
    def classes(self) -> list[str]:
        return list(self.hparams.classes)

    def to(self, device) -> ExportedClassifier:
        device = torch.device(device)
        if device != self.device:
            self._runner.to(device)
            self.device = device
        return self

    def eval(self) -> ExportedClassifier:
        return self

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self.batch is None:
            return self._runner(x)
        # A fixed batch size: whole batches, the last one padded with zeros.
        out = []
        for start in range(0, len(x), self.batch):
            part = x[start : start + self.batch]
            n = len(part)
            if n < self.batch:
                part = torch.cat([part, part.new_zeros((self.batch - n, *part.shape[1:]))])
            out.append(self._runner(part)[:n])
        return torch.cat(out)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Raw logits (N, K) of uint8 or [0, 1] float images (N, 3, S, S), in float32."""
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        with torch.autocast(x.device.type, enabled=False):
            return self._run(x.float()).float()

    __call__ = logits

    def predict_proba(self, x: torch.Tensor, tta: int = 0, temperature: float | None = None) -> torch.Tensor:
        """As ``ClassifierModule.predict_proba``: probabilities averaged over the plain pass and ``tta`` views, each
        view's logits divided by ``temperature`` first when it is given."""
        return predict_views(self.logits, x, tta, temperature, self.hparams.image_size)


def load_exported(path: str | os.PathLike, fmt: str | None = None) -> ExportedClassifier:
    """An :class:`ExportedClassifier` for the file at ``path`` (``fmt``: ``onnx`` | ``torchscript``, default from
    the file)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file not found: {path}")
    fmt = fmt or exported_format(path)
    if fmt not in FORMATS:
        raise CheckpointError(f"{path} is neither an ONNX nor a TorchScript model")
    runner = _OnnxRunner(path) if fmt == "onnx" else _TorchScriptRunner(path)
    metadata = parse_metadata(runner.metadata(), path)
    return ExportedClassifier(path, fmt, runner, metadata)


def check_export_args(fmt: Any, opset: Any, batch: Any) -> str:
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"format must be one of {list(EXPORT_FORMATS)}, got {fmt!r}")
    if opset is not None and (not isinstance(opset, int) or isinstance(opset, bool) or opset < 7):
        raise ConfigError(f"opset must be null (the exporter's default) or an ONNX opset number, got {opset!r}")
    if opset is not None and fmt != "onnx":
        raise ConfigError("opset= applies to format=onnx only")
    if batch is not None and (not isinstance(batch, int) or isinstance(batch, bool) or batch < 1):
        raise ConfigError(f"batch must be null (any batch size) or a positive integer, got {batch!r}")
    if batch is not None and fmt != "onnx":
        raise ConfigError("batch= applies to format=onnx only (a TorchScript model takes any batch size)")
    return fmt


def check_dependencies(fmt: str, verify: bool) -> None:
    """format=onnx needs onnx and onnxscript (the exporter), and onnxruntime to verify the file."""
    if fmt != "onnx":
        return
    needed = ["onnx", "onnxscript"] + (["onnxruntime"] if verify else [])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"format=onnx needs {' and '.join(missing)}, not installed: {INSTALL_HINT}")
