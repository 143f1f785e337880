"""Multiruns: each job's folder name, a summary of every job, and k-fold assembly when the sweep was over folds."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from catdog.ensemble import MANIFEST_NAME, RESULT_NAME, csv_text, finalize_ensemble, markdown_table
from catdog.fileio import atomic_write_text
from catdog.report.build import safe_report, write_kfold_report, write_sweep_report
from catdog.run_lock import run_stamp

log = logging.getLogger(__name__)

# A command-line override that Hydra's basic sweeper expands into several jobs: a top-level comma list or a sweep
# function (a comma inside brackets or quotes, as in key=[1,2], is one value).
_SWEEP_FUNCTION = re.compile(r"^(range|choice|interval|glob)\(")


def _is_sweep(value: str) -> bool:
    if _SWEEP_FUNCTION.match(value):
        return True
    depth, quote = 0, None
    for ch in value:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            return True
    return False


def swept_keys(argv: Sequence[str]) -> set[str]:
    """The keys that command-line overrides ``argv`` sweep over (``key=a,b``, ``key=range(0,3)``, ...)."""
    keys = set()
    for arg in argv:
        if "=" not in arg or arg.startswith("-"):
            continue
        key, value = arg.split("=", 1)
        if _is_sweep(value):
            keys.add(key.lstrip("+~"))
    return keys


def sweep_subdir(job_num: int, fold: int | None, argv: Sequence[str] | None = None) -> str:
    """A multirun job's folder: ``fold_<i>`` when the sweep is over ``data.fold`` alone (the folds then assemble into
    one ensemble in the sweep folder), else the job number, which no other job shares (``<n>_fold_<i>`` when the
    job also has a fold)."""
    if fold is None:
        return str(job_num)
    if swept_keys(sys.argv[1:] if argv is None else argv) == {"data.fold"}:
        return f"fold_{fold}"
    return f"{job_num}_fold_{fold}"


def register_resolvers() -> None:
    """``${catdog.sweep_subdir:...}`` for ``hydra.sweep.subdir`` and ``${catdog.run_stamp:}`` for the run and sweep
    folder names (conf/hydra/default.yaml; cached per config, as Hydra's ``${now:...}`` is)."""
    if not OmegaConf.has_resolver("catdog.sweep_subdir"):
        OmegaConf.register_new_resolver("catdog.sweep_subdir", sweep_subdir)
    if not OmegaConf.has_resolver("catdog.run_stamp"):
        OmegaConf.register_new_resolver("catdog.run_stamp", run_stamp, use_cache=True)


SUMMARY_HEADER = ("job", "overrides", "val/logloss", "val/logloss_cross_fitted", "val/acc", "epochs", "wall_time_s")


def _fmt(v, digits: int = 4) -> str:
    return f"{v:.{digits}f}" if isinstance(v, float) else ("" if v is None else str(v))


def _job_key(job: Path):
    return (0, int(job.name), "") if job.name.isdigit() else (1, 0, job.name)


def sweep_rows(sweep_dir: Path) -> list[tuple]:
    """One row per job folder of a multirun: the overrides that vary between jobs, and the job's result."""
    jobs = sorted((p for p in sweep_dir.iterdir() if (p / ".hydra" / "overrides.yaml").is_file()), key=_job_key)
    job_overrides = [list(OmegaConf.load(job / ".hydra" / "overrides.yaml")) for job in jobs]
    common = set.intersection(*(set(o) for o in job_overrides)) if len(jobs) > 1 else set()
    rows = []
    for job, all_overrides in zip(jobs, job_overrides):
        overrides = " ".join(o for o in all_overrides if o not in common)
        if (job / RESULT_NAME).is_file():
            r = json.loads((job / RESULT_NAME).read_text())
            rows.append(
                (
                    job.name, overrides, r["val/logloss"], r.get("val/logloss_cross_fitted"), r["val/acc"], r["epochs"],
                    r["wall_time_s"],
                )
            )  # fmt: skip
        elif (job / MANIFEST_NAME).is_file():
            oof = json.loads((job / MANIFEST_NAME).read_text())["oof"]
            row = (oof["logloss"], oof.get("logloss_cross_fitted"), oof["acc"], None, None)
            rows.append((job.name, overrides + " (k-fold OOF)", *row))
        else:
            rows.append((job.name, overrides + " (no result)", None, None, None, None, None))
    return rows


def write_sweep_summary(sweep_dir: str | Path) -> Path | None:
    sweep_dir = Path(sweep_dir)
    rows = sweep_rows(sweep_dir)
    if not rows:
        return None
    text_rows = [(*(_fmt(v) for v in r[:5]), _fmt(r[5]), _fmt(r[6], 1)) for r in rows]
    atomic_write_text(sweep_dir / "summary.csv", csv_text(SUMMARY_HEADER, text_rows))
    atomic_write_text(sweep_dir / "summary.md", markdown_table(SUMMARY_HEADER, text_rows))
    print(markdown_table(SUMMARY_HEADER, text_rows))
    return sweep_dir / "summary.md"


class SweepSummary(Callback):
    """At the end of ``train.py -m ...``: ``summary.csv``/``summary.md`` in the sweep folder; with a sweep over
    ``data.fold`` the folds are assembled into an ensemble there, as a single k-fold run would be."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        folds = OmegaConf.select(config, "data.folds")
        fold_runs = list(sweep_dir.glob(f"fold_*/{RESULT_NAME}"))
        if folds and fold_runs:
            try:
                finalize_ensemble(sweep_dir, expected_folds=int(folds))
            except Exception as exc:  # noqa: BLE001 - a summary must not hide the sweep's results
                log.warning("could not assemble the k-fold ensemble in %s: %s", sweep_dir, exc)
            else:
                if OmegaConf.select(config, "report", default=True):
                    safe_report("k-fold", write_kfold_report, sweep_dir, OmegaConf.select(config, "data.dir"))
        if write_sweep_summary(sweep_dir) is not None:
            metric = OmegaConf.select(config, "optimized_metric") or "val/logloss"
            safe_report("sweep", write_sweep_report, sweep_dir, metric)
