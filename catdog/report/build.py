"""Write the report of a run, a k-fold run, a sweep or a labelled evaluation (see :mod:`catdog.report`)."""

from __future__ import annotations

import base64
import html
import json
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from catdog.data.hf_data import data_root as hf_data_root
from catdog.errors import DatasetError
from catdog.fileio import atomic_open, atomic_write_text
from catdog.inference import load_classifier
from catdog.label_issues import rank_label_issues
from catdog.metrics import class_report
from catdog.report import figures as fg
from catdog.report import gradcam as gc
from catdog.runs.layout import (
    MANIFEST_NAME,
    OOF_NAME,
    RECORD_DIR,
    REPORT_DIR,
    REPORT_HTML,
    RESULT_NAME,
    SUMMARY_MD,
    SUMMARY_PNG,
    SWEEP_RECORD,
    read_json,
    read_oof,
)
from catdog.runs.sweep import sweep_rows

log = logging.getLogger(__name__)

#: Mistakes shown in the grid.
MISTAKES = 16


def evaluation_pictures(
    probs: np.ndarray,
    targets: Sequence[int],
    classes: Sequence[str],
    names: Sequence[str],
    paths: Sequence[str | os.PathLike],
    temperature: float | np.ndarray | None = None,
    applied: str | None = None,
    fitted: str = "fitted on these images: in-sample",
) -> tuple[dict[str, bytes], dict]:
    """Confusion matrix, most confident mistakes, reliability (before and, with ``temperature``, after scaling) and
    ROC (two classes) of ``probs``; returns (PNG bytes by file name, the numbers behind them). ``applied`` names a
    temperature already in ``probs`` (prediction), for the reliability legend."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    predicted = probs.argmax(axis=1)
    report = class_report(probs, targets, classes)  # per-class figures and the confusion matrix
    pictures = {"confusion.png": fg.plot_confusion(np.asarray(report["confusion"]), classes)}
    worst = fg.top_mistakes(probs, targets, MISTAKES)
    mistakes = [
        {
            "name": str(names[i]), "path": str(paths[i]), "true": classes[targets[i]],
            "predicted": classes[predicted[i]], "p_true": float(probs[i, targets[i]]),
        }
        for i in worst
    ]  # fmt: skip
    pictures["mistakes.png"] = fg.plot_mistakes(mistakes)
    numbers: dict = {"images": len(targets), "classes": list(classes), **report}
    if temperature is None:
        curves = {applied or "as predicted": fg.reliability_data(probs, targets)}
    else:
        label = f"T = {temperature:.3f}" if np.ndim(temperature) == 0 else "T per fold"
        label += f" ({fitted})"
        curves = {
            "before": fg.reliability_data(probs, targets),
            f"after {label}": fg.reliability_data(fg.scale_probs(probs, temperature), targets),
        }
    pictures["reliability.png"] = fg.plot_reliability(curves)
    numbers["reliability"] = curves
    numbers["ece"] = {name: data["ece"] for name, data in curves.items()}
    if len(classes) == 2:
        roc = fg.roc_data(probs[:, 1], targets == 1)
        numbers["auc"] = roc["auc"]
        if roc["auc"] is not None:
            pictures["roc.png"] = fg.plot_roc(roc, classes[1])
    numbers["accuracy"] = float((predicted == targets).mean()) if len(targets) else None
    numbers["mistakes"] = [{k: v for k, v in m.items() if k != "path"} for m in mistakes]
    return pictures, numbers


Checkpoints = str | os.PathLike | Sequence[str | os.PathLike]


def _members(checkpoints: Checkpoints) -> tuple[Path, ...]:
    """One checkpoint, or an ensemble's members, as paths."""
    if isinstance(checkpoints, (str, os.PathLike)):
        return (Path(checkpoints),)
    return tuple(Path(c) for c in checkpoints)


