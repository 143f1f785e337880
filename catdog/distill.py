"""``distill.teacher``: the teacher's probabilities for a student's training images.

A teacher is one or more finished k-fold runs, or a blend of them written by ``predict.py blend=oof`` (its
``blend.json``: the runs, their weights and temperature). An image's target comes from the run's out-of-fold row:
the one fold model that did not train on it, so no image is taught by a model that memorised its label. With
``distill.tta=N`` the rows are predicted again with the teacher's N views (:mod:`catdog.oof_views`: once, kept in the
teacher's run folder with its checkpoints' digests and reused while they hold). Several runs are averaged (the mean
of their probabilities, as ``predict.py``'s ensembles), a blend applies its weights and temperature.

The student's own run keeps the targets it trained on (``distill_targets.csv``) and their digest (``result.json``,
and its checkpoints: a resume with another teacher is refused). Its validation images were training images of the
teacher's other fold models, so its validation figures are in-sample with respect to the teacher, and say so.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from catdog.blending import OofRun, blend_probs, log_probs, read_oof_run
from catdog.data.datamodule import default_num_workers
from catdog.data.decode import resolve_decoder
from catdog.ensemble import combine
from catdog.errors import CheckpointError, ConfigError
from catdog.metrics import accuracy, log_loss
from catdog.models.distillation import active_distill
from catdog.models.optim import plain
from catdog.models.precision import resolve_device
from catdog.oof_views import oof_with_views
from catdog.prediction import predict_member, view_settings
from catdog.runs.layout import (
    BLEND_NAME,
    MANIFEST_NAME,
    OOF_NAME,
    RESULT_NAME,
    csv_text,
    format_prob,
    read_json,
    rel_path,
)

log = logging.getLogger(__name__)

#: The student's copy of the targets it trained on.
TARGETS_NAME = "distill_targets.csv"


@dataclasses.dataclass(frozen=True)
class Teacher:
    """The teacher's out-of-fold probabilities: ``paths`` (relative to the dataset root, sorted) and ``probs`` (N, K),
    ``labels`` their labels, and what made them: the ``runs`` (with the TTA their rows were predicted with), the
    blend's ``weights`` and ``temperature`` (None: the runs' mean), and ``named``, what ``distill.teacher`` said."""

    named: list[str]
    runs: list[OofRun]
    weights: list[float] | None
    temperature: float | None
    paths: list[str]
    labels: list[str]
    classes: list[str]
    probs: np.ndarray

    def rows_for(self, paths: list[str]) -> np.ndarray:
        """The rows of ``paths`` (relative to the dataset root), in that order; a path the teacher has no row for
        raises a :class:`ConfigError` naming the first few."""
        at = {p: i for i, p in enumerate(self.paths)}
        missing = [p for p in paths if p not in at]
        if missing:
            raise ConfigError(
                f"distill.teacher={self.named}: no out-of-fold row for {len(missing)} of the student's {len(paths)} "
                f"training images (e.g. {', '.join(missing[:3])}): train the student on the images the teacher's "
                "k-fold runs were trained on (the same data.dir)"
            )
        return self.probs[[at[p] for p in paths]]

    def seen(self, paths: list[str]) -> int:
        """How many of ``paths`` the teacher's fold models trained on (every image with an out-of-fold row was a
        training image of the run's other folds)."""
        rows = set(self.paths)
        return sum(p in rows for p in paths)

    def scores(self) -> dict:
        """The teacher's out-of-fold log loss and accuracy on its own rows (each row by a model that did not train
        on it)."""
        index = {c: i for i, c in enumerate(self.classes)}
        targets = np.asarray([index[y] for y in self.labels])
        probs, targets = torch.from_numpy(self.probs), torch.from_numpy(targets)
        return {"logloss": log_loss(probs, targets), "acc": accuracy(probs, targets)}


def _blend_record(path: Path) -> dict | None:
    """``blend.json`` at ``path`` (or in the folder ``path``), when that is what it is."""
    path = path / BLEND_NAME if path.is_dir() else path
    record = read_json(path) if path.suffix == ".json" and path.is_file() else None
    return record if isinstance(record, dict) and record.get("kind") == "catdog-blend" else None


