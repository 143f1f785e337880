"""Export a checkpoint to a self-contained model file: ``python export.py ckpt=CKPT format=onnx|torchscript
output=PATH`` (see conf/export.yaml).

The file holds the normalization, the network and the softmax with the checkpoint's fitted temperature; it takes
``(N, 3, S, S)`` images, float32 in [0, 1] (TorchScript: also uint8), and returns calibrated ``probabilities`` and
raw ``logits``. Its metadata says how to resize and crop image files for it. The contract is described in
:mod:`catdog.exported`, which also loads such files for ``predict.py``.

- ONNX: ``torch.onnx.export(dynamo=True)`` (the torch.export-based exporter, default since torch 2.9; it needs
  ``onnxscript``), the batch dimension dynamic unless ``batch=N``, the metadata in ``metadata_props``.
- TorchScript (deprecated by torch: ``torch.jit`` warns since torch 2.14; kept for existing users, logged as such):
  the network traced (``torch.jit.trace``) inside a scripted module (``torch.jit.script``) that keeps the uint8 / float
  branch and has a ``logits`` method; the metadata in the extra file ``catdog.json``.

``format=hub`` writes a Hugging Face Hub model folder instead (:mod:`catdog.hub`).

Before anything is written, the exported model is run on random images and its probabilities compared with the
checkpoint's (``verify=true``); with ``quantize=int8`` the ONNX file is then quantized and scored against the
checkpoint on the run's validation images (:mod:`catdog.quantize`), and refused when it loses too much. The file is
written atomically, and an existing file is only replaced with ``overwrite=true``.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from catdog.data.transforms import eval_resize_size, normalize
from catdog.errors import CheckpointError, ConfigError
from catdog.exported import (
    FORMAT_VERSION,
    INPUT_NAME,
    METADATA_KEY,
    OUTPUT_NAMES,
    SUFFIXES,
    TORCHSCRIPT_DEPRECATED,
    TORCHSCRIPT_EXTRA,
    exported_format,
    onnx_session,
    quiet_jit,
)
from catdog.fileio import atomic_open, check_writable
from catdog.hub import check_output_folder, check_push, is_hub_folder, push_folder, write_hub_folder
from catdog.inference import load_classifier
from catdog.models.optim import plain
from catdog.quantize import int8_model, int8_path, plan
from catdog.runs.selection import resolve_members
from catdog.validation import check_export_config

log = logging.getLogger(__name__)

#: Largest difference of probabilities between the exported file and the checkpoint that ``verify`` accepts.
VERIFY_TOLERANCE = 1e-4
VERIFY_IMAGES = 3


class ExportModule(nn.Module):
    """``net`` with the normalization in front and the softmax (divided by ``temperature``) after.

    ``forward`` returns probabilities, ``logits`` the raw logits; both take float images in [0, 1] or uint8 in
    [0, 255], as ``ClassifierModule.forward`` does, with the same operations."""

    def __init__(self, net: nn.Module, mean: torch.Tensor, std: torch.Tensor, temperature: float, channels_last: bool):
        super().__init__()
        self.net = net
        self.register_buffer("mean", mean.detach().clone().float().view(1, -1, 1, 1))
        self.register_buffer("std", std.detach().clone().float().view(1, -1, 1, 1))
        self.temperature = float(temperature)
        self.channels_last = bool(channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.logits(x) / self.temperature, dim=1)

    @torch.jit.export
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = normalize(x, self.mean, self.std)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x).float()


class _BothOutputs(nn.Module):
    """The ONNX graph: (probabilities, logits)."""

    def __init__(self, module: ExportModule):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.module.logits(x)
        return F.softmax(logits / self.module.temperature, dim=1), logits


def export_module(model, net: nn.Module | None = None) -> ExportModule:
    """The :class:`ExportModule` of a ``ClassifierModule`` (``net``: its network, or a traced copy of it)."""
    return ExportModule(
        model.net if net is None else net,
        model.mean,
        model.std,
        model.temperature or 1.0,
        model.hparams.channels_last,
    ).eval()


def export_metadata(model, fmt: str, batch: int | None, source: str) -> dict[str, Any]:
    """The JSON metadata stored in the file: what predicting with it needs, and its input / output contract."""
    hp = model.hparams
    size = int(hp.image_size)
    return {
        "format_version": FORMAT_VERSION,
        "format": fmt,
        "classes": list(hp.classes),
        "image_size": size,
        "crop_pct": float(hp.crop_pct),
        "resize_size": eval_resize_size(size, float(hp.crop_pct)),
        "interpolation": str(hp.interpolation),
        "mean": list(hp.mean),
        "std": list(hp.std),
        "temperature": model.temperature,
        "arch": hp.arch,
        "batch": batch,
        "input": {
            "name": INPUT_NAME,
            "shape": [batch or "N", 3, size, size],
            "dtype": "float32 in [0, 1]" if fmt == "onnx" else "float32 in [0, 1] or uint8 in [0, 255]",
            "layout": "NCHW, RGB, resized (shorter side to resize_size) and centre-cropped to image_size",
        },
        "outputs": {
            OUTPUT_NAMES[0]: "(N, K) softmax(logits / temperature) (temperature 1 when null), columns in classes order",
            OUTPUT_NAMES[1]: "(N, K) logits, before the temperature",
        },
        "precision": "float32",  # int8 for a quantize=int8 file (catdog.quantize adds its record)
        "opset": None,  # ONNX: the opset written (set by onnx_bytes)
        "source_checkpoint": source,
        "torch": torch.__version__,
    }


def _random_images(model, n: int) -> torch.Tensor:
    size = int(model.hparams.image_size)
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)


@torch.no_grad()
def _reference(model, images: torch.Tensor) -> torch.Tensor:
    """The checkpoint's calibrated probabilities, as predict.py computes them."""
    return model.predict_proba(images, 0, model.temperature).float()


