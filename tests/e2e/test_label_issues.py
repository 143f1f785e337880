"""label_issues.csv of a k-fold run, its thumbnails in the report, and data.exclude in a later run."""

from __future__ import annotations

import csv
import json

from catdog.report.build import write_kfold_report
from catdog.training import train
from tests.conftest import tiny_train_cfg
from tests.e2e.conftest import FLIPPED


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_flipped_label_ranks_near_the_top(kfold_pair):
    for run in kfold_pair[:2]:
        rows = _rows(run / "label_issues.csv")
        assert len(rows) == len(_rows(run / "oof.csv")) == 33
        assert [int(r["rank"]) for r in rows] == list(range(1, 34))
        ranked = [r["path"] for r in rows]
        assert ranked.index(FLIPPED) < 5, rows[:5]
        assert rows[ranked.index(FLIPPED)]["label"] == "dog"


def test_the_kfold_report_shows_the_top_issues(kfold_pair, tmp_path):
    run, _, data = kfold_pair
    write_kfold_report(run, data)
    assert (run / "report" / "label_issues.png").stat().st_size > 10_000
    shown = json.loads((run / "report" / "summary.json").read_text())["label_issues"]
    assert FLIPPED in [m["name"] for m in shown[:5]]
    assert "Likely label issues" in (run / "report.html").read_text()


def test_excluded_images_leave_a_later_run_and_the_rest_keep_their_folds(kfold_pair, tmp_path):
    run, _, data = kfold_pair
    top = tmp_path / "top.csv"
    lines = (run / "label_issues.csv").read_text().splitlines()
    top.write_text("\n".join(lines[:3]) + "\n")  # header and the two top rows
    dropped = {r["path"] for r in _rows(top)}
    train(tiny_train_cfg(data, tmp_path / "run", "ensemble.size=2", "data.seed=0", f"data.exclude={top}"))
    before = {r["path"]: r["fold"] for r in _rows(run / "oof.csv")}
    after = {r["path"]: r["fold"] for r in _rows(tmp_path / "run" / "oof.csv")}
    assert after == {p: f for p, f in before.items() if p not in dropped}
    assert json.loads((tmp_path / "run" / "fold_0" / "result.json").read_text())["excluded"] == 2
