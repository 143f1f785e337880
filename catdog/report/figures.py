"""The numbers behind a report's pictures (pure functions) and the pictures themselves (matplotlib, no display).

Every plot function takes the numbers a ``*_data`` function computed, draws them on a fresh ``Figure`` (matplotlib's
object API: no pyplot state, no GUI backend) and returns PNG bytes.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


# ----- numbers -----------------------------------------------------------------------------------------------------
def reliability_data(probs: np.ndarray, targets: Sequence[int], bins: int = 10) -> dict:
    """Top-label reliability: per confidence bin (equal width on [0, 1]) the mean confidence, the accuracy and the
    count, and the expected calibration error ``ECE = sum_b n_b / N * |acc_b - conf_b|``."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == targets).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)
    conf, acc, count = [], [], []
    ece = 0.0
    for b in range(bins):
        mask = which == b
        n = int(mask.sum())
        count.append(n)
        conf.append(float(confidence[mask].mean()) if n else None)
        acc.append(float(correct[mask].mean()) if n else None)
        if n:
            ece += n / len(targets) * abs(acc[-1] - conf[-1])
    return {"edges": edges.tolist(), "confidence": conf, "accuracy": acc, "count": count, "ece": float(ece)}


def roc_data(scores: Sequence[float], positive: Sequence[bool]) -> dict:
    """ROC curve of ``scores`` for the ``positive`` images: false and true positive rates at every distinct
    threshold (tied scores move together), and the area under it (trapezoids, which counts ties as half)."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return {"fpr": [], "tpr": [], "auc": None}
    order = np.argsort(-scores, kind="stable")
    s, p = scores[order], positive[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(p)[last_of_tie]
    fp = np.cumsum(~p)[last_of_tie]
    fpr = np.r_[0.0, fp / n_neg]
    tpr = np.r_[0.0, tp / n_pos]
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": auc}


def top_mistakes(probs: np.ndarray, targets: Sequence[int], n: int = 16) -> list[int]:
    """Indices of the ``n`` most confident mistakes (wrongly classified, lowest probability of the true class)."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    wrong = np.flatnonzero(probs.argmax(axis=1) != targets)
    p_true = probs[wrong, targets[wrong]]
    return wrong[np.argsort(p_true, kind="stable")][:n].tolist()


def scale_probs(probs: np.ndarray, temperature: float | np.ndarray | None) -> np.ndarray:
    """Probabilities as if the logits had been divided by ``temperature`` (one value, or one per row)."""
    if temperature is None:
        return np.asarray(probs, dtype=np.float64)
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-300, 1.0))
    t = np.asarray(temperature, dtype=np.float64).reshape(-1, 1) if np.ndim(temperature) else float(temperature)
    z = logp / t
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def epoch_history(metrics_csv: str | os.PathLike) -> dict[str, dict[int, float]]:
    """``{column: {epoch: value}}`` from a Lightning CSV log: the epoch-level values (``*_epoch``, ``val/*``, one per
    epoch) and the learning rates (logged at each epoch's first step, in rows without an epoch)."""
    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    step_epochs = sorted(
        (int(r["step"]), int(r["epoch"])) for r in rows if r.get("epoch") not in (None, "") and r.get("step")
    )
    history: dict[str, dict[int, float]] = {}
    for r in rows:
        epoch = r.get("epoch")
        if epoch in (None, ""):
            step = int(r["step"]) if r.get("step") else None
            later = [e for s, e in step_epochs if step is not None and s >= step]
            if not later:
                continue
            epoch = later[0]
        epoch = int(epoch)
        for key, value in r.items():
            if key in ("epoch", "step") or value in (None, "") or key.endswith("_step"):
                continue
            history.setdefault(key, {})[epoch] = float(value)
    return history


