"""One markdown summary of a training run and the labelled scores ``predict.py`` printed for it.

Reads ``RUN/result.json`` and the logs ``OUT/val_tta<N>_cal<true|false>.log`` written by
``predict.py ckpt=RUN input=RUN/split.csv labelled=true tta=N calibrate=...`` (see bench/gpu_recipe.sh).

Example:
    python bench/recipe_report.py outputs/cpu_scratch/2026-01-01_12-00-00 logs/ --train-seconds 1500
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path


def labelled_row(log: Path) -> list[str] | None:
    """(images, tta, calibrated, accuracy, log loss) from the score table of a ``predict.py labelled=true`` log."""
    lines = [line for line in log.read_text().splitlines() if line.startswith("| ") and "---" not in line]
    for header, row in zip(lines, lines[1:]):
        if header.startswith("| images | tta |"):
            return [c.strip() for c in row.strip("|").split("|")]
    return None


def first_epochs(metrics: Path, epochs: int = 8) -> list[tuple[int, tuple[float, float]]]:
    """(epoch, (val/logloss, val/acc)) of the first ``epochs`` validated epochs in a run's ``csv/metrics.csv``."""
    if not metrics.is_file():
        return []
    with metrics.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/logloss")]
    return [(int(r["epoch"]), (float(r["val/logloss"]), float(r["val/acc"]))) for r in rows[:epochs]]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="the training run folder (result.json)")
    p.add_argument("logs", type=Path, help="folder of val_tta<N>_cal<true|false>.log files")
    p.add_argument("--train-seconds", type=float, default=None)
    p.add_argument("--predict-seconds", type=float, default=None)
    p.add_argument("--command", default=None)
    args = p.parse_args(argv)

    r = json.loads((args.run / "result.json").read_text())
    cal = r.get("calibration") or {}
    if args.command:
        print(f"command: `{args.command.strip()}`\n")
    if args.train_seconds is not None:
        print(f"training: {args.train_seconds / 60:.1f} min wall time, {r['epochs']} epochs")
    if args.predict_seconds is not None:
        print(f"tta=5 submission of the test images: {args.predict_seconds:.0f} s")
    line = f"best checkpoint: val/acc {r['val/acc']:.4f}, val/logloss {r['val/logloss']:.4f}"
    if cal:
        line += f"; temperature {cal['temperature']:.3f}: val/logloss {cal['logloss_after']:.4f} in-sample"
        if "logloss_cross_fitted" in cal:
            line += f", {cal['logloss_cross_fitted']:.4f} cross-fitted"
    print(line + "\n")
    curve = first_epochs(args.run / "csv" / "metrics.csv")
    if curve:
        print("first epochs (validation): " + "; ".join(f"{e}: {v[0]:.4f} / {v[1]:.4f}" for e, v in curve) + "\n")
    rows = []
    for log in sorted(args.logs.glob("val_tta*_cal*.log")):
        m = re.fullmatch(r"val_tta(\d+)_cal(true|false)\.log", log.name)
        cells = labelled_row(log) if m else None
        if cells:
            rows.append((int(m.group(1)), m.group(2), cells))
    if rows:
        print("Scored on the run's own validation images (they chose the epoch; T was fitted on them: in-sample).\n")
        print("| tta | calibrated | images | accuracy | log loss |\n|---|---|---|---|---|")
        for tta, calibrated, cells in sorted(rows):
            print(f"| {tta} | {calibrated} | {cells[0]} | {cells[3]} | {cells[4]} |")


if __name__ == "__main__":
    main()
