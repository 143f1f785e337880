"""Classification metrics as pure tensor functions."""

from __future__ import annotations

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