def gradcam_items(
    probs, targets, classes, names, paths, checkpoint_of: Callable[[int], Checkpoints],
    explained_by: Callable[[int], str] | None = None,
) -> list[dict]:  # fmt: skip
    """Grad-CAM overlays (:mod:`catdog.report.gradcam`) of the most confident mistakes and of a few confident correct
    predictions per class, each for the class predicted, from the checkpoint that predicted it
    (``checkpoint_of(row)``: its path; an ensemble's: its members' paths).

    An ensemble's map is the mean of its members' maps (each scaled to [0, 1], the mean scaled again), on the first
    member's eval crop: members whose crop is the same view at another size are resized to it, those that crop the
    image otherwise (another ``data.crop_pct``) are left out. Each item says whose map it is (``explained_by``:
    ``explained_by(row)``, by default the checkpoint's path or the members averaged) and holds its ``checkpoint``
    (one) or ``checkpoints`` (the members averaged)."""
    rows = gc.pick(np.asarray(probs), np.asarray(targets))
    members = {i: _members(checkpoint_of(i)) for i in rows}
    by_checkpoint: dict[Path, list[int]] = defaultdict(list)
    for i in rows:
        for checkpoint in members[i]:
            by_checkpoint[checkpoint].append(i)
    done: dict[tuple[int, Path], tuple] = {}  # (row, member): (uint8 crop, map, crop_pct)
    for checkpoint, chosen in by_checkpoint.items():
        model = load_classifier(checkpoint)
        if getattr(model, "exported", False):
            raise ValueError(f"{checkpoint} is an exported model file: Grad-CAM needs a checkpoint")
        crops = gc.eval_crops(model, [paths[i] for i in chosen])
        predicted = [int(np.argmax(probs[i])) for i in chosen]
        for i, crop, cam in zip(chosen, crops, gc.grad_cam(model, crops, predicted)):
            done[(i, checkpoint)] = (crop, cam, float(model.hparams.crop_pct))
        del model
    items = []
    for i in rows:
        c = int(np.argmax(probs[i]))
        crop, _, view = done[(i, members[i][0])]
        used = [m for m in members[i] if done[(i, m)][2] == view]
        item = {"name": str(names[i]), "true": classes[targets[i]], "predicted": classes[c], "p": float(probs[i][c])}
        if len(members[i]) == 1:
            item["checkpoint"] = str(members[i][0])
            whose = str(members[i][0])
            cam = done[(i, members[i][0])][1]
        else:
            item["checkpoints"] = [str(m) for m in used]
            left = len(members[i]) - len(used)
            whose = f"the mean of the maps of its {len(used)} members ({', '.join(map(str, used))})"
            whose += f", {left} member(s) that crop the image otherwise (data.crop_pct) left out" if left else ""
            cam = gc.mean_map([done[(i, m)][1] for m in used], tuple(crop.shape[-2:]))
        item["explained_by"] = explained_by(i) if explained_by is not None else whose
        items.append({**item, "image": crop.permute(1, 2, 0).numpy(), "cam": cam})
    return items


def gradcam_caption(items: Sequence[dict], intro: str) -> str:
    """What ``gradcam.png`` shows: ``intro``, then whose maps they are (once where every picture's is the same, else
    picture by picture)."""
    whose = list(dict.fromkeys(item["explained_by"] for item in items))
    if len(whose) <= 1:
        return f"{intro}: {whose[0]}." if whose else f"{intro}."
    return f"{intro}: " + "; ".join(f"{item['name']}: {item['explained_by']}" for item in items) + "."


