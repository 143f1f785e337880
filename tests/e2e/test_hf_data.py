"""data.hf end to end: a k-fold run on a saved Hugging Face dataset, its test split predicted by id, pseudo-labels
from that prediction, and the run's own split files scored."""

from __future__ import annotations

import csv
import json

from catdog.data.hf_data import data_root
from catdog.prediction import predict
from catdog.report.build import write_folder_report
from catdog.runs.layout import REPORT_HTML
from catdog.training import train
from tests.conftest import compose_predict, extra_marks, tiny_train_cfg
from tests.unit.data.test_hf_data import NAMES, make_dataset, split_rows, unlabelled_rows

pytestmark = extra_marks("hf", "datasets")


def _ids(path) -> list[str]:
    with open(path, newline="") as f:
        return [r["id"] for r in csv.DictReader(f)]


def test_kfold_run_predict_by_id_and_pseudo_label_from_a_saved_dataset(tmp_path):
    import datasets

    dd = make_dataset({"train": split_rows(8, corrupt=3)})
    dd["test"] = datasets.Dataset.from_dict(unlabelled_rows(), features=datasets.Features(
        {"image": datasets.Image(), "id": datasets.Value("string")}))  # fmt: skip
    dd.save_to_disk(str(tmp_path / "saved"))
    hf = [f"data.hf={tmp_path / 'saved'}", f"data.cache_dir={tmp_path / 'cache'}"]
    run = tmp_path / "run"
    train(tiny_train_cfg(tmp_path / "no_folder", run, *hf, "ensemble.size=2"))
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["classes"] == NAMES and len(manifest["members"]) == 2
    with open(run / "fold_0" / "split.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 15 and {r["fold"] for r in rows} == {"0", "1"}  # the corrupt row skipped
    assert all(r["path"].startswith("train/") and r["path"] != "train/3.jpg" for r in rows)
    written = data_root({"hf": str(tmp_path / "saved"), "cache_dir": str(tmp_path / "cache")})
    report = (write_folder_report(run, written).parent / REPORT_HTML).read_bytes()  # catdog-report RUN DATA_DIR
    (run / REPORT_HTML).unlink()
    write_folder_report(run)  # catdog-report RUN: the images found through the run's recorded data.hf
    assert (run / REPORT_HTML).read_bytes() == report and b"<img" in report

    out = tmp_path / "pred" / "submission.csv"
    base = [f"ckpt={run}", "num_workers=0", "device=cpu"]
    predict(compose_predict([*base, f"input=hf:{tmp_path / 'saved'}", f"output={out}"]))
    assert _ids(out) == [f"t{i}" for i in range(6)]  # the id column
    default = tmp_path / "default" / "submission.csv"
    predict(compose_predict([*base, f"output={default}"]))  # no input: the checkpoint's data.hf test split
    assert _ids(default) == _ids(out)

    scored = tmp_path / "eval" / "predictions.csv"
    predict(compose_predict([*base, f"input={run / 'fold_0' / 'split.csv'}", "labelled=true", f"output={scored}"]))
    fold_0 = sum(r["fold"] == "0" for r in rows)
    assert json.loads((scored.parent / "evaluation.json").read_text())["images"] == fold_0  # its validation images

    pseudo = tmp_path / "pseudo_run"
    train(tiny_train_cfg(tmp_path / "no_folder", pseudo, *hf, f"data.pseudo.labels={out}", "data.pseudo.threshold=0.5"))
    result = json.loads((pseudo / "result.json").read_text())
    assert result["pseudo"]["used"] == 6 and result["pseudo"]["candidates"] == 6  # data.dir/test: the test split
