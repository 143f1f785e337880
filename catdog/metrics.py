"""Classification metrics as pure tensor functions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

# Kaggle clips probabilities to [eps, 1 - eps] before taking logs.
KAGGLE_EPS = 1e-15


def log_loss(probs: torch.Tensor, targets: torch.Tensor, eps: float = KAGGLE_EPS) -> float:
    """Mean negative log-likelihood of the true class; ``probs`` is (N, K) rows summing to 1."""
    p = probs.double().clamp(eps, 1 - eps)
    p = p / p.sum(dim=1, keepdim=True)
    return float(-p.gather(1, targets.long().view(-1, 1)).log().mean())


def accuracy(probs: torch.Tensor, targets: torch.Tensor) -> float:
    return float((probs.argmax(dim=1) == targets.long()).double().mean())


def scores(probs: np.ndarray, labels: Sequence[str], classes: Sequence[str]) -> dict[str, float]:
    """Accuracy and log loss."""
    index = {c: i for i, c in enumerate(classes)}
    p = torch.from_numpy(probs)
    t = torch.tensor([index[y] for y in labels])
    return {"logloss": log_loss(p, t), "acc": accuracy(p, t), "images": len(labels)}


def confusion_counts(targets: Sequence[int], predicted: Sequence[int], num_classes: int) -> np.ndarray:
    """``counts[i, j]`` = images of true class ``i`` predicted as ``j``."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(targets, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return counts


def class_report(probs: np.ndarray, targets: Sequence[int], classes: Sequence[str]) -> dict:
    """Per class precision, recall, F1 and support of the argmax predictions, the confusion matrix (rows: true class,
    columns: predicted) and the balanced accuracy (the mean recall)."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    confusion = confusion_counts(targets, probs.argmax(axis=1), len(classes))
    per_class = {}
    for i, name in enumerate(classes):
        tp, predicted, actual = confusion[i, i], confusion[:, i].sum(), confusion[i].sum()
        precision = float(tp / predicted) if predicted else 0.0
        recall = float(tp / actual) if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": int(actual)}
    present = [v["recall"] for v in per_class.values() if v["support"]]
    return {
        "per_class": per_class,
        "confusion": confusion.tolist(),
        "balanced_acc": float(np.mean(present)) if present else 0.0,
    }
