"""Which training images are likely mislabelled: ``label_issues.csv`` of a k-fold run.

Every labelled image of a k-fold run has an out-of-fold prediction from a model that never trained on it. Ranked by
the probability that prediction gives the image's own label (``p_label``, lowest first: cleanlab's
"self-confidence" ranking), the top of the list is where wrong labels, unusable pictures and genuinely hard cases
gather. ``confident`` marks the rows confident learning counts as label errors, as cleanlab's
``find_label_issues(filter_by="confident_learning")`` does: each class's threshold is the mean probability of the
class over the images labelled with it; an image counts as the one class whose probability reaches its threshold, or
as its most probable class when several do (an image that reaches none is not counted); a row is flagged when it
counts as a class other than its label and its label is not its most probable class (both comparisons with cleanlab's
slack of 1e-6). ``predicted`` is the model's most probable class, as in ``oof.csv`` and the report; with three or more
classes a flagged row can count as another class. Look at the top rows (the k-fold report shows them as thumbnails),
and leave the bad ones out of a later run with ``data.exclude=FILE`` (this file, cut to the rows to drop, or a list of
ids or paths).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from catdog.runs.layout import csv_text, format_prob

HEADER = ("rank", "path", "label", "fold", "predicted", "p_predicted", "p_label", "confident")
#: cleanlab's slack in its probability comparisons: a class is confident down to its threshold less this, and a label
#: within this of the most probable class counts as the most probable.
TOLERANCE = 1e-6
#: cleanlab's floor under a class's threshold (above TOLERANCE, so that a probability of 0 never reaches it).
MIN_THRESHOLD = 2 * TOLERANCE
#: :func:`confident_classes`'s answer for a row whose probabilities reach no class's threshold.
NO_CLASS = -1


def class_thresholds(probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per class j, the mean out-of-fold probability of j over the images labelled j, at least ``MIN_THRESHOLD``
    (infinite for a class without images: no image is counted as it)."""
    k = probs.shape[1]
    means = [probs[targets == j, j].mean() if (targets == j).any() else np.inf for j in range(k)]
    return np.maximum(np.array(means, dtype=np.float64), MIN_THRESHOLD)


def confident_classes(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Per row, the class confident learning counts it as: the one class whose probability reaches its threshold (less
    ``TOLERANCE``), the most probable class of the row when several do (whether or not it reaches its own),
    ``NO_CLASS`` when none does."""
    reached = probs >= thresholds - TOLERANCE
    count = reached.sum(axis=1)
    guess = np.where(count > 1, probs.argmax(axis=1), reached.argmax(axis=1))
    return np.where(count > 0, guess, NO_CLASS)


def rank_label_issues(probs: np.ndarray, targets: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(row order, lowest probability of the own label first; ``confident`` flag per row: confident learning's label
    issues, as the module docstring describes)."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    rows = np.arange(len(targets))
    p_label = probs[rows, targets]
    guess = confident_classes(probs, class_thresholds(probs, targets))
    boosted = probs.copy()
    boosted[rows, targets] += TOLERANCE
    label_on_top = boosted.argmax(axis=1) == targets
    confident = (guess != NO_CLASS) & (guess != targets) & ~label_on_top
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
