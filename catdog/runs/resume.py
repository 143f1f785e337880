"""Continuing from a checkpoint: resuming an interrupted run (``ckpt_path``, or a run restarted in its folder) and
starting a new run from a checkpoint's weights (``model.init``).

A resume continues the checkpoint's run exactly: the restored optimizer, learning-rate schedule, weight average and
step counter only mean what they meant if the run is the same. So a resume is refused, in one line naming each key,
when the network, classes, optimizer, schedule (``model.scheduler``, ``trainer.max_epochs``, the number of steps it
was built for), weight averaging or train/validation split differ. "Train more from this checkpoint" is another
thing: ``model.init=PATH`` starts a new run (new folder, optimizer, schedule) from the checkpoint's weights, after
checking the architecture and classes and that none of this run's validation images trained that checkpoint.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from catdog.checkpoints import read_checkpoint, upgrade_state_dict
from catdog.data.csv_data import CSV_COLUMNS
from catdog.data.hf_data import HF_COLUMNS
from catdog.data.pseudo import PSEUDO_DEFAULTS
from catdog.errors import CheckpointError, ConfigError
from catdog.models.optim import plain
from catdog.runs.layout import CHECKPOINT_DIR, KFOLD_SETTINGS, LAST_NAME, SPLIT_NAME, trained_images, write_json

# What a resumed run must share with its checkpoint: the network, and what the restored optimizer state, parameter
# groups and learning-rate schedule were built from (a changed lr would be silently replaced by the restored one).
RESUME_KEYS = (
    "arch", "classes", "head", "head_hidden", "width", "optimizer", "decay_bias_and_norm", "finetune", "scheduler",
    "scheduler_interval", "distill",
)  # fmt: skip
# What a checkpoint's weights must share with the model that model.init loads them into (and its classes).
INIT_KEYS = ("arch", "head", "head_hidden", "width")
#: Checkpoint key of the settings a resume must keep that are not the model's (:func:`run_settings`).
RUN_SETTINGS_KEY = "run_settings"
TRAIN_MORE = "to train more from its weights, start a new run with model.init={path}"
#: Key, in :data:`RUN_SETTINGS_KEY`, of the digest of a distilled run's teacher targets (catdog.distill).
DISTILL_KEY = "distill.targets_digest"


def _flat(value, prefix: str) -> dict:
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in _flat(sub, f"{prefix}.{key}").items()}
    return {prefix: value}


def _differences(before: dict, now: dict) -> list[str]:
    """``key: checkpoint A vs config B`` for every flattened key whose values differ, in the order they appear."""
    keys = list({**before, **now})
    return [f"{k}: checkpoint {before.get(k)!r} vs config {now.get(k)!r}" for k in keys if before.get(k) != now.get(k)]


def _model_differences(saved: dict, hparams, keys) -> list[str]:
    """:func:`_differences` of ``keys`` between a checkpoint's hyperparameters and a model's (or ``cfg.model``)."""
    diffs = []
    for key in keys:
        name = key if key == "classes" else f"model.{key}"
        diffs += _differences(_flat(plain(saved.get(key)), name), _flat(plain(hparams.get(key)), name))
    return diffs


def run_settings(cfg: DictConfig) -> dict[str, Any]:
    """The settings outside the model that a resumed run must keep: ``trainer.max_epochs`` and the weight averaging
    (``callbacks.averaging``, None without one). The module adds the schedule's step counts when it saves."""
    averaging = (cfg.get("callbacks") or {}).get("averaging")
    return {"trainer.max_epochs": cfg.trainer.get("max_epochs"), "callbacks.averaging": plain(averaging)}


def check_resume(path: str, ckpt: dict, model, cfg: DictConfig) -> None:
    """Refuse to resume from checkpoint ``path`` (``ckpt``, already read) when it does not match this run: another
    network, classes, optimizer or schedule (the model's settings), or another ``trainer.max_epochs`` (with a
    schedule or SWA, which depend on it) or weight averaging. One line names each differing key with both values."""
    diffs = _model_differences(ckpt["hyper_parameters"], model.hparams, RESUME_KEYS)
    saved = ckpt.get(RUN_SETTINGS_KEY)
    if isinstance(saved, dict):  # checkpoints written before these settings were recorded are not checked
        now = run_settings(cfg)
        swa = "StochasticWeightAveraging" in str((now["callbacks.averaging"] or {}).get("_target_", ""))
        if saved.get("total_steps") is not None or swa:  # the schedule, or SWA's start, depends on the run's length
            key = "trainer.max_epochs"
            diffs += _differences({key: saved.get(key)}, {key: now[key]})
        diffs += _differences(
            _flat(saved.get("callbacks.averaging"), "callbacks.averaging"),
            _flat(now["callbacks.averaging"], "callbacks.averaging"),
        )
    if diffs:
        raise CheckpointError(
            f"cannot resume from {path}, it does not match this run: {'; '.join(diffs)}. A resumed run continues "
            f"the checkpoint's own schedule: resume with the checkpoint's values, or {TRAIN_MORE.format(path=path)}"
        )


