"""Safe checkpoint loading (never unpickles code), atomic checkpoint writing, and the calibration record."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from catdog.errors import CheckpointError
from catdog.fileio import atomic_open

log = logging.getLogger(__name__)

#: Checkpoint key of the temperature-scaling record (:func:`catdog.models.calibration.calibration_record`).
CALIBRATION_KEY = "calibration"


def _safe_load(path: Path, map_location="cpu", mmap: bool = False) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refusing to load {path}: it contains pickled Python objects that could run code, and catdog only "
            f"loads tensors and plain values (weights_only=True). Detail: {str(exc).splitlines()[0]}"
        ) from None
    except Exception as exc:  # noqa: BLE001 - truncated or foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load(weights_only=True)``: tensors and plain containers only, so a crafted file cannot run code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    # Memory-mapped: reading hyperparameters or the weights does not pull the optimizer state into memory.
    ckpt = _safe_load(path, mmap=True)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise CheckpointError(f"{path} is not a catdog checkpoint (no state_dict / hyper_parameters)")
    return ckpt


def upgrade_state_dict(state: dict[str, Any]) -> dict[str, Any]:
    """Checkpoints of catdog's first, VGG-only network (``net.backbone`` = VGG's ``features``, ``net.head`` = pooling,
    flatten, then the classifier layers) renamed to the keys of the torchvision model it now wraps."""
    if not any(k.startswith("net.backbone.") for k in state):
        return state
    out = {}
    for key, value in state.items():
        if key.startswith("net.backbone."):
            key = "net.model.features." + key.removeprefix("net.backbone.")
        elif key.startswith("net.head."):
            index, rest = key.removeprefix("net.head.").split(".", 1)
            key = f"net.model.classifier.{int(index) - 2}.{rest}"
        out[key] = value
    return out


def save_calibration(path: str | os.PathLike, record: dict[str, float]) -> None:
    """Add the temperature-scaling ``record`` to the checkpoint at ``path`` (rewritten atomically)."""
    path = Path(path)
    ckpt = _safe_load(path)
    ckpt[CALIBRATION_KEY] = {k: float(v) for k, v in record.items()}
    with atomic_open(path, "wb") as f:
        torch.save(ckpt, f)


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O that writes atomically beside the target and never unpickles code on load."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        with atomic_open(path, "wb") as f:
            torch.save(checkpoint, f)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        return _safe_load(path, map_location or "cpu")
