"""The models of a ``ckpt=`` in memory, predicting uploaded images as ``predict.py`` predicts files.

:class:`Predictor` loads every member once (:func:`catdog.inference.load_classifier`: checkpoints, exported files,
Hub folders), decodes an upload with the same code as ``predict.py`` (a JPEG library, ``decoder=fast``:
:func:`catdog.data.decode.decode_bytes`, as :func:`catdog.data.decode.decode_cpu` decodes a file; ``decoder=pil``:
:func:`catdog.data.images.load_image_bytes` and the checkpoint's eval transform, as ``ImageDataset`` does) and runs
each member's ``predict_proba`` with the same TTA views, temperature, autocast dtype and ensembling
(:func:`catdog.ensemble.combine`). On the CPU, ``decoder=fast`` decodes an upload exactly as predict.py decodes the
file; on CUDA predict.py decodes JPEGs with nvJPEG and the server on the CPU (the same pixels within
:data:`catdog.data.decode.TOLERANCE`).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from catdog.data.decode import EvalGeometry, decode_bytes, resolve_decoder
from catdog.data.images import load_image_bytes
from catdog.data.splits import file_digest
from catdog.data.transforms import eval_resize_size, eval_transform
from catdog.ensemble import combine
from catdog.errors import BadImageError, CheckpointError, ConfigError
from catdog.hub import WEIGHTS_NAME, is_hub_folder, read_hub_config
from catdog.inference import load_classifier
from catdog.models.precision import autocast_dtype
from catdog.prediction import forward_batch
from catdog.report.figures import overlay_png
from catdog.report.gradcam import grad_cam, mean_map
from catdog.runs.layout import FOLD_PREFIX, RESULT_NAME, read_json
from catdog.runs.resume import checkpoint_run
from catdog.serving.uploads import UPLOAD_NAME, UploadError, bad_image

log = logging.getLogger(__name__)

#: (image_size, crop_pct, square, interpolation): one decoded crop per distinct geometry of the members.
Geometry = tuple[int, float, bool, str]


def member_identity(path: Path, temperature: float | None) -> dict[str, Any]:
    """What a client is told about one member: its run folder's name, its file's name and SHA-1, its temperature
    (no server path)."""
    weights = path / WEIGHTS_NAME if is_hub_folder(path) else path
    run = path if path.is_dir() else checkpoint_run(path)
    name = None if run is None else f"{run.parent.name}/{run.name}" if run.name.startswith(FOLD_PREFIX) else run.name
    return {
        "run": name, "checkpoint": weights.name, "sha1": file_digest(weights),
        "temperature": temperature,
    }  # fmt: skip


def run_metrics(path: Path) -> dict[str, float]:
    """The figures of a member's run (its result.json's val/ entries; a Hub folder's config.json), else empty."""
    if is_hub_folder(path):
        return dict(read_hub_config(path).get("metrics") or {})
    run = None if path.is_dir() else checkpoint_run(path)
    if run is None or not (run / RESULT_NAME).is_file():
        return {}
    result = read_json(run / RESULT_NAME)
    return {k: v for k, v in result.items() if k.startswith("val/") and isinstance(v, int | float)}