def _kfold_run(path: Path, named: str) -> Path:
    if (path / MANIFEST_NAME).is_file() and (path / OOF_NAME).is_file():
        return path
    if (path / RESULT_NAME).is_file():
        raise ConfigError(
            f"distill.teacher={named} is a single run: its model trained on every image but its validation split, so "
            "it has no prediction for them by a model that did not train on them. Train the teacher as a k-fold "
            "ensemble (ensemble.size=K)"
        )
    raise ConfigError(
        f"distill.teacher={named}: not a finished k-fold run folder ({MANIFEST_NAME} and {OOF_NAME}) nor a "
        f"{BLEND_NAME} written by predict.py blend=oof"
    )


def read_teacher_runs(teacher: str | list[str]) -> tuple[list[str], list[OofRun], list[float] | None, float | None]:
    """(the names given, the runs' out-of-fold rows, the blend's weights and temperature or None) of
    ``distill.teacher``: a k-fold run folder, a list of them, or a ``blend.json`` (or the folder holding one)."""
    named = list(teacher) if isinstance(teacher, list) else [teacher]
    blend = _blend_record(Path(named[0]).expanduser()) if len(named) == 1 else None
    if blend is not None:
        folders = [Path(m["run"]) for m in blend["members"]]
        weights, temperature = [float(w) for w in blend["weights"]], float(blend["temperature"])
    else:
        folders, weights, temperature = [Path(n).expanduser() for n in named], None, None
    runs = [read_oof_run(_kfold_run(f, str(f))) for f in folders]
    ref = runs[0]
    for other in runs[1:]:
        if other.classes != ref.classes or other.paths != ref.paths or other.labels != ref.labels:
            raise ConfigError(
                f"distill.teacher: {ref.run} and {other.run} were not trained on the same images, labels and classes"
            )
    return named, runs, weights, temperature


def combine_rows(runs: list[OofRun], weights: list[float] | None, temperature: float | None) -> np.ndarray:
    """The teacher's probabilities: the runs' mean, or their blend (``weights`` on their log-probabilities, then
    ``temperature``)."""
    if weights is None:
        return combine([r.probs for r in runs], "prob")
    return blend_probs(torch.stack([log_probs(r.probs) for r in runs]), weights, temperature).numpy()


def load_teacher(distill: dict, root: Path, predict: Callable | None = None, settings: dict | None = None) -> Teacher:
    """The teacher of ``distill`` (checked: :func:`catdog.models.distillation.check_distill`). With ``distill.tta``,
    each run's rows are predicted again with those views of the images under ``root`` by ``predict(model, paths)``
    (raw probabilities), ``settings`` (precision, decoder) naming what else they depend on; kept and reused
    (:func:`catdog.oof_views.oof_with_views`)."""
    named, runs, weights, temperature = read_teacher_runs(distill["teacher"])
    if distill["tta"]:
        runs = [oof_with_views(r, root, distill["tta"], distill["tta_views"], settings, predict) for r in runs]
    ref = runs[0]
    probs = combine_rows(runs, weights, temperature)
    return Teacher(named, runs, weights, temperature, ref.paths, ref.labels, ref.classes, probs)


def teacher_predictor(cfg) -> tuple[Callable, dict]:
    """``predict(model, paths)`` for the teacher's views (as ``predict.py`` predicts: its default device, precision
    and decoder, the training run's batch size and workers, no temperature) and the settings that name them (the
    same as ``predict.py``'s, so the two share the rows they keep)."""
    device = resolve_device("auto")
    decoder = resolve_decoder("auto")
    d = cfg.data
    workers = default_num_workers() if d.get("num_workers") is None else int(d.num_workers)
    batch_size = int(d.get("eval_batch_size") or 2 * d.batch_size)
    predict = functools.partial(
        predict_member, tta=int(cfg.distill.tta), device=device, batch_size=batch_size, workers=workers,
        precision="auto", compile=False, views=cfg.distill.tta_views, decoder=decoder,
    )  # fmt: skip
    return (lambda model, paths: predict(model, paths=paths, temperature=None)), view_settings("auto", device, decoder)


