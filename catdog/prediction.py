"""``predict(cfg)``: checkpoint + images -> submission CSV, or accuracy / log loss on a labelled folder."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from catdog.blending import Blend, check_same_rows, fit_oof_blend, read_oof_run
from catdog.data.csv_data import read_csv_dataset, read_csv_images
from catdog.data.datamodule import ImageDataset, default_num_workers, make_loader
from catdog.data.decode import EvalGeometry, decoder_description, fast_loader, resolve_decoder
from catdog.data.hf_data import INPUT_PREFIX, data_root, hf_input, is_hf_input
from catdog.data.images import find_bad_images, format_bad_images
from catdog.data.layouts import find_unlabelled, image_ids, read_labelled, row_ids
from catdog.data.transforms import eval_resize_size, eval_transform
from catdog.ensemble import combine
from catdog.errors import BadImageError, CheckpointError, ConfigError, DatasetError
from catdog.fileio import atomic_write_text, check_writable
from catdog.inference import load_classifier
from catdog.metrics import accuracy, log_loss
from catdog.models.optim import plain
from catdog.models.precision import autocast_dtype, resolve_device
from catdog.oof_views import oof_with_views
from catdog.progress import Periodic
from catdog.report.build import safe_report, write_evaluation_report
from catdog.runs.layout import BLEND_NAME, SPLIT_NAME, is_split_file, markdown_table, read_split
from catdog.runs.resume import checkpoint_run
from catdog.runs.selection import resolve_members, resolve_runs
from catdog.submission import clip_probs, submission_text, write_submission
from catdog.validation import check_predict_config

log = logging.getLogger(__name__)


@torch.inference_mode()
def predict_loader(
    model,
    loader,
    tta: int,
    device: torch.device,
    precision: str = "auto",
    compile: bool = False,
    temperature: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (N, K), dataset indices (N,)) over a loader of ``(x, label, index)`` batches; logits are divided
    by ``temperature`` when given.

    ``compile`` runs the forward pass through ``torch.compile`` (seconds of compilation up front, then faster:
    see docs/benchmarks.md).
    """
    model.to(device).eval()
    dtype = autocast_dtype(precision, device)
    # An exported model file runs as it was exported: nothing to compile.
    compile = compile and not getattr(model, "exported", False)
    forward = torch.compile(model.predict_proba) if compile else model.predict_proba
    probs, indices = [], []
    with Periodic(len(loader.dataset), "predicting") as progress:
        for x, _, idx in loader:
            progress.update(len(idx))
            if x.numel() == 0:
                continue
            probs.append(forward_batch(forward, x, tta, device, dtype, temperature))
            indices.append(idx)
    if not probs:
        return np.zeros((0, len(model.classes))), np.zeros(0, dtype=np.int64)
    return torch.cat(probs).numpy().astype(np.float64), torch.cat(indices).numpy()


def forward_batch(forward, x: torch.Tensor, tta: int, device: torch.device, dtype, temperature) -> torch.Tensor:
    """One batch of uint8 crops through ``forward`` (a model's ``predict_proba``) as prediction runs it: on ``device``,
    under autocast to ``dtype`` (None: float32), the probabilities back as float32 on the CPU."""
    x = x.to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext():
        p = forward(x, tta, temperature)
    return p.float().cpu()


def view_settings(precision: str, device: torch.device, decoder: str) -> dict[str, str]:
    """What re-predicted out-of-fold rows depend on besides the views (:mod:`catdog.oof_views` keeps them under
    it): the autocast dtype and the decoder. ``predict.py blend=oof`` and distillation's teacher share kept rows."""
    return {"precision": str(autocast_dtype(precision, device)), "decoder": decoder}


def _screen(paths: list, policy: str, workers: int) -> tuple[list, list[tuple[str, str]]]:
    """Decode every image before any compute; error lists all bad files, skip drops them."""
    bad = find_bad_images(paths, full=True, workers=max(2, workers))
    if bad and policy == "error":
        raise BadImageError(
            bad[0][0],
            f"{len(bad)} of {len(paths)} image(s) cannot be decoded; nothing was predicted "
            f"(pass on_bad_image=skip to predict the rest):\n{format_bad_images(bad, limit=1000)}",
        )
    bad_set = {p for p, _ in bad}
    return [p for p in paths if str(p) not in bad_set], bad


