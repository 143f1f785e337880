"""What prediction runs: a model rebuilt from a catdog checkpoint (weights, preprocessing and fitted temperature
from the file alone, never a download), or a model file written by ``export.py`` (ONNX, TorchScript) that predicts
the same way."""

from __future__ import annotations

import os

from catdog.checkpoints import read_checkpoint, upgrade_state_dict
from catdog.errors import CheckpointError
from catdog.exported import exported_format, load_exported
from catdog.models.calibration import checkpoint_temperature
from catdog.models.module import ClassifierModule


def load_classifier(path: str | os.PathLike):
    """Rebuild the :class:`ClassifierModule` saved in ``path`` (no download: weights come from the checkpoint).

    A model file written by ``export.py`` (``.onnx``, TorchScript) gives an
    :class:`catdog.exported.ExportedClassifier`, which predicts the same way."""
    fmt = exported_format(path)
    if fmt is not None:
        return load_exported(path, fmt)
    ckpt = read_checkpoint(path)
    hp = dict(ckpt["hyper_parameters"])
    hp["weights"] = None
    try:
        model = ClassifierModule(**hp)
        model.load_state_dict(upgrade_state_dict(ckpt["state_dict"]), strict=True)
    except (TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{path} does not match catdog's model: {exc}") from None
    model.checkpoint_path = str(path)
    model.datamodule_hparams = dict(ckpt.get("datamodule_hyper_parameters") or {})
    model.temperature = checkpoint_temperature(ckpt)
    return model.eval()
