"""Knowledge distillation (Hinton, Vinyals and Dean 2015): a student trained on the labels and on a teacher's
temperature-softened probabilities.

``distill.alpha`` mixes the two terms and ``distill.temperature`` (T) softens both distributions of the second::

    loss = (1 - alpha) * CE(label, student) + alpha * T^2 * KL(softmax(log q / T) || softmax(z / T))

where ``q`` is the teacher's probabilities and ``z`` the student's logits. The T^2 keeps the second term's gradients
on the scale of the first's whatever T (its gradient with respect to ``z`` is ``T * (softmax(z / T) - q_T)``).
``alpha = 0`` is plain cross-entropy; class weights and label smoothing apply to the label's term only.

In a batch every training image's target is ``2K`` wide: its label's distribution (one-hot, or a soft pseudo-label)
then the teacher's probabilities, so that MixUp / CutMix (linear in the targets) mix both halves with the same
weights. :func:`split_targets` softens the teacher's half before any mixing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from catdog.errors import ConfigError, check_known_keys
from catdog.models.class_weights import weighted_cross_entropy
from catdog.models.tta import check_tta, check_view_set

#: ``distill`` keys and defaults (conf/train.yaml says what each means).
DISTILL_DEFAULTS = {"teacher": None, "alpha": 0.5, "temperature": 2.0, "tta": 0, "tta_views": "zoom"}


def complete_distill(distill: dict | None) -> dict:
    return {**DISTILL_DEFAULTS, **(distill or {})}


def check_distill(distill: dict | None) -> dict | None:
    """The ``distill`` config completed with its defaults, or None when no teacher is set; a bad key or value raises
    a :class:`ConfigError` naming it."""
    if distill is None:
        return None
    check_known_keys(distill, DISTILL_DEFAULTS, "distill")
    d = complete_distill(distill)
    teacher = d["teacher"]
    if teacher is None:
        return None
    teachers = teacher if isinstance(teacher, list) else [teacher]
    if not teachers or not all(isinstance(t, str) and t for t in teachers):
        raise ConfigError(
            "distill.teacher must be a k-fold run folder, a list of them, or a blend.json written by predict.py "
            f"blend=oof; got {teacher!r}"
        )
    alpha = d["alpha"]
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"distill.alpha must be a number in [0, 1] (the teacher's share of the loss), got {alpha!r}")
    t = d["temperature"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not (math.isfinite(t) and t > 0):
        raise ConfigError(f"distill.temperature must be a positive number, got {t!r}")
    check_tta(d["tta"], key="distill.tta")
    check_view_set(d["tta_views"], key="distill.tta_views")
    return active_distill(distill)


def active_distill(distill: dict | None) -> dict | None:
    """A checked ``distill`` config (:func:`check_distill`, called by the command's validation) completed with its
    defaults and its numbers as floats / int, or None when no teacher is set: what the builders use."""
    d = complete_distill(distill)
    if d["teacher"] is None:
        return None
    return {**d, "alpha": float(d["alpha"]), "temperature": float(d["temperature"]), "tta": int(d["tta"])}


def soften(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """``softmax(log(probs) / T)``: the teacher's probabilities at temperature ``T`` (rows of ``probs`` sum to 1; a
    probability of 0 stays 0)."""
    logp = torch.log(probs.clamp_min(0.0))
    return torch.softmax(logp / temperature, dim=-1).nan_to_num(0.0)


def split_targets(target: torch.Tensor, classes: int, temperature: float) -> torch.Tensor:
    """A batch's ``2K`` targets with the teacher's half softened to ``temperature``, ready to be mixed."""
    if target.ndim != 2 or target.shape[1] != 2 * classes:
        raise ValueError(
            f"distillation needs every training target as {2 * classes} values (the label's distribution, then the "
            f"teacher's probabilities), got shape {tuple(target.shape)}: was the teacher attached to the data?"
        )
    return torch.cat([target[:, :classes], soften(target[:, classes:], temperature)], dim=1)


def distillation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    teacher: torch.Tensor,
    alpha: float,
    temperature: float,
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """``(1 - alpha) * CE(target, logits) + alpha * T^2 * KL(teacher || softmax(logits / T))``, the mean over the
    batch. ``target``: (B, K) label distributions or (B,) classes (weighted and smoothed as
    :func:`catdog.models.class_weights.weighted_cross_entropy`); ``teacher``: (B, K) probabilities already softened
    to ``temperature`` (:func:`soften`)."""
    hard = weighted_cross_entropy(logits, target, weight=weight, label_smoothing=label_smoothing)
    if alpha == 0.0:
        return hard
    log_student = F.log_softmax(logits / temperature, dim=1)
    kl = F.kl_div(log_student, teacher, reduction="batchmean")
    return (1.0 - alpha) * hard + alpha * temperature**2 * kl