def _hf_settings(cfg: DictConfig, model) -> tuple[dict, str | None]:
    """(``data.hf_columns``, completed with the checkpoint's, and where the checkpoint's run kept its caches) for
    ``input=hf:...``."""
    trained = model.datamodule_hparams
    given = plain(OmegaConf.select(cfg, "data.hf_columns")) or {}
    columns = {**(trained.get("hf_columns") or {}), **{k: v for k, v in given.items() if v}}
    return columns, trained.get("cache_dir")


def _hf_source(cfg: DictConfig, model) -> str | None:
    """``input=hf:...``; with no ``input`` nor ``data.dir``, the test split of the checkpoint's ``data.hf``."""
    if is_hf_input(cfg.input):
        return cfg.input
    trained = model.datamodule_hparams.get("hf")
    if not cfg.input and trained and not OmegaConf.select(cfg, "data.dir"):
        return INPUT_PREFIX + trained
    return None


def _data_root(cfg: DictConfig, model, needed: str = "input= (or data.dir=) is required") -> Path:
    """``data.dir``, by default the dataset the checkpoint was trained on (with ``data.hf``, the folder its images
    were written to); ``needed`` opens the error without one."""
    if model.datamodule_hparams.get("hf") and not OmegaConf.select(cfg, "data.dir"):
        columns, cache_dir = _hf_settings(cfg, model)
        return Path(data_root({"hf": model.datamodule_hparams["hf"], "hf_columns": columns, "cache_dir": cache_dir}))
    root = OmegaConf.select(cfg, "data.dir") or model.datamodule_hparams.get("dir")
    if not root:
        raise ConfigError(f"{needed}: {model.checkpoint_path} does not say which dataset it was trained on")
    return Path(root)


def _default_input(cfg: DictConfig, model) -> Path:
    """``data.dir/test``, where ``data.dir`` defaults to the dataset the checkpoint was trained on."""
    return _data_root(cfg, model) / "test"


def predict_member(
    model,
    *,
    paths: list[str],
    tta: int,
    device,
    batch_size: int,
    workers: int,
    precision: str,
    compile: bool,
    temperature: float | None,
    views: str,
    decoder: str = "pil",
) -> np.ndarray:
    """One model's probabilities for ``paths``, in that order, with its own preprocessing and temperature.

    ``decoder``: ``pil`` decodes and resizes with PIL in DataLoader workers (as training's validation does); a JPEG
    library (``torchcodec`` | ``torchvision``, :func:`catdog.data.decode.resolve_decoder`) with
    :func:`catdog.data.decode.fast_loader` (nvJPEG on CUDA; libjpeg-turbo or PIL's draft mode and a tensor resize in
    DataLoader workers on the CPU; the same pixels within :data:`catdog.data.decode.TOLERANCE`)."""
    hp = model.hparams
    square = tta > 0 and views == "crops"
    if decoder != "pil":
        geometry = EvalGeometry(hp.image_size, hp.crop_pct, square, hp.interpolation)
        loader = fast_loader(paths, geometry, batch_size, device, workers, library=decoder)
    else:
        transform = eval_transform(hp.image_size, hp.crop_pct, square, hp.interpolation)
        dataset = ImageDataset(paths, None, transform, "error", eval_resize_size(hp.image_size, hp.crop_pct))
        loader = make_loader(dataset, batch_size, workers)
    probs, order = predict_loader(model, loader, tta, device, precision, compile, temperature)
    out = np.empty_like(probs)
    out[order] = probs
    return out