class Predictor:
    """``members`` (checkpoint paths, as :func:`catdog.runs.selection.resolve_members` gives) on ``device``.

    :meth:`decode` turns an upload's bytes into the crops the members take (or an :class:`UploadError`);
    :meth:`predict` answers a batch of them. ``identity``: :attr:`identity` as another Predictor of the same
    members computed it (else each member's file is hashed here)."""

    def __init__(
        self,
        members: Sequence[Path],
        *,
        tta: int = 0,
        views: str = "zoom",
        ensemble: str = "prob",
        calibrate: bool = True,
        device: str | torch.device = "cpu",
        precision: str = "auto",
        decoder: str = "auto",
        max_pixels: int | None = None,
        gradcam: bool = False,
        identity: list[dict] | None = None,
    ):
        self.device = torch.device(device)
        self.tta, self.views, self.mode = int(tta), views, ensemble
        self.decoder = resolve_decoder(decoder)
        self.max_pixels = max_pixels
        self.dtype = autocast_dtype(precision, self.device)
        self.members = [Path(m) for m in members]
        self.models = []
        for path in self.members:
            model = load_classifier(path)
            if self.models and model.classes != self.models[0].classes:
                raise CheckpointError(
                    f"ensemble members disagree on classes: {self.members[0]} has {self.models[0].classes}, "
                    f"{path} has {model.classes}"
                )
            self.models.append(model.to(self.device).eval())
        self.classes = list(self.models[0].classes)
        self.temperatures = [m.temperature if calibrate else None for m in self.models]
        square = self.tta > 0 and views == "crops"
        self.geometries = [self._geometry(m, square) for m in self.models]
        self.gradcam = gradcam
        if gradcam:
            exported = [str(p) for p, m in zip(self.members, self.models) if getattr(m, "exported", False)]
            if exported:
                raise ConfigError(
                    f"serve.gradcam=true needs the network's layers; {exported[0]} is an exported file: serve its "
                    "checkpoint, or set serve.gradcam=false"
                )
            self.cam_geometries = [self._geometry(m, False) for m in self.models]
        # given by the process that loaded the members first (catdog.serving.server): each file is hashed once
        self.identity = identity or [member_identity(p, t) for p, t in zip(self.members, self.temperatures)]

    @staticmethod
    def _geometry(model, square: bool) -> Geometry:
        hp = model.hparams
        return (int(hp.image_size), float(hp.crop_pct), square, str(hp.interpolation))

    # ----- decoding --------------------------------------------------------------------------------------------
    def _crop(self, data: bytes, geometry: Geometry, decoded: dict) -> torch.Tensor:
        size, crop_pct, square, interpolation = geometry
        if self.decoder != "pil":
            return decode_bytes(data, UPLOAD_NAME, EvalGeometry(*geometry), self.max_pixels, library=self.decoder)
        draft = eval_resize_size(size, crop_pct)
        if draft not in decoded:
            decoded[draft] = load_image_bytes(data, UPLOAD_NAME, draft_size=draft, max_pixels=self.max_pixels)
        return eval_transform(size, crop_pct, square, interpolation)(decoded[draft])

    def decode(self, data: bytes) -> dict[Geometry, torch.Tensor] | UploadError:
        """The uint8 crops of one upload, one per geometry the members (and Grad-CAM) take; an
        :class:`UploadError` (never raised) when the bytes are not a usable image."""
        wanted = list(dict.fromkeys(self.geometries + (self.cam_geometries if self.gradcam else [])))
        decoded: dict = {}
        try:
            return {g: self._crop(data, g, decoded) for g in wanted}
        except BadImageError as exc:
            return bad_image(exc)

    # ----- predicting ------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def probabilities(self, samples: Sequence[dict[Geometry, torch.Tensor]]) -> np.ndarray:
        """(N, K) float64 probabilities of a batch of decoded uploads, as ``predict.py`` computes them."""
        member_probs = []
        for model, geometry, temperature in zip(self.models, self.geometries, self.temperatures):
            x = torch.stack([s[geometry] for s in samples])
            p = forward_batch(model.predict_proba, x, self.tta, self.device, self.dtype, temperature)
            member_probs.append(p.numpy().astype(np.float64))
        return combine(member_probs, self.mode)

    def predict(self, samples: Sequence[dict[Geometry, torch.Tensor] | UploadError]) -> list[dict | UploadError]:
        """One answer per sample, in order: a dict for each decoded upload, the sample itself for an error."""
        good = [i for i, s in enumerate(samples) if not isinstance(s, UploadError)]
        out: list[dict | UploadError] = list(samples)
        if not good:
            return out
        probs = self.probabilities([samples[i] for i in good])
        for row, i in enumerate(good):
            out[i] = self.answer(probs[row])
            if self.gradcam:
                out[i]["gradcam"] = self.explain(samples[i], int(probs[row].argmax()))
        return out

    def answer(self, probs: np.ndarray) -> dict[str, Any]:
        top = int(probs.argmax())
        return {
            "class": self.classes[top], "probability": float(probs[top]),
            "probabilities": {c: float(p) for c, p in zip(self.classes, probs)},
            "model": {"members": self.identity, "tta": self.tta, "ensemble": self.mode},
        }  # fmt: skip

    def explain(self, sample: dict[Geometry, torch.Tensor], target: int) -> dict[str, Any]:
        """The Grad-CAM overlay (a PNG data URL) of ``target`` on the first member's crop: the mean of every
        member's map (:func:`catdog.report.gradcam.mean_map`), as the evaluation report shows an ensemble's."""
        crops = [sample[g] for g in self.cam_geometries]
        cams = [
            grad_cam(model, crop[None].to(self.device), [target])[0] for model, crop in zip(self.models, crops)
        ]  # fmt: skip
        image = crops[0].permute(1, 2, 0).numpy()
        cam = mean_map(cams, image.shape[:2]) if len(cams) > 1 else cams[0]
        png = base64.b64encode(overlay_png(image, cam)).decode("ascii")
        whose = "the model" if len(cams) == 1 else f"the mean of the {len(cams)} members' maps"
        return {"image": f"data:image/png;base64,{png}", "class": self.classes[target], "explained_by": whose}

    def info(self) -> dict[str, Any]:
        """What ``GET /info`` tells: classes, image size, TTA, architecture(s), members and their runs' figures."""
        first = self.models[0].hparams
        return {
            "classes": self.classes, "image_size": int(first.image_size), "crop_pct": float(first.crop_pct),
            "interpolation": str(first.interpolation), "tta": self.tta, "tta_views": self.views,
            "ensemble": self.mode, "decoder": self.decoder, "gradcam": self.gradcam,
            "arch": sorted({str(m.hparams.get("arch", "exported")) for m in self.models}),
            "members": [
                {**ident, "metrics": run_metrics(p)} for ident, p in zip(self.identity, self.members)
            ],
        }  # fmt: skip