def check_same_teacher(path: str, ckpt: dict, digest: str | None) -> None:
    """A resumed distilled run must learn from the targets it started with (``digest``: this run's, None without a
    teacher): another teacher, or the same runs predicted differently, is refused."""
    saved = (ckpt.get(RUN_SETTINGS_KEY) or {}).get(DISTILL_KEY)
    if saved == digest:
        return
    raise CheckpointError(
        f"cannot resume from {path}: its run learnt from teacher targets with digest {saved}, this run's have "
        f"{digest} (distill.teacher, distill.tta or the teacher's checkpoints changed). Resume with the same teacher, "
        f"or {TRAIN_MORE.format(path=path)}"
    )


def check_schedule_length(saved: dict | None, total_steps: int, steps_per_epoch: int) -> None:
    """A resumed run's learning-rate schedule must be the one its checkpoint was trained on: the same total number of
    optimizer steps (``saved``: the checkpoint's :data:`RUN_SETTINGS_KEY` record, None for a fresh run)."""
    if not isinstance(saved, dict) or saved.get("total_steps") in (None, total_steps):
        return
    raise CheckpointError(
        f"cannot resume: the checkpoint's learning-rate schedule spans {saved['total_steps']} optimizer steps "
        f"({saved.get('steps_per_epoch')} per epoch), this run's {total_steps} ({steps_per_epoch} per epoch); "
        "trainer.max_epochs, data.batch_size, trainer.devices, trainer.num_nodes, trainer.accumulate_grad_batches or "
        "trainer.limit_train_batches changed. Resume with the checkpoint's values, or "
        f"{TRAIN_MORE.format(path='CHECKPOINT')}"
    )


def checkpoint_run(checkpoint: str | os.PathLike) -> Path | None:
    """The catdog run folder that ``checkpoint`` belongs to (``RUN/checkpoints/*.ckpt`` with ``RUN/split.csv``), if
    any."""
    path = Path(checkpoint).resolve()
    run = path.parent.parent
    return run if path.parent.name == CHECKPOINT_DIR and (run / SPLIT_NAME).is_file() else None


def _assignments(text: str) -> dict[str, tuple[str, ...]]:
    """``path -> (label, its split or fold, "split" or "fold")`` of a split.csv's text."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, [])
    return {row[0]: (*row[1:], header[-1] if header else "") for row in reader if row}


def check_same_split(resume: str, run: Path | None, out_dir: Path, split: str) -> None:
    """A resumed run must keep the split its checkpoint was trained on (``run``: the checkpoint's run folder):
    otherwise images it trained on would be scored as validation images (a changed ``seed``, ``data.val_fraction``
    or data folder). Images only one side lists (unreadable ones skipped, found with other ``data.verify`` or
    ``data.cache`` settings) do not count: the split itself is made over every listed file."""
    if run is None:
        return
    before, now = _assignments((run / SPLIT_NAME).read_text()), _assignments(split)
    common = before.keys() & now.keys()
    if common and all(before[p] == now[p] for p in common):
        return
    here = run == out_dir.resolve()
    raise ConfigError(
        f"cannot resume from {resume}: this run's train/validation split differs from the one it was trained on "
        f"({run / 'split.csv'}), so images it trained on would be scored as validation images; use the same seed, "
        f"data.dir and data.* settings{'' if here else ', or resume it in its own folder: ' + resume_command(run)}"
    )


# ----- model.init ------------------------------------------------------------------------------------------------
def read_init(path: str | os.PathLike) -> dict:
    """The checkpoint ``model.init`` names, read without unpickling code."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.init={path}: no such checkpoint (a catdog .ckpt file: RUN/checkpoints/best.ckpt)")
    return read_checkpoint(path)


def check_init(cfg: DictConfig) -> None:
    """Before any data is read: ``model.init`` names a catdog checkpoint of the configured architecture and head."""
    ckpt = read_init(cfg.model.init)
    diffs = _model_differences(ckpt["hyper_parameters"], cfg.model, INIT_KEYS)
    if diffs:
        raise CheckpointError(f"model.init={cfg.model.init} does not fit this model: {'; '.join(diffs)}")


def load_init(model, path: str | os.PathLike, ckpt: dict) -> None:
    """Load the weights of checkpoint ``path`` (``ckpt``) into ``model`` for a new run, after checking that both have
    the same architecture, head and classes (named in one line when they do not). An EMA run's checkpoint holds the
    averaged weights, which are the ones loaded."""
    diffs = _model_differences(ckpt["hyper_parameters"], model.hparams, (*INIT_KEYS, "classes"))
    if diffs:
        raise CheckpointError(f"model.init={path} does not fit this model: {'; '.join(diffs)}")
    model.load_state_dict(upgrade_state_dict(ckpt["state_dict"]), strict=True)