def predict(cfg: DictConfig):
    """Predict ``input`` with one checkpoint or an ensemble (members loaded one at a time), with TTA."""
    check_predict_config(cfg)
    tta, views, clip, policy = cfg.tta, cfg.get("tta_views", "zoom"), cfg.clip, cfg.on_bad_image
    mode, precision = cfg.get("ensemble", "prob"), str(cfg.get("precision", "auto"))
    device = resolve_device(cfg.device)
    decoder = resolve_decoder(cfg.get("decoder", "auto"))
    log.info("decoder=%s: %s", cfg.get("decoder", "auto"), decoder_description(decoder))
    if cfg.labelled:
        outputs = evaluation_outputs(Path(cfg.output))
        for path in outputs.values():
            check_writable(path, cfg.overwrite)
    else:
        output = check_writable(cfg.output, cfg.overwrite)
    workers = default_num_workers() if cfg.num_workers is None else int(cfg.num_workers)
    predict_one = functools.partial(
        predict_member, tta=tta, device=device, batch_size=cfg.batch_size, workers=workers, precision=precision,
        compile=bool(cfg.get("compile")), views=views, decoder=decoder,
    )  # fmt: skip
    settings = view_settings(precision, device, decoder)
    members, blend, blend_path = _choose_members(
        cfg, outputs["predictions"] if cfg.labelled else output, predict_one, settings
    )
    applied = blend.announce(mode, tta, views) if blend is not None else None
    model = load_classifier(members[0])
    classes = model.classes
    log.info("%d member(s): %s; classes %s", len(members), ", ".join(str(m) for m in members), classes)
    source = _hf_source(cfg, model)
    if source is not None:  # a Hugging Face dataset's split, its images written out as files
        paths, labels, ids = hf_input(source, *_hf_settings(cfg, model), classes, cfg.labelled)
    else:
        source = Path(cfg.input) if cfg.input else _default_input(cfg, model)
        paths, labels, ids = _input_images(cfg, model, source, classes)
    kept, bad = _screen(paths, policy, workers)
    if not kept:
        raise DatasetError(f"no readable images in {source}")
    member_probs, temperatures = [], []
    calibrate = bool(cfg.get("calibrate", True))
    for i, member in enumerate(members):
        if i > 0:
            model = load_classifier(member)
            if model.classes != classes:
                raise CheckpointError(
                    f"ensemble members disagree on classes: {members[0]} has {classes}, {member} has {model.classes}"
                )
        temperature = model.temperature if calibrate and blend is None else None
        temperatures.append(temperature)
        log.info(
            "%s: %s", member,
            f"temperature {temperature:.3f} applied" if temperature else "as predicted (the blend's T applies)"
            if blend is not None else
            "uncalibrated" + (" (calibrate=false)" if model.temperature else " (no temperature in the checkpoint)"),
        )  # fmt: skip
        probs = predict_one(model, paths=kept, temperature=temperature)
        if not np.isfinite(probs).all():
            raise CheckpointError(f"{member} produced non-finite probabilities (its weights hold NaN or inf)")
        member_probs.append(probs)
        del model
    if blend is not None:
        probs = clip_probs(blend.apply(_per_run(member_probs, blend, mode)), clip)
        temperatures = [blend.temperature]
    else:
        probs = clip_probs(combine(member_probs, mode), clip)
    id_of = dict(zip(paths, ids))
    kept_ids = [id_of[p] for p in kept]
    if bad:
        missing = sorted(id_of[p] for p, _ in bad)
        log.warning("%d image(s) skipped as unreadable; ids missing from the output: %s", len(bad), ", ".join(missing))

    if labels is not None:
        label_of = dict(zip(paths, labels))
        targets = np.asarray([label_of[p] for p in kept])
        result = _report(
            probs, targets, kept_ids, classes, tta, outputs, temperatures, source, members, kept, cfg.overwrite
        )
        if blend is not None:
            _write_blend(blend_path, blend, outputs["predictions"], tta, applied, cfg.overwrite)
        return result
    path = write_submission(output, kept_ids, probs, classes, overwrite=cfg.overwrite)
    log.info("wrote %d predictions (%d member(s), tta=%d) to %s", len(kept_ids), len(members), tta, path)
    print(f"wrote {path}")
    if blend is not None:
        _write_blend(blend_path, blend, path, tta, applied, cfg.overwrite)
    return path