# ----- pictures ----------------------------------------------------------------------------------------------------
def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def plot_curves(history: dict[str, dict[int, float]], unfreeze_epoch: int | None = None) -> bytes:
    """Loss, accuracy and learning rates per epoch; the unfreeze epoch marked with a dashed line."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(12, 3.6)
    axes = fig.subplots(1, 3)
    panels = [
        ("loss", [("train/loss_epoch", "train loss"), ("val/logloss", "val log loss")]),
        ("accuracy", [("train/acc_epoch", "train acc"), ("val/acc", "val acc")]),
        ("learning rate", [(k, k.removeprefix("lr-")) for k in sorted(history) if k.startswith("lr-")]),
    ]
    for ax, (title, series) in zip(axes, panels):
        for key, label in series:
            values = history.get(key)
            if values:
                epochs = sorted(values)
                ax.plot(epochs, [values[e] for e in epochs], marker="o", markersize=3, label=label)
        if unfreeze_epoch is not None:
            label = f"unfreeze (epoch {unfreeze_epoch})"
            ax.axvline(unfreeze_epoch - 0.5, color="grey", linestyle="--", linewidth=1, label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.lines:
            ax.legend(fontsize=7)
    return _png(fig)


def plot_confusion(counts: np.ndarray, classes: Sequence[str]) -> bytes:
    k = len(classes)
    fig = _figure(1.6 + 0.9 * k, 1.2 + 0.9 * k)
    ax = fig.subplots()
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(k), classes, rotation=45 if k > 4 else 0)
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = counts.max() if counts.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(
                j, i, str(counts[i, j]), ha="center", va="center", color="white" if counts[i, j] > top / 2 else "black"
            )
    ax.set_title("confusion matrix")
    return _png(fig)


def plot_reliability(curves: dict[str, dict]) -> bytes:
    """One reliability curve per entry of ``curves`` (``{"before": reliability_data(...), "after T=0.7": ...}``)."""
    fig = _figure(4.6, 4.2)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    for name, data in curves.items():
        pts = [(c, a) for c, a in zip(data["confidence"], data["accuracy"]) if c is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", markersize=4, label=f"{name}: ECE {data['ece']:.4f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top class)")
    ax.set_ylabel("accuracy")
    ax.set_title("reliability")
    ax.legend(fontsize=8, loc="upper left")
    return _png(fig)


def plot_roc(data: dict, positive: str) -> bytes:
    fig = _figure(4.4, 4.2)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.plot(data["fpr"], data["tpr"], label=f"AUC {data['auc']:.4f}")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel(f"true positive rate ({positive})")
    ax.set_title("ROC")
    ax.legend(loc="lower right")
    return _png(fig)


def _grid(items: Sequence[dict], columns: int, draw, caption, empty: str) -> bytes:
    """A grid of ``items``: ``draw(ax, item)`` fills each cell, ``caption(item)`` writes above it. Cells are placed by
    hand (no layout engine: it would measure every caption, several times over)."""
    from matplotlib.figure import Figure

    n = max(1, len(items))
    cols, rows = min(columns, n), math.ceil(n / columns)
    fig = Figure(figsize=(3.0 * cols, 3.2 * rows), dpi=100)
    if not items:
        fig.text(0.5, 0.5, empty, ha="center", va="center")
    for i, item in enumerate(items):
        left, top = (i % cols) / cols, 1 - (i // cols) / rows
        ax = fig.add_axes((left + 0.05 / cols, top - 0.97 / rows, 0.9 / cols, 0.74 / rows))
        ax.axis("off")
        draw(ax, item)
        fig.text(left + 0.5 / cols, top - 0.02 / rows, caption(item), ha="center", va="top", fontsize=8)
    return _png(fig)


def plot_mistakes(items: Sequence[dict], columns: int = 4) -> bytes:
    """A grid of ``items`` (``path``, ``name``, ``true``, ``predicted``, ``p_true``): thumbnail and caption."""
    from PIL import Image

    def draw(ax, item):
        try:
            with Image.open(item["path"]) as img:
                img = img.convert("RGB")
                img.thumbnail((160, 160))
                ax.imshow(np.asarray(img))
        except (OSError, ValueError):
            ax.text(0.5, 0.5, "image not found", ha="center", va="center", fontsize=8)

    def caption(item):
        name, truth, predicted = _short_name(item["name"]), item["true"], item["predicted"]
        return f"{name}\ntrue {truth}, P {item['p_true']:.3f}\npredicted {predicted}"

    return _grid(items, columns, draw, caption, "no mistakes")


def _short_name(name: str, width: int = 28) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3) :]


def plot_fold_curves(curves: dict[str, dict[int, float]]) -> bytes:
    """Validation log loss per epoch, one line per fold (``{fold name: {epoch: value}}``)."""
    fig = _figure(5.5, 3.8)
    ax = fig.subplots()
    for name, values in curves.items():
        epochs = sorted(values)
        ax.plot(epochs, [values[e] for e in epochs], marker="o", markersize=3, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val log loss")
    ax.set_title("validation log loss per fold")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_metric_by_override(points: dict[str, list[tuple[str, float]]], metric: str) -> bytes:
    """One panel per varied override: ``metric`` of each job against the override's value (numbers on a numeric
    axis, logarithmic when they span more than a factor of 10; anything else as categories)."""
    keys = sorted(points)
    fig = _figure(4.2 * max(1, len(keys)), 3.6)
    axes = np.atleast_1d(fig.subplots(1, max(1, len(keys)))).ravel()
    for ax, key in zip(axes, keys):
        values = points[key]
        numeric = [_number(v) for v, _ in values]
        if all(x is not None for x in numeric):
            ax.scatter(numeric, [m for _, m in values])
            positive = [x for x in numeric if x > 0]
            if len(positive) == len(numeric) and max(positive) / min(positive) > 10:
                ax.set_xscale("log")
        else:
            labels = sorted({v for v, _ in values})
            ax.scatter([labels.index(v) for v, _ in values], [m for _, m in values])
            ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=8)
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
    if not keys:
        axes[0].text(0.5, 0.5, "no override varies between jobs", ha="center", va="center")
        axes[0].axis("off")
    return _png(fig)


def _number(value: str) -> float | None:
    try:
        x = float(value)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def image_path(root: str | os.PathLike | None, rel: str) -> Path:
    return Path(rel) if root is None or os.path.isabs(rel) else Path(root) / rel


def plot_lr_find(
    lrs: Sequence[float], losses: Sequence[float], raw: Sequence[float], suggestion: float | None
) -> bytes:
    """The learning-rate range test: training loss (smoothed, and as measured) against the learning rate (log
    scale), the suggestion marked."""
    fig = _figure(6.5, 4)
    ax = fig.subplots()
    ax.plot(lrs, raw, color="lightgrey", linewidth=1, label="loss per step")
    ax.plot(lrs, losses, linewidth=1.5, label="smoothed")
    if suggestion is not None:
        ax.axvline(suggestion, color="red", linestyle="--", linewidth=1, label=f"suggestion {suggestion:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (model.optimizer.lr)")
    ax.set_ylabel("training loss")
    finite = [v for v in losses if math.isfinite(v)]
    if finite:
        ax.set_ylim(min(finite) - 0.05 * abs(min(finite)), min(max(finite), 2.5 * finite[0]) * 1.05)
    ax.legend(fontsize=8)
    return _png(fig)


def plot_gradcam(items: Sequence[dict], columns: int = 4) -> bytes:
    """A grid of Grad-CAM overlays: each item's ``image`` (H, W, 3 uint8, the eval crop) under its ``cam`` (H, W in
    [0, 1]), captioned with ``name``, ``true``, ``predicted`` and ``p`` (the predicted class's probability)."""

    def draw(ax, item):
        ax.imshow(item["image"])
        ax.imshow(item["cam"], cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)

    def caption(item):
        verdict = "right" if item["true"] == item["predicted"] else "WRONG"
        name, predicted = _short_name(item["name"]), item["predicted"]
        return f"{name}\ntrue {item['true']}, {verdict}\npredicted {predicted} {item['p']:.3f}"

    return _grid(items, columns, draw, caption, "no image to explain")


def overlay_png(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> bytes:
    """A Grad-CAM overlay as one PNG the size of ``image`` (H, W, 3 uint8): ``cam`` (H, W in [0, 1]) in the jet
    colour map blended over it with ``alpha``, as :func:`plot_gradcam` draws each picture."""
    from matplotlib import colormaps  # matplotlib's colour maps only: no figure, no backend

    heat = colormaps["jet"](np.clip(cam, 0.0, 1.0))[..., :3] * 255.0
    blended = (1.0 - alpha) * image.astype(np.float64) + alpha * heat
    out = io.BytesIO()
    Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()