def add_gradcam(
    pictures: dict, numbers: dict, *args, intro: str = "Grad-CAM for the class predicted", explained_by=None
) -> None:
    """``gradcam.png`` (and its rows in the numbers) from :func:`gradcam_items` (``args``: its arguments up to
    ``checkpoint_of``; ``explained_by`` as there), captioned by :func:`gradcam_caption` (``numbers["captions"]``, shown
    under the picture and logged); a failure (images moved, an exported model, a network whose stage output makes no
    map) is logged and leaves the rest of the report as it is."""
    try:
        items = gradcam_items(*args, explained_by=explained_by)
    except Exception as exc:  # noqa: BLE001 - the report is written without this picture
        log.warning("report: no Grad-CAM picture (%s: %s)", type(exc).__name__, exc)
        return
    pictures["gradcam.png"] = fg.plot_gradcam(items)
    numbers["gradcam"] = [{k: v for k, v in item.items() if k not in ("image", "cam")} for item in items]
    caption = gradcam_caption(items, intro)
    numbers.setdefault("captions", {})["gradcam.png"] = caption
    log.info("report: gradcam.png: %s", caption)


def _write_png(path: Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}"
    return str(v)


_CSS = (
    "body{font-family:sans-serif;margin:2em;max-width:1300px}table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f4f4f4}"
    "img{max-width:100%;border:1px solid #eee;margin:0.5em 0}"
)


def write_bundle(
    folder: Path,
    html_path: Path,
    title: str,
    pictures: dict[str, bytes],
    numbers: dict,
    tables: Sequence[tuple[str, Sequence[str], Sequence[Sequence]]] = (),
) -> Path:
    """PNGs and ``summary.json`` into ``folder``; ``html_path``: the tables and the pictures (embedded as data URIs,
    so the page needs no other file)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in pictures.items():
        _write_png(folder / name, data)
    atomic_write_text(folder / "summary.json", json.dumps(numbers, indent=2, default=_json) + "\n")
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"]
    parts.append(f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>")
    for caption, header, rows in tables:
        parts.append(f"<h2>{html.escape(caption)}</h2>{_table(header, rows)}")
    for name, data in pictures.items():
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        parts.append(f"<h2>{html.escape(name.removesuffix('.png'))}</h2><img alt='{html.escape(name)}' src='{uri}'>")
        caption = (numbers.get("captions") or {}).get(name)
        if caption:
            parts.append(f"<p>{html.escape(caption)}</p>")
    parts.append("</body></html>\n")
    atomic_write_text(html_path, "".join(parts))
    return html_path


def _json(v):
    if isinstance(v, (np.integer, np.floating)):
        return v.item()
    raise TypeError(type(v).__name__)


# ----- run folders -------------------------------------------------------------------------------------------------
def _folder_config(folder: Path) -> dict:
    path = folder / RECORD_DIR / "config.yaml"
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False) if path.is_file() else {}


def unfreeze_epoch(finetune: dict) -> int | None:
    """The epoch at which ``model.finetune`` unfreezes backbone stages (None: no head-only phase, or never)."""
    head_epochs, blocks = finetune.get("head_epochs", 0), finetune.get("blocks", -1)
    return int(head_epochs) if isinstance(head_epochs, int) and head_epochs > 0 and blocks != 0 else None


def _data_root(config: dict, data_root) -> Path | None:
    """``data_root``, else where the run's images lie by its recorded config: ``data.dir``, or with ``data.hf`` the
    folder its dataset was written to (written again where it was deleted)."""
    if data_root is not None:
        return Path(data_root)
    if (config.get("data") or {}).get("hf"):
        record = OmegaConf.create(config)  # as recorded; data.cache_dir's interpolation resolved here
        settings = {key: OmegaConf.select(record, f"data.{key}") for key in ("hf", "cache_dir")}
        settings["hf_columns"] = OmegaConf.to_container(OmegaConf.select(record, "data.hf_columns") or {})
        return Path(hf_data_root(settings))
    root = (config.get("data") or {}).get("dir")
    return Path(root) if isinstance(root, str) and "${" not in root else None


def _metrics_csv(folder: Path) -> Path | None:
    found = sorted(folder.glob("csv/**/metrics.csv")) or sorted(folder.glob("*/metrics.csv"))
    return found[0] if found else None


def _oof(folder: Path, root: Path | None):
    """``oof.csv``'s rows, probabilities, targets, classes, image names and their paths under ``root``."""
    rows, probs, labels, classes = read_oof(folder / OOF_NAME)
    targets = np.array([classes.index(label) for label in labels], dtype=np.int64)
    names = [r[0] for r in rows]
    return rows, probs, targets, classes, names, [fg.image_path(root, n) for n in names]