def targets_text(paths: list[str], labels: list[str], probs: np.ndarray, classes: list[str]) -> str:
    """``distill_targets.csv``: ``path,label,p_<class>...`` of each training image, in training order."""
    rows = [(p, y, *(format_prob(v) for v in row)) for p, y, row in zip(paths, labels, probs)]
    return csv_text(("path", "label", *(f"p_{c}" for c in classes)), rows)


def targets_digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def distill_record(distill: dict, teacher: Teacher, digest: str, images: int, seen_validation: int, val: int) -> dict:
    """``result.json``'s ``distill``: the teacher, its targets' digest and what the student's figures mean."""
    in_sample = seen_validation > 0
    return {
        "teacher": teacher.named,
        "runs": [str(r.run) for r in teacher.runs],
        "blend": {"weights": teacher.weights, "temperature": teacher.temperature} if teacher.weights else None,
        "tta": distill["tta"],
        "tta_views": distill["tta_views"] if distill["tta"] else None,
        "rows": teacher.runs[0].fitted_on(),
        "alpha": distill["alpha"],
        "temperature": distill["temperature"],
        "targets": TARGETS_NAME,
        "targets_digest": digest,
        "images": images,
        "teacher_out_of_fold": teacher.scores(),
        "validation_seen_by_teacher": seen_validation,
        "validation_images": val,
        "note": (
            f"{seen_validation} of the student's {val} validation images were training images of the teacher's "
            "fold models, which made the targets of the student's other images: its validation figures are "
            "in-sample with respect to the teacher"
            if in_sample
            else "no validation image of the student was a training image of the teacher"
        ),
    }


def check_classes(teacher: Teacher, classes: list[str]) -> None:
    if teacher.classes != list(classes):
        raise CheckpointError(
            f"distill.teacher={teacher.named} predicts classes {teacher.classes}, the student's data has {classes}"
        )


@dataclasses.dataclass(frozen=True)
class Student:
    """What a student run trained on: its targets file's text and digest, and ``result.json``'s record."""

    text: str
    digest: str
    record: dict


def attach_teacher(cfg, datamodule) -> Student | None:
    """With ``distill.teacher``: the teacher's probabilities for ``datamodule``'s labelled training images attached
    to it (:meth:`catdog.data.datamodule.CatDogDataModule.attach_teacher`; the datamodule set up); None without."""
    distill = active_distill(plain(cfg.get("distill")))
    if distill is None:
        return None
    root = Path(datamodule.root)
    predict, settings = teacher_predictor(cfg) if distill["tta"] else (None, None)
    # Predicting the teacher's views (its models built on the CPU, then loaded; its loaders' seeds) draws from the
    # global random state, reusing the kept ones does not: restored, the student starts alike either way, and alike
    # on every process of a distributed run (where the first predicts and keeps them, the others reuse them).
    with torch.random.fork_rng(devices=[]):
        teacher = load_teacher(distill, root, predict, settings)
    check_classes(teacher, datamodule.classes)
    train = datamodule.train_set
    labelled = datamodule.labelled_count
    paths = [rel_path(p, root) for p in train.paths[:labelled]]
    probs = teacher.rows_for(paths)
    datamodule.attach_teacher(torch.from_numpy(probs))
    text = targets_text(paths, [datamodule.classes[y] for y in train.labels[:labelled]], probs, teacher.classes)
    digest = targets_digest(text)
    val = [rel_path(p, root) for p in datamodule.val_set.paths]
    record = distill_record(distill, teacher, digest, labelled, teacher.seen(val), len(val))
    scores = record["teacher_out_of_fold"]
    log.info(
        "distill: %d training image(s) taught by %s (%s; out-of-fold log loss %.4f, acc %.4f), alpha %g, T %g; %s",
        labelled, ", ".join(teacher.named), record["rows"], scores["logloss"], scores["acc"], distill["alpha"],
        distill["temperature"], record["note"],
    )  # fmt: skip
    return Student(text, digest, record)
