"""Pseudo-labelling (``data.pseudo``): confidently predicted test images join the training images.

``data.pseudo.labels`` is a submission-format CSV (what ``predict.py`` writes) of predictions for the images in
``data.pseudo.images`` (default ``<data.dir>/test``). Images whose predicted class has probability >=
``data.pseudo.threshold`` join the training side of every split and fold, never the validation side: their target is
the predicted class (``soft=false``) or the predicted probabilities (``soft=true``).

A test image byte-identical to a labelled image (the content the splits group by) never joins: that would train on a
labelled image, possibly a validation one, under its predicted class. The model that made the predictions (the
teacher) is read from the record ``predict.py`` keeps in the folder it wrote them in; when it is known, the run notes
how many of its validation images the teacher trained on (a warning when any: its pseudo-labels carry what it learned
of them).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from catdog.data.layouts import find_unlabelled
from catdog.data.splits import content_groups
from catdog.errors import CatdogError, ConfigError, DatasetError, check_known_keys
from catdog.runs.layout import (
    CHECKPOINT_DIR,
    RECORD_DIR,
    SPLIT_NAME,
    csv_text,
    format_prob,
    trained_images,
)
from catdog.runs.selection import resolve_members
from catdog.submission import read_submission

log = logging.getLogger(__name__)

#: data.pseudo's keys and their defaults (conf/data/default.yaml).
PSEUDO_DEFAULTS = {"labels": None, "images": None, "threshold": 0.95, "soft": False}


def complete_pseudo(pseudo: dict | None) -> dict:
    return {**PSEUDO_DEFAULTS, **(pseudo or {})}


def check_pseudo(pseudo) -> None:
    """``data.pseudo``'s keys and values (the files are read at setup)."""
    if pseudo is None:
        return
    check_known_keys(pseudo, sorted(PSEUDO_DEFAULTS), "data.pseudo")
    p = complete_pseudo(pseudo)
    for key in ("labels", "images"):
        if p[key] is not None and not isinstance(p[key], str):
            raise ConfigError(f"data.pseudo.{key} must be a path or null, got {p[key]!r}")
    if p["labels"] is not None and not Path(p["labels"]).expanduser().is_file():
        raise ConfigError(f"data.pseudo.labels={p['labels']}: no such file (a submission CSV written by predict.py)")
    t = p["threshold"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 < t <= 1.0:
        raise ConfigError(f"data.pseudo.threshold must be a probability in (0, 1], got {t!r}")
    if not isinstance(p["soft"], bool):
        raise ConfigError(f"data.pseudo.soft must be true or false, got {p['soft']!r}")


@dataclass(frozen=True)
class Teacher:
    """The model whose predictions ``data.pseudo.labels`` holds, as the ``predict.py`` run that wrote them records it
    (``record``, its folder's ``.hydra/config.yaml``): its ``ckpt=`` value, the catdog run folders of its checkpoints,
    the labelled images those trained on (paths relative to their data folder, as ``split.csv`` lists them), and its
    checkpoints outside any run folder (``untraced``), whose training images are not known."""

    record: str
    ckpt: str | list
    runs: list[str]
    trained: frozenset[str]
    untraced: list[str]


@dataclass(frozen=True)
class PseudoLabels:
    """The test images that passed the threshold, and their targets (N, K): one-hot, or the predicted probabilities;
    ``source`` and ``threshold`` as configured, ``candidates`` the number of predictions the file held, ``copies``
    the confident ones left out as byte-identical to a labelled image; ``teacher`` the model that made them (None:
    not known) and ``seen_validation`` how many of this run's validation images it trained on (None: not checked)."""

    paths: list[str]
    targets: np.ndarray
    soft: bool
    candidates: int
    source: str
    threshold: float
    copies: int = 0
    teacher: Teacher | None = None
    seen_validation: int | None = None

    def hard(self) -> list[int]:
        return [int(i) for i in self.targets.argmax(axis=1)]

    def subset(self, keep: list[int]) -> PseudoLabels:
        return dataclasses.replace(self, paths=[self.paths[i] for i in keep], targets=self.targets[keep])


#: :func:`catdog.data.splits.content_groups`' key of a file it cannot read begins so (such files match nothing).
UNREADABLE_GROUP = "unreadable:"


def labelled_copies(candidates: list[str], labelled: list[str]) -> list[int]:
    """The positions of ``candidates`` whose bytes are those of a labelled image (by the content groups the splits
    use; unreadable files match nothing)."""
    if not candidates:
        return []
    found = content_groups(candidates)
    if all(g.startswith(UNREADABLE_GROUP) for g in found):
        return []
    known = {g for g in content_groups(labelled) if not g.startswith(UNREADABLE_GROUP)}
    return [i for i, g in enumerate(found) if g in known]


def _written_by(record: Path, labels: Path) -> dict | None:
    """The configuration in ``record`` (a folder's ``.hydra/config.yaml``) when it is that of the ``predict.py`` run
    that wrote ``labels`` (its ``output``, resolved); else None."""
    try:
        cfg = OmegaConf.to_container(OmegaConf.load(record), resolve=False)
    except OSError:
        return None
    if not isinstance(cfg, dict) or cfg.get("task_name") != "predict":
        return None
    output, inside = str(cfg.get("output") or ""), "${paths.output_dir}/"
    written = record.parent.parent / output[len(inside) :] if output.startswith(inside) else Path(output).expanduser()
    return cfg if written.resolve() == labels else None


def find_teacher(labels: str | os.PathLike) -> tuple[Teacher | None, str]:
    """(the model that made the predictions in ``labels``, ""), read from the ``.hydra/config.yaml`` that
    ``predict.py`` keeps in the folder it wrote them in; (None, why) when that cannot be told: no such record beside
    the file, ``ckpt=latest`` (the newest run then, which the record does not name), or checkpoints no longer found."""
    labels = Path(labels).expanduser().resolve()
    record = labels.parent / RECORD_DIR / "config.yaml"
    cfg = _written_by(record, labels) if record.is_file() else None
    if cfg is None:
        return None, f"no record of the predict.py run that wrote it ({record})"
    ckpt = cfg.get("ckpt")
    if any(str(c) == "latest" for c in (ckpt if isinstance(ckpt, list) else [ckpt])):
        return None, f"{record} names ckpt=latest, whichever run was newest then"
    try:
        members = resolve_members(ckpt)
    except CatdogError as exc:
        return None, f"the checkpoints {record} names are not found: {exc}"
    runs, trained, untraced = [], set(), []
    for member in members:
        member = Path(member).resolve()
        run = member.parent.parent
        if member.parent.name == CHECKPOINT_DIR and (run / SPLIT_NAME).is_file():
            if str(run) not in runs:
                runs.append(str(run))
                trained |= trained_images(run)
        else:
            untraced.append(str(member))
    return Teacher(str(record), ckpt, runs, frozenset(trained), untraced), ""


def load_pseudo(pseudo: dict | None, root: Path, classes: list[str], labelled: list[str]) -> PseudoLabels | None:
    """The pseudo-labelled images for ``data.pseudo`` (None when ``labels`` is null). Ids of the CSV that name no
    image, and images that are also labelled training images, are errors naming the first few; confident predictions
    for images byte-identical to a labelled one are left out (and counted). The teacher is looked up
    (:func:`find_teacher`)."""
    p = complete_pseudo(pseudo)
    if p["labels"] is None:
        return None
    images = Path(p["images"]).expanduser() if p["images"] else root / "test"
    ids, probs = read_submission(p["labels"], classes, key="data.pseudo.labels")
    by_id = {Path(f).stem: str(f) for f in find_unlabelled(images)}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise DatasetError(
            f"data.pseudo.labels={p['labels']}: {len(missing)} of {len(ids)} id(s) name no image in {images} "
            f"(data.pseudo.images), e.g. {', '.join(missing[:3])}"
        )
    paths = [by_id[i] for i in ids]
    overlap = sorted(set(map(os.path.abspath, paths)) & set(map(os.path.abspath, labelled)))
    if overlap:
        raise DatasetError(
            f"data.pseudo.labels={p['labels']}: {len(overlap)} image(s) are also labelled training images, e.g. "
            f"{', '.join(overlap[:3])}; pseudo-labels are for unlabelled images"
        )
    keep = np.flatnonzero(probs.max(axis=1) >= p["threshold"])
    copies = set(labelled_copies([paths[i] for i in keep], labelled))
    if copies:
        log.info(
            "data.pseudo: %d of the %d confident prediction(s) are for images byte-identical to labelled ones (e.g. "
            "%s) and are left out", len(copies), len(keep), paths[keep[min(copies)]],
        )  # fmt: skip
        keep = np.array([k for j, k in enumerate(keep) if j not in copies], dtype=np.int64)
    probs = probs[keep]
    targets = probs if p["soft"] else np.eye(len(classes))[probs.argmax(axis=1)]
    teacher, unknown = find_teacher(p["labels"])
    if teacher is None:
        log.info(
            "data.pseudo.labels=%s: the model that made these predictions is not known (%s), so whether it trained "
            "on this run's validation images is not checked", p["labels"], unknown,
        )  # fmt: skip
    return PseudoLabels(
        [paths[i] for i in keep], targets, bool(p["soft"]), len(ids), str(p["labels"]), float(p["threshold"]),
        len(copies), teacher,
    )  # fmt: skip


def check_teacher(pseudo: PseudoLabels, validation: list[str], root: Path) -> PseudoLabels:
    """``pseudo`` with the number of this run's ``validation`` images (paths under ``root``) that its teacher trained
    on, a warning in one line when there are any (its pseudo-labels carry what it learned of them, so validation
    scores are optimistic); unchanged when the teacher is not known."""
    teacher = pseudo.teacher
    if teacher is None:
        return pseudo
    names = {os.path.relpath(p, root) for p in validation}
    seen = sorted(names & teacher.trained)
    if seen:
        log.warning(
            "data.pseudo.labels=%s: its teacher (%s) trained on %d of this run's %d validation images (e.g. %s), so "
            "the pseudo-labels carry what it learned of them and this run's validation scores are optimistic",
            pseudo.source, ", ".join(teacher.runs), len(seen), len(names), seen[0],
        )  # fmt: skip
    if teacher.untraced:
        log.info(
            "data.pseudo.labels=%s: %d teacher checkpoint(s) are outside a run folder (e.g. %s): whether they trained "
            "on this run's validation images is not checked", pseudo.source, len(teacher.untraced), teacher.untraced[0],
        )  # fmt: skip
    return dataclasses.replace(pseudo, seen_validation=len(seen))


def pseudo_record(used: PseudoLabels | None, classes: list[str]) -> dict | None:
    """What the run record (``result.json``) says of the pseudo-labels: the source, the settings, how many were
    candidates, how many were left out as copies of labelled images and how many were used per class, and the
    teacher (null when not known): the predict.py record that names it, its ``ckpt``, its run folders, its checkpoints
    outside any run folder, and how many of this run's validation images it trained on."""
    if used is None:
        return None
    hard = used.hard()
    t = used.teacher
    teacher = None if t is None else {
        "record": t.record, "ckpt": t.ckpt, "runs": t.runs, "untraced": t.untraced,
        "trained_on_validation": used.seen_validation,
    }  # fmt: skip
    return {
        "labels": used.source, "threshold": used.threshold, "soft": used.soft, "candidates": used.candidates,
        "labelled_copies": used.copies, "used": len(used.paths),
        "used_per_class": {c: hard.count(i) for i, c in enumerate(classes)}, "teacher": teacher,
    }  # fmt: skip


def pseudo_text(used: PseudoLabels, root: Path, classes: list[str]) -> str:
    """``pseudo.csv``: the images that joined training and their targets."""
    rows = [
        (os.path.relpath(path, root), *(format_prob(v) for v in target))
        for path, target in zip(used.paths, used.targets)
    ]
    return csv_text(("path", *(f"target_{c}" for c in classes)), sorted(rows))