def write_run_report(
    run_dir: str | os.PathLike, data_root: str | os.PathLike | None = None, unfreeze: int | None = None
) -> Path:
    """The report of a finished single run (``oof.csv``, ``result.json``, the CSV metric log)."""
    run_dir = Path(run_dir)
    config = _folder_config(run_dir)
    root = _data_root(config, data_root)
    if unfreeze is None:
        unfreeze = unfreeze_epoch((config.get("model") or {}).get("finetune") or {})
    result = read_json(run_dir / RESULT_NAME)
    temperature = (result.get("calibration") or {}).get("temperature")
    _, probs, targets, classes, names, paths = _oof(run_dir, root)
    pictures, numbers = evaluation_pictures(probs, targets, classes, names, paths, temperature)
    if result.get("best_checkpoint"):
        best = run_dir / result["best_checkpoint"]
        add_gradcam(
            pictures, numbers, probs, targets, classes, names, paths, lambda i: best,
            intro="Grad-CAM for the class predicted, of the model whose prediction is shown",
            explained_by=lambda i: f"the run's best checkpoint, {best}",
        )  # fmt: skip
    metrics = _metrics_csv(run_dir)
    if metrics is not None:
        history = fg.epoch_history(metrics)
        pictures = {"curves.png": fg.plot_curves(history, unfreeze), **pictures}
        numbers["history"] = {k: {str(e): v for e, v in sorted(h.items())} for k, h in history.items()}
    numbers["unfreeze_epoch"] = unfreeze
    summary = [
        ("validation images", numbers["images"]), ("accuracy", result.get("val/acc")),
        ("log loss (best epoch, chosen on these images)", result.get("val/logloss")),
        ("log loss after temperature, cross-fitted (T from other parts of the set)",
         result.get("val/logloss_cross_fitted")),
        ("log loss after temperature, in-sample (T fitted on these images)",
         result.get("val/logloss_calibrated_in_sample", result.get("val/logloss_calibrated"))),
        ("temperature", temperature), *((f"ECE {k}", v) for k, v in numbers["ece"].items()),
        ("ROC AUC", numbers.get("auc")), ("epochs", result.get("epochs")), ("fit time (s)", result.get("fit_time_s")),
    ]  # fmt: skip
    tables = [
        ("Summary", ("", "value"), [r for r in summary if r[1] is not None]), _per_class_table(numbers),
        _mistakes_table(numbers),
    ]  # fmt: skip
    return write_bundle(run_dir / REPORT_DIR, run_dir / REPORT_HTML, f"Run {run_dir.name}", pictures, numbers, tables)


def _per_class_table(numbers: dict) -> tuple[str, Sequence[str], list]:
    rows = [(c, v["support"], v["precision"], v["recall"], v["f1"]) for c, v in numbers["per_class"].items()]
    caption = f"Per class (balanced accuracy {numbers['balanced_acc']:.4f}; the confusion matrix is confusion.png)"
    return caption, ("class", "images", "precision", "recall", "F1"), rows


def _mistakes_table(numbers: dict) -> tuple[str, Sequence[str], list]:
    rows = [(m["name"], m["true"], m["predicted"], m["p_true"]) for m in numbers["mistakes"]]
    return "Most confident mistakes", ("image", "true", "predicted", "P(true)"), rows


