"""Which training images are likely mislabelled: ``label_issues.csv`` of a k-fold run.

Every labelled image of a k-fold run has an out-of-fold prediction from a model that never trained on it. Ranked by
the probability that prediction gives the image's own label (``p_label``, lowest first: cleanlab's
"self-confidence" ranking), the top of the list is where wrong labels, unusable pictures and genuinely hard cases
gather. ``confident`` marks the rows confident learning would count as label errors: the predicted class is another
one and its probability reaches that class's threshold (the mean probability of the class over the images labelled
with it). Look at the top rows (the k-fold report shows them as thumbnails), and leave the bad ones out of a later run
with ``data.exclude=FILE`` (this file, cut to the rows to drop, or a list of ids or paths).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from catdog.runs.layout import csv_text, format_prob

HEADER = ("rank", "path", "label", "fold", "predicted", "p_predicted", "p_label", "confident")


def class_thresholds(probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per class j, the mean out-of-fold probability of j over the images labelled j (1.0 for a class without
    images: nothing is flagged as it)."""
    k = probs.shape[1]
    return np.array([probs[targets == j, j].mean() if (targets == j).any() else 1.0 for j in range(k)])


def rank_label_issues(probs: np.ndarray, targets: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(row order, lowest probability of the own label first; ``confident`` flag per row)."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    p_label = probs[np.arange(len(targets)), targets]
    predicted = probs.argmax(axis=1)
    thresholds = class_thresholds(probs, targets)
    confident = (predicted != targets) & (probs[np.arange(len(targets)), predicted] >= thresholds[predicted])
    return np.argsort(p_label, kind="stable"), confident


def label_issues_text(rows: Sequence[Sequence[str]], probs: np.ndarray, labels: Sequence[str], classes) -> str:
    """``label_issues.csv`` from out-of-fold rows (``path,label,fold,...``) and their probabilities."""
    index = {c: i for i, c in enumerate(classes)}
    targets = np.array([index[y] for y in labels], dtype=np.int64)
    order, confident = rank_label_issues(probs, targets)
    out = []
    for rank, i in enumerate(order, start=1):
        predicted = int(probs[i].argmax())
        out.append(
            (
                rank, rows[i][0], labels[i], rows[i][2], classes[predicted], format_prob(probs[i, predicted]),
                format_prob(probs[i, targets[i]]), int(confident[i]),
            )
        )  # fmt: skip
    return csv_text(HEADER, out)
