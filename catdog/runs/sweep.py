"""A multirun's summary: one row per job (the overrides that vary, its result), as ``summary.csv`` / ``summary.md``."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import OmegaConf

from catdog.fileio import atomic_write_text
from catdog.runs.layout import (
    MANIFEST_NAME,
    RECORD_DIR,
    RESULT_NAME,
    SUMMARY_CSV,
    SUMMARY_MD,
    csv_text,
    markdown_table,
    read_json,
)

log = logging.getLogger(__name__)


SUMMARY_HEADER = ("job", "overrides", "val/logloss", "val/logloss_cross_fitted", "val/acc", "epochs", "wall_time_s")


def _fmt(v, digits: int = 4) -> str:
    return f"{v:.{digits}f}" if isinstance(v, float) else ("" if v is None else str(v))


def _job_key(job: Path):
    return (0, int(job.name), "") if job.name.isdigit() else (1, 0, job.name)


def sweep_rows(sweep_dir: Path) -> list[tuple]:
    """One row per job folder of a multirun: the overrides that vary between jobs, and the job's result."""
    jobs = sorted((p for p in sweep_dir.iterdir() if (p / RECORD_DIR / "overrides.yaml").is_file()), key=_job_key)
    job_overrides = [list(OmegaConf.load(job / RECORD_DIR / "overrides.yaml")) for job in jobs]
    common = set.intersection(*(set(o) for o in job_overrides)) if len(jobs) > 1 else set()
    rows = []
    for job, all_overrides in zip(jobs, job_overrides):
        overrides = " ".join(o for o in all_overrides if o not in common)
        if (job / RESULT_NAME).is_file():
            r = read_json(job / RESULT_NAME)
            rows.append(
                (
                    job.name, overrides, r["val/logloss"], r.get("val/logloss_cross_fitted"), r["val/acc"], r["epochs"],
                    r["wall_time_s"],
                )
            )  # fmt: skip
        elif (job / MANIFEST_NAME).is_file():
            oof = read_json(job / MANIFEST_NAME)["oof"]
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
    atomic_write_text(sweep_dir / SUMMARY_CSV, csv_text(SUMMARY_HEADER, text_rows))
    atomic_write_text(sweep_dir / SUMMARY_MD, markdown_table(SUMMARY_HEADER, text_rows))
    print(markdown_table(SUMMARY_HEADER, text_rows))
    return sweep_dir / SUMMARY_MD