def write_kfold_report(run_dir: str | os.PathLike, data_root: str | os.PathLike | None = None) -> Path:
    """The report of an assembled k-fold run: out-of-fold pictures (each fold's temperature on its rows), every
    fold's validation log loss per epoch, and the per-fold table."""
    run_dir = Path(run_dir)
    config = _folder_config(run_dir)
    root = _data_root(config, data_root)
    manifest = read_json(run_dir / MANIFEST_NAME)
    rows, probs, targets, classes, names, paths = _oof(run_dir, root)
    # Each fold's rows scaled with the temperature fitted on the other folds (older runs: their own, in-sample).
    cross = all("temperature_cross_fitted" in m for m in manifest["members"])
    key = "temperature_cross_fitted" if cross else "temperature"
    temps = {str(m["fold"]): m.get(key) for m in manifest["members"]}
    per_row = [temps.get(r[2]) for r in rows]
    temperature = np.array(per_row, dtype=np.float64) if all(t is not None for t in per_row) else None
    fitted = "fitted on the other folds" if cross else "each fold's own: in-sample"
    pictures, numbers = evaluation_pictures(probs, targets, classes, names, paths, temperature, fitted=fitted)
    checkpoints = {str(m["fold"]): run_dir / m["checkpoint"] for m in manifest["members"]}
    add_gradcam(
        pictures, numbers, probs, targets, classes, names, paths, lambda i: checkpoints[rows[i][2]],
        intro="Grad-CAM for the class predicted, of the fold model whose out-of-fold prediction is shown (the one that "
        "did not train on the image)", explained_by=lambda i: f"fold {rows[i][2]}'s model",
    )  # fmt: skip
    issues = label_issue_items(probs, targets, classes, names, paths, rows)
    pictures["label_issues.png"] = fg.plot_mistakes(issues)
    numbers["label_issues"] = [{k: v for k, v in m.items() if k != "path"} for m in issues]
    curves = {}
    for member in manifest["members"]:
        metrics = _metrics_csv(run_dir / f"fold_{member['fold']}")
        if metrics is not None:
            curves[f"fold {member['fold']}"] = fg.epoch_history(metrics).get("val/logloss", {})
    if curves:
        pictures = {"folds.png": fg.plot_fold_curves(curves), **pictures}
    header = (
        "fold", "images", "acc", "logloss", "logloss_cross_fitted", "logloss_calibrated_in_sample", "temperature",
        "temperature_cross_fitted",
    )  # fmt: skip
    fold_rows = [[m.get(k) for k in header] for m in manifest["members"]]
    oof = manifest["oof"]
    fold_rows.append(["oof", *(oof.get(k) for k in header[1:6]), None, None])
    numbers["folds"] = [dict(zip(header, r)) for r in fold_rows]
    issue_rows = [(m["name"], m["fold"], m["true"], m["predicted"], m["p_true"], m["confident"]) for m in issues]
    tables = [
        ("Folds and out-of-fold scores", header, fold_rows), _per_class_table(numbers), _mistakes_table(numbers),
        ("Likely label issues (top of label_issues.csv)", ("image", "fold", "label", "predicted", "P(label)",
                                                           "confident"), issue_rows),
    ]  # fmt: skip
    return write_bundle(run_dir / REPORT_DIR, run_dir / REPORT_HTML, f"k-fold run {run_dir.name}", pictures, numbers,
                        tables)  # fmt: skip


def label_issue_items(probs, targets, classes, names, paths, rows, n: int = MISTAKES) -> list[dict]:
    """The ``n`` images whose out-of-fold prediction makes their label least likely (as ``label_issues.csv`` ranks
    them), for :func:`catdog.report.figures.plot_mistakes`."""
    order, confident = rank_label_issues(probs, targets)
    return [
        {
            "name": str(names[i]), "path": str(paths[i]), "fold": rows[i][2], "true": classes[targets[i]],
            "predicted": classes[int(np.argmax(probs[i]))], "p_true": float(probs[i, targets[i]]),
            "confident": bool(confident[i]),
        }
        for i in order[:n]
    ]  # fmt: skip


_SWEEP_COLUMNS = {"val/logloss": 2, "val/logloss_cross_fitted": 3, "val/acc": 4}