def _input_images(cfg: DictConfig, model, source: Path, classes) -> tuple[list[str], list[int] | None, list[str]]:
    """The images to predict, their labels (``labelled=true``; else None) and their ids, from ``input``: a folder or
    one image; a run's ``split.csv`` (its validation images); any other CSV, read as ``data.csv`` is
    (:mod:`catdog.data.csv_data`, the images under ``data.dir``, the ids the image column's values)."""
    if source.suffix.lower() == ".csv" and source.is_file():
        root = _data_root(cfg, model, f"data.dir= is required: the image paths in input={source} are read under it")
        if is_split_file(source):
            if not cfg.labelled:
                raise ConfigError(f"input={source} is a run's split.csv: add labelled=true to score its images")
            images = read_split(source, root, classes)
            return images.paths, images.labels, row_ids(images.paths, root)
        given = plain(OmegaConf.select(cfg, "data.csv_columns")) or {}
        columns = {**(model.datamodule_hparams.get("csv_columns") or {}), **{k: v for k, v in given.items() if v}}
        outside = bool(OmegaConf.select(cfg, "data.csv_outside_dir", default=False))
        if cfg.labelled:
            images = read_csv_dataset(source, root, columns, classes, outside_dir=outside).images
            return images.paths, images.labels, [Path(os.path.relpath(p, root)).as_posix() for p in images.paths]
        paths, ids = read_csv_images(source, root, columns, outside_dir=outside)
        return paths, None, ids
    if cfg.labelled:
        images = read_labelled(source, classes=classes)
        # scored rows need no submission ids (Cat/0.jpg and Dog/0.jpg both exist)
        return images.paths, images.labels, row_ids(images.paths, source)
    paths = [str(p) for p in find_unlabelled(source)]
    return paths, None, image_ids(paths)


def _choose_members(
    cfg: DictConfig, written: Path, predict_one: Callable, settings: dict
) -> tuple[list[Path], Blend | None, Path | None]:
    """The checkpoints to predict with; with ``blend=oof`` also the blend fitted on the k-fold runs' out-of-fold rows
    (with ``tta``, made with the same views by ``predict_one`` and ``settings``: :mod:`catdog.oof_views`) and where
    its ``blend.json`` goes (beside ``written``, the predictions)."""
    if cfg.get("blend", "mean") != "oof":
        return resolve_members(cfg.ckpt, cfg.paths.log_dir), None, None
    runs = [read_oof_run(r) for r in resolve_runs(cfg.ckpt, cfg.paths.log_dir)]
    if cfg.tta:
        check_same_rows(runs)  # before any image is predicted
        views = cfg.get("tta_views", "zoom")
        runs = [
            oof_with_views(
                run, _data_root(cfg, load_classifier(run.checkpoints[0])), cfg.tta, views, settings,
                lambda model, paths: predict_one(model, paths=paths, temperature=None),
            )
            for run in runs
        ]  # fmt: skip
    blend = fit_oof_blend(runs)
    path = check_writable(written.with_name(BLEND_NAME), cfg.overwrite)
    log.info(
        "blend=oof: weights %s, T = %.3f, fitted on %d out-of-fold rows",
        [round(w, 3) for w in blend.weights], blend.temperature, blend.record["blend"]["images"],
    )  # fmt: skip
    print(blend.table())
    return [c for run in blend.runs for c in run.checkpoints], blend, path


def _per_run(member_probs: list[np.ndarray], blend: Blend, mode: str) -> list[np.ndarray]:
    """Each blended run's prediction: its fold models combined (``ensemble=prob|logit``)."""
    out, start = [], 0
    for run in blend.runs:
        out.append(combine(member_probs[start : start + len(run.checkpoints)], mode))
        start += len(run.checkpoints)
    return out


def _write_blend(path: Path, blend: Blend, predictions: Path, tta: int, applied: str, overwrite: bool) -> None:
    """``blend.json`` beside the predictions it made, with what the blend was applied to (:meth:`Blend.announce`)."""
    record = {**blend.record, "predictions": str(predictions), "tta": tta, "applied_to": applied}
    atomic_write_text(path, json.dumps(record, indent=2) + "\n", overwrite=overwrite)
    print(f"wrote {path}")


def scored_in_sample(source, members) -> str | None:
    """The member checkpoint whose own run's ``split.csv`` is the input (``input=RUN/split.csv``): its validation
    images chose that checkpoint's epoch and fitted its temperature, so scores on them are in-sample."""
    source = Path(source)
    if source.name != SPLIT_NAME:
        return None
    return next((str(m) for m in members if checkpoint_run(m) == source.resolve().parent), None)