def _check_close(what: str, got, expected: torch.Tensor) -> float:
    diff = float((torch.as_tensor(got).float() - expected).abs().max())
    if not diff <= VERIFY_TOLERANCE:
        raise CheckpointError(
            f"the exported model differs from the checkpoint on random images ({what}: largest difference of "
            f"probabilities {diff:.3g} > {VERIFY_TOLERANCE}); nothing was written (verify=false writes it anyway)"
        )
    return diff


def onnx_bytes(model, metadata: dict[str, Any], opset: int | None = None, batch: int | None = None) -> bytes:
    """The serialized ONNX model with ``metadata`` in its ``metadata_props``."""
    size = int(model.hparams.image_size)
    graph = _BothOutputs(export_module(model)).eval()
    example = torch.rand(batch or 2, 3, size, size, generator=torch.Generator().manual_seed(0))
    dynamic = None if batch else ({0: torch.export.Dim("batch")},)
    for name in ("onnxscript", "onnx_ir"):  # their graph-rewriting steps, at INFO under Hydra's logging
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        program = torch.onnx.export(
            graph, (example,), dynamo=True, verbose=False, opset_version=opset, input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES), dynamic_shapes=dynamic,
        )  # fmt: skip
        proto = program.model_proto
    except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds of errors
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(
            f"torch.onnx.export failed for {model.hparams.arch}: {type(exc).__name__}: {message} "
            "(format=torchscript may work)"
        ) from exc
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and written != opset:
        raise CheckpointError(
            f"opset={opset}: torch.onnx.export wrote opset {written} (its exporter starts at opset 18 and could not "
            f"convert the model down); pass opset={written} or higher, or leave opset out"
        )
    metadata = {**metadata, "opset": written}
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    classes = ", ".join(metadata["classes"])
    proto.doc_string = f"catdog classifier ({classes}); metadata: metadata_props[{METADATA_KEY}] (JSON)"
    try:
        return proto.SerializeToString()
    except ValueError as exc:  # protobuf's 2 GB limit
        raise CheckpointError(f"{model.hparams.arch} is too large for a single ONNX file: {exc}") from None


def verify_onnx(model, data: bytes, batch: int | None) -> float:
    session = onnx_session(data)
    images = _random_images(model, batch or VERIFY_IMAGES)
    probs, _ = session.run(list(OUTPUT_NAMES), {INPUT_NAME: images.float().div(255.0).numpy()})
    return _check_close("float32 input", probs, _reference(model, images))


def torchscript_bytes(model, metadata: dict[str, Any]) -> bytes:
    """The saved TorchScript module with ``metadata`` as its extra file ``catdog.json``."""
    size = int(model.hparams.image_size)
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    example = normalize(example, model.mean, model.std)
    if model.hparams.channels_last:
        example = example.contiguous(memory_format=torch.channels_last)
    buffer = io.BytesIO()
    try:
        with torch.no_grad(), quiet_jit():
            traced = torch.jit.trace(model.net, example, check_trace=False)
            scripted = torch.jit.script(export_module(model, traced))
            torch.jit.save(scripted, buffer, _extra_files={TORCHSCRIPT_EXTRA: json.dumps(metadata)})
    except Exception as exc:  # noqa: BLE001 - tracing and scripting raise many kinds of errors
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(
            f"TorchScript export failed for {model.hparams.arch}: {type(exc).__name__}: {message}"
        ) from exc
    return buffer.getvalue()


