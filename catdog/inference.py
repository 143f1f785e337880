"""What prediction runs: a model rebuilt from a catdog checkpoint or a Hub model folder (weights, preprocessing and
fitted temperature from the files alone, never a download), or a model file written by ``export.py`` (ONNX,
TorchScript) that predicts the same way."""

from __future__ import annotations

import os
from pathlib import Path

from catdog.checkpoints import read_checkpoint, upgrade_state_dict
from catdog.errors import CheckpointError
from catdog.exported import exported_format, load_exported
from catdog.hub import is_hub_folder, read_hub_config, read_hub_weights
from catdog.models.calibration import checkpoint_temperature
from catdog.models.module import ClassifierModule


def load_classifier(path: str | os.PathLike):
    """Rebuild the :class:`ClassifierModule` saved in ``path``, a checkpoint or a Hub model folder
    (:mod:`catdog.hub`); no download: weights come from the file.

    A model file written by ``export.py`` (``.onnx``, TorchScript) gives an
    :class:`catdog.exported.ExportedClassifier`, which predicts the same way."""
    fmt = exported_format(path)
    if fmt is not None:
        return load_exported(path, fmt)
    if is_hub_folder(path):
        config = read_hub_config(Path(path))
        model = _rebuild(path, config["hyper_parameters"], read_hub_weights(Path(path)))
        model.datamodule_hparams = dict(config.get("data") or {})
        model.temperature = config.get("temperature")
        return model.eval()
    ckpt = read_checkpoint(path)
    model = _rebuild(path, ckpt["hyper_parameters"], upgrade_state_dict(ckpt["state_dict"]))
    model.datamodule_hparams = dict(ckpt.get("datamodule_hyper_parameters") or {})
    model.temperature = checkpoint_temperature(ckpt)
    return model.eval()


def _rebuild(path, hparams: dict, state_dict: dict) -> ClassifierModule:
    hp = dict(hparams)
    hp["weights"] = None  # every weight comes from the file
    try:
        model = ClassifierModule(**hp)
        model.load_state_dict(state_dict, strict=True)
    except (TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{path} does not match catdog's model: {exc}") from None
    model.checkpoint_path = str(path)
    return model