def top_losses_table(probs: np.ndarray, targets: np.ndarray, ids, classes, n: int = 10) -> str:
    """The ``n`` images the model got most confidently wrong (highest per-image log loss): worth a look for
    mislabelled or odd pictures."""
    p_true = probs[np.arange(len(targets)), targets]
    worst = np.argsort(p_true, kind="stable")[:n]
    lines = ["| id | true label | predicted | P(true label) |", "|---|---|---|---:|"]
    lines += [
        f"| {ids[i]} | {classes[targets[i]]} | {classes[int(probs[i].argmax())]} | {p_true[i]:.4f} |" for i in worst
    ]
    return "\n".join(lines)


def evaluation_outputs(output: Path) -> dict[str, Path]:
    """Where ``labelled=true`` writes: per-image predictions at ``output`` (``predictions.csv`` in place of the
    default ``submission.csv``), and the scores beside them as ``evaluation.md`` / ``.json``, the pictures in
    ``evaluation/`` and ``evaluation.html`` (``<stem>_evaluation`` for another name)."""
    if output.name == "submission.csv":
        output = output.with_name("predictions.csv")
    stem = "evaluation" if output.stem == "predictions" else f"{output.stem}_evaluation"
    return {
        "predictions": output, "md": output.with_name(f"{stem}.md"), "json": output.with_name(f"{stem}.json"),
        "html": output.with_name(f"{stem}.html"),
    }  # fmt: skip


def _report(
    probs, targets, ids, classes, tta, outputs, temperatures, source, members, paths, overwrite: bool = False
) -> dict[str, float]:
    """Score a labelled set: accuracy and log loss printed and saved, per-image predictions with their labels."""
    p, t = torch.from_numpy(probs), torch.from_numpy(targets)
    scores = {"images": len(ids), "accuracy": accuracy(p, t), "log_loss": log_loss(p, t)}
    applied = [f"{v:.3f}" for v in temperatures if v]
    calibrated = f"T = {', '.join(applied)}" if applied else "no"
    in_sample = scored_in_sample(source, members)
    if in_sample:
        calibrated += " (in-sample)" if applied else ""
        log.warning(
            "%s lists the validation images of %s, which chose its best epoch%s: these figures are in-sample",
            source, in_sample, " and fitted its temperature" if applied else "",
        )  # fmt: skip
    table = markdown_table(
        ("images", "tta", "calibrated", "accuracy", "log loss"),
        [(len(ids), tta, calibrated, f"{scores['accuracy']:.4f}", f"{scores['log_loss']:.4f}")],
    )
    worst = top_losses_table(probs, targets, ids, classes)
    print(table)
    print(worst)
    text = submission_text(ids, probs, classes).splitlines()
    label_of = dict(zip(ids, (classes[i] for i in targets)))
    rows = [text[0] + ",true_label"] + [f"{line},{label_of[line.split(',', 1)[0]]}" for line in text[1:]]
    # predict() checked every output before any work; each write checks again in the same step as it creates the file
    # (another process may have written one meanwhile): the first refused leaves the rest unwritten
    atomic_write_text(outputs["predictions"], "\n".join(rows) + "\n", overwrite=overwrite)
    header = f"# Evaluation of {source}\n\nmembers: {', '.join(str(m) for m in members)}\n\n"
    atomic_write_text(outputs["md"], f"{header}{table}\nMost confident mistakes:\n\n{worst}\n", overwrite=overwrite)
    record = {
        **scores, "tta": tta, "temperatures": list(temperatures), "input": str(source),
        "members": [str(m) for m in members], "classes": list(classes), "in_sample": bool(in_sample),
    }  # fmt: skip
    atomic_write_text(outputs["json"], json.dumps(record, indent=2) + "\n", overwrite=overwrite)
    summary = [
        ("images", len(ids)), ("members", len(members)), ("tta", tta), ("calibrated", calibrated),
        ("accuracy", scores["accuracy"]), ("log loss", scores["log_loss"]),
    ]  # fmt: skip
    safe_report(
        "evaluation", write_evaluation_report, outputs["html"].with_suffix(""), outputs["html"], probs, targets,
        classes, ids, paths, f"Evaluation of {source}", summary, f"as predicted (T: {calibrated})", members,
    )  # fmt: skip
    print(f"wrote {outputs['predictions']}, {outputs['md'].name}, {outputs['json'].name} and {outputs['html'].name}")
    return scores