def verify_torchscript(model, data: bytes) -> float:
    with quiet_jit():
        module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    images = _random_images(model, VERIFY_IMAGES)
    expected = _reference(model, images)
    with torch.no_grad():
        diff = _check_close("uint8 input", module(images), expected)
        return max(diff, _check_close("float32 input", module(images.float().div(255.0)), expected))


def output_path(output: Any, fmt: str, ckpt: Path, quantize: str | None = None) -> Path:
    """``output=``, by default the checkpoint's name with the format's suffix beside it (``best.onnx``; with
    ``quantize=int8`` ``best.int8.onnx``)."""
    default = int8_path(ckpt) if quantize else ckpt.with_suffix(SUFFIXES[fmt][0])
    path = Path(str(output)).expanduser() if output else default
    if path.suffix.lower() not in SUFFIXES[fmt]:
        raise ConfigError(
            f"output={path}: a format={fmt} file must end with {' or '.join(SUFFIXES[fmt])} "
            "(predict.py recognises it by that)"
        )
    return path


def export(cfg: DictConfig) -> Path:
    """Export the checkpoint ``cfg.ckpt`` to ``cfg.output`` (see the module docstring)."""
    check_export_config(cfg)
    fmt = cfg.get("format")
    quantize = (cfg.get("quantize") or {}).get("dtype")
    verify = bool(cfg.get("verify", True))
    members = resolve_members(cfg.ckpt, cfg.paths.log_dir)
    if len(members) != 1:
        raise ConfigError(
            f"ckpt={cfg.ckpt} names {len(members)} checkpoints (an ensemble); export takes one: pass one of "
            f"{', '.join(str(m) for m in members[:3])}{', ...' if len(members) > 3 else ''}"
        )
    ckpt = members[0]
    if exported_format(ckpt):
        raise ConfigError(f"ckpt={ckpt} is already an exported model; pass the .ckpt it came from")
    if fmt == "hub":
        return export_hub(cfg, ckpt)
    output = check_writable(output_path(cfg.get("output"), fmt, ckpt, quantize), bool(cfg.overwrite))
    model = load_classifier(ckpt)
    batch = cfg.get("batch")
    metadata = export_metadata(model, fmt, batch, str(ckpt))
    # quantize=int8: the run's images found (or the error raised) before any export work
    int8_plan = plan(model, ckpt, cfg.quantize, batch) if quantize else None
    log.info(
        "exporting %s (%s, %d px, classes %s, %s) to %s", ckpt, model.hparams.arch, model.hparams.image_size,
        model.classes, f"temperature {model.temperature:.3f}" if model.temperature else "no temperature", fmt,
    )  # fmt: skip
    if fmt == "onnx":
        data = onnx_bytes(model, metadata, cfg.get("opset"), batch)
        diff = verify_onnx(model, data, batch) if verify else None
    else:
        log.warning("format=torchscript: %s", TORCHSCRIPT_DEPRECATED)
        data = torchscript_bytes(model, metadata)
        diff = verify_torchscript(model, data) if verify else None
    if diff is not None:
        log.info("verified: largest difference of probabilities from the checkpoint on random images %.2g", diff)
    if quantize:
        # refused (QuantizationRefused) before anything is written when the int8 model loses too much
        data = int8_model(model, data, int8_plan)
    # Checked again in the same step as the file is created: another process may have written it meanwhile.
    with atomic_open(output, "wb", overwrite=bool(cfg.overwrite)) as f:
        f.write(data)
    log.info("wrote %s (%.1f MB)", output, len(data) / 1e6)
    print(f"wrote {output}")
    return output


def export_hub(cfg: DictConfig, ckpt: Path) -> Path:
    """``format=hub``: the model folder of :mod:`catdog.hub` at ``output`` (default: ``hub/`` in the run folder),
    pushed to ``hub.repo_id`` when set (the token and the Hub checked before anything is written)."""
    if is_hub_folder(ckpt):
        raise ConfigError(f"ckpt={ckpt} is already a model folder; pass the .ckpt it came from")
    hub = plain(cfg.get("hub")) or {}
    repo_id = hub.get("repo_id")
    output = Path(str(cfg.output)).expanduser() if cfg.get("output") else ckpt.parent.parent / "hub"
    check_output_folder(output, bool(cfg.overwrite))
    token = check_push(repo_id) if repo_id else None
    model = load_classifier(ckpt)
    folder = write_hub_folder(model, ckpt, output, repo_id, bool(cfg.overwrite))
    log.info("wrote %s (%s)", folder, ", ".join(sorted(p.name for p in folder.iterdir())))
    print(f"wrote {folder}")
    if repo_id:
        url = push_folder(folder, repo_id, token, bool(hub.get("private", False)))
        log.info("pushed %s to %s", folder, url)
        print(f"pushed to {url}")
    return folder