def check_init_split(path: str | os.PathLike, validation: list[str]) -> None:
    """Refuse ``model.init=path`` when the checkpoint trained on any of this run's ``validation`` images (paths
    relative to the data folder): their scores, the checkpoint choice and the temperature would be in-sample. Only
    checkpoints inside a catdog run folder (with its split.csv) can be checked."""
    path = Path(path).expanduser()
    run = checkpoint_run(path)
    if run is None:
        return
    seen = sorted(set(validation) & trained_images(run))
    if seen:
        raise ConfigError(
            f"model.init={path} was trained on {len(seen)} of this run's {len(validation)} validation images (e.g. "
            f"{seen[0]}; its split: {run / 'split.csv'}), so validation would score images the model has learned. "
            "Use the split that checkpoint was trained on (the same seed, data.dir and data.val_fraction or "
            "data.folds / data.fold), or start from a checkpoint trained on other images"
        )


def task_overrides() -> list[str]:
    """The command-line overrides of this Hydra job ([] outside Hydra)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def resume_command(run_dir: Path, overrides: list[str] | None = None, seed: int | None = None) -> str:
    """The command that resumes the run in ``run_dir``: the same overrides, in the same folder, with the ``seed`` the
    run used in place of a ``seed=`` override (``seed=null`` draws a new one)."""
    keep = [o for o in (task_overrides() if overrides is None else overrides) if not o.startswith("hydra.run.dir=")]
    if seed is not None:
        keep = [f"seed={seed}" if o.startswith("seed=") else o for o in keep]
    args = [*keep, f"hydra.run.dir={run_dir}"]
    return " ".join(["python", "train.py", *(shlex.quote(a) for a in args)])


def resume_path(cfg: DictConfig, out_dir: Path) -> str | None:
    """An explicit ``ckpt_path``, else this folder's own ``last.ckpt`` (a run restarted in its folder resumes)."""
    if cfg.get("ckpt_path"):
        path = Path(cfg.ckpt_path).expanduser()
        if cfg.model.get("init"):
            raise ConfigError(
                f"ckpt_path={path} resumes a run (its weights, optimizer and schedule) and model.init={cfg.model.init} "
                "starts a new one from a checkpoint's weights: set one of them"
            )
        if not path.is_file():
            raise ConfigError(f"ckpt_path={path}: no such checkpoint to resume from")
        return str(path)
    last = out_dir / CHECKPOINT_DIR / LAST_NAME
    return str(last) if last.is_file() else None


# Settings added to catdog after a k-fold run may have been started, with the value such runs used.
_ADDED_LATER = {
    "data.pseudo": PSEUDO_DEFAULTS,
    "data.exclude": None,
    "data.csv": None,
    "data.sampler": None,
    "model.class_weights": None,
    "data.csv_columns": CSV_COLUMNS,
    "data.csv_outside_dir": False,
    "data.hf": None,
    "data.hf_columns": HF_COLUMNS,
    "data.interpolation": "bilinear",
    "data.pipeline": "workers",
    "trainer.num_nodes": 1,
    "trainer.strategy": "auto",
    "trainer.sync_batchnorm": False,
}


# Settings that do not change what a fold computes: a k-fold run may be resumed with other values.
_RESUME_FREE = {
    "data": {"num_workers", "eval_batch_size", "verify", "cache", "cache_dir", "demo"},
    "trainer": {"default_root_dir", "enable_progress_bar", "enable_model_summary", "log_every_n_steps"},
}


def check_kfold_settings(cfg: DictConfig, run_dir: Path, write: bool = True) -> None:
    """A k-fold folder restarted to resume must hold the same experiment (data, model, trainer, seed); a new one
    records it (``write``)."""

    def group(name: str, resolve: bool = True) -> dict:
        values = OmegaConf.to_container(cfg[name], resolve=resolve)
        return {k: v for k, v in values.items() if k not in _RESUME_FREE.get(name, ())}

    averaging = (cfg.get("callbacks") or {}).get("averaging")
    settings = {
        "data": group("data"),
        "model": group("model"),
        "trainer": group("trainer", False),
        "averaging": OmegaConf.to_container(averaging, resolve=True) if averaging is not None else {},
        "seed": cfg.seed,
    }
    settings = json.loads(json.dumps(settings, default=str))
    path = run_dir / KFOLD_SETTINGS
    if path.is_file():
        before = json.loads(path.read_text())
        changed = sorted(
            f"{group}.{k}" for group in settings if isinstance(settings[group], dict)
            for k in set(settings[group]) | set(before.get(group, {}))
            if settings[group].get(k) != before.get(group, {}).get(k, _ADDED_LATER.get(f"{group}.{k}"))
        ) + (["seed"] if before.get("seed") != settings["seed"] else [])  # fmt: skip
        if changed:
            raise ConfigError(
                f"{run_dir} holds a k-fold run of another configuration (differs in {', '.join(changed)}); "
                "resume it with the same settings or use a new output folder"
            )
    elif write:
        write_json(path, settings)
