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