def sweep_points(rows: Sequence[tuple], metric: str = "val/logloss") -> dict[str, list[tuple[str, float]]]:
    """``{override key: [(value, metric of the job), ...]}`` from :func:`catdog.runs.sweep.sweep_rows` (jobs without a
    result left out)."""
    column = _SWEEP_COLUMNS.get(metric, 2)
    points: dict[str, list[tuple[str, float]]] = {}
    for row in rows:
        if row[column] is None:
            continue
        for override in row[1].split():
            if "=" in override:
                key, _, value = override.partition("=")
                points.setdefault(key.lstrip("+~"), []).append((value, float(row[column])))
    return points


def write_sweep_report(sweep_dir: str | os.PathLike, metric: str = "val/logloss") -> Path | None:
    """``summary.png`` beside ``summary.md``: ``metric`` of every job against each override that varies (metrics
    other than val/logloss, val/logloss_cross_fitted and val/acc: val/logloss)."""
    sweep_dir = Path(sweep_dir)
    rows = sweep_rows(sweep_dir)
    if not rows:
        return None
    metric = metric if metric in _SWEEP_COLUMNS else "val/logloss"
    path = sweep_dir / SUMMARY_PNG
    _write_png(path, fg.plot_metric_by_override(sweep_points(rows, metric), metric))
    return path


def write_evaluation_report(
    folder: Path,
    html_path: Path,
    probs: np.ndarray,
    targets: Sequence[int],
    classes: Sequence[str],
    names: Sequence[str],
    paths: Sequence[str],
    title: str,
    summary: Sequence[tuple[str, object]] = (),
    applied: str | None = None,
    checkpoint: Checkpoints | None = None,
) -> Path:
    """``predict.py labelled=true``: the evaluation pictures of the labelled images (as predicted: TTA, ensemble and
    temperature included), and Grad-CAM overlays from ``checkpoint`` when given: one checkpoint (its caption says
    the maps are that one model's), or an ensemble's members (the mean of their maps, :func:`gradcam_items`)."""
    pictures, numbers = evaluation_pictures(probs, targets, classes, names, paths, applied=applied)
    if checkpoint is not None:
        members = _members(checkpoint)
        intro = (
            "Grad-CAM for the class predicted, of one model" if len(members) == 1 else
            "Grad-CAM for the class the ensemble predicted, whose prediction is shown"
        )  # fmt: skip
        add_gradcam(pictures, numbers, probs, targets, classes, names, paths, lambda i: members, intro=intro)
    tables = [("Summary", ("", "value"), list(summary)), _per_class_table(numbers), _mistakes_table(numbers)]
    return write_bundle(folder, html_path, title, pictures, numbers, tables)


def write_folder_report(folder: str | os.PathLike, data_root: str | os.PathLike | None = None) -> Path:
    """The report of whatever ``folder`` holds: a k-fold run (manifest), a single run (result.json) or a sweep."""
    folder = Path(folder)
    if (folder / MANIFEST_NAME).is_file():
        return write_kfold_report(folder, data_root)
    if (folder / RESULT_NAME).is_file():
        return write_run_report(folder, data_root)
    if (folder / SUMMARY_MD).is_file() or (folder / SWEEP_RECORD).is_file():
        multirun = folder / SWEEP_RECORD
        metric = OmegaConf.load(multirun).get("optimized_metric") if multirun.is_file() else None
        path = write_sweep_report(folder, metric or "val/logloss")
        if path is not None:
            return path
    raise DatasetError(
        f"{folder} holds no finished run, k-fold run or sweep (no {RESULT_NAME}, {MANIFEST_NAME} or summary.md)"
    )


def safe_report(what: str, fn, *args, **kwargs) -> Path | None:
    """Write a report; a failure is logged, never raised (the run's results are already written)."""
    try:
        path = fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - a report must not fail a finished run
        log.warning("could not write the %s report: %s: %s", what, type(exc).__name__, exc)
        return None
    if path is not None:
        log.info("report: %s", path)
    return path
