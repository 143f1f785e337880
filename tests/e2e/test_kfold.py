import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import open_dict

from catdog.errors import CheckpointError, ConfigError
from catdog.prediction import predict
from catdog.report.build import sweep_points
from catdog.runs.sweep import sweep_rows
from catdog.training import train
from tests.conftest import (
    compose_predict,
    make_class_folders,
    make_flat,
    make_image,
    needs_extra,
    run_script,
    tiny_train_cfg,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def kfold_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("kfold")
    data = make_flat(root / "data", per_class=9, test=6)
    # two byte-identical copies of one picture
    (data / "train" / "cat.100.jpg").write_bytes((data / "train" / "cat.0.jpg").read_bytes())
    value = train(tiny_train_cfg(data, root / "run", "ensemble.size=3"))
    return root / "run", data, value


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_kfold_run_folder_layout(kfold_run):
    run, data, value = kfold_run
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["classes"] == ["cat", "dog"] and len(manifest["members"]) == 3
    for m in manifest["members"]:
        assert (run / m["checkpoint"]).is_file()
    oof = _read_csv(run / "oof.csv")
    assert sorted(r["path"] for r in oof) == sorted(f"train/{p.name}" for p in (data / "train").iterdir())
    assert {r["fold"] for r in oof} == {"0", "1", "2"}
    assert manifest["oof"]["logloss"] == pytest.approx(value)
    scores = _read_csv(run / "scores.csv")
    assert [r["fold"] for r in scores] == ["0", "1", "2", "oof"]
    split = _read_csv(run / "fold_0" / "split.csv")
    fold_of = {r["path"]: r["fold"] for r in split}
    assert fold_of["train/cat.0.jpg"] == fold_of["train/cat.100.jpg"]  # duplicates share a fold
    assert {r["path"]: r["fold"] for r in oof} == fold_of  # OOF rows come from the fold that held them out


def test_ensemble_prediction_is_mean_of_members(kfold_run, tmp_path):
    run, _, _ = kfold_run
    manifest = json.loads((run / "manifest.json").read_text())

    def probs(ckpt, out, *extra):
        cfg = compose_predict([f"ckpt={ckpt}", "num_workers=0", "device=cpu", "tta=2", *extra], output_dir=out)
        return np.array([float(r["label"]) for r in _read_csv(predict(cfg))])

    members = [probs(run / m["checkpoint"], tmp_path / f"m{i}") for i, m in enumerate(manifest["members"])]
    ensemble = probs(run, tmp_path / "ens")
    np.testing.assert_allclose(ensemble, np.mean(members, axis=0), atol=2e-6)
    listed = ",".join(str(run / m["checkpoint"]) for m in manifest["members"][:2])
    np.testing.assert_allclose(probs(f"[{listed}]", tmp_path / "two"), np.mean(members[:2], axis=0), atol=2e-6)
    logit = probs(run, tmp_path / "logit", "ensemble=logit")
    log_odds = np.mean([np.log(m) - np.log1p(-m) for m in members], axis=0)  # mean of logits, two classes
    np.testing.assert_allclose(logit, 1 / (1 + np.exp(-log_odds)), atol=5e-6)


def test_ensemble_refuses_members_with_other_classes(kfold_run, tmp_path):
    run, _, _ = kfold_run
    other = make_class_folders(tmp_path / "other", per_class=4, classes=("ant", "bee"), validation=False)
    make_image(other / "test" / "1.jpg")
    train(tiny_train_cfg(other, tmp_path / "other_run"))
    ckpts = f"[{run / 'fold_0/checkpoints/best.ckpt'},{tmp_path / 'other_run/checkpoints/best.ckpt'}]"
    cfg = compose_predict([f"ckpt={ckpts}", "num_workers=0", "device=cpu"], output_dir=tmp_path)
    with pytest.raises(CheckpointError, match=r"disagree on classes.*\['cat', 'dog'\].*\['ant', 'bee'\]"):
        predict(cfg)


def test_killed_kfold_run_resumes_at_unfinished_fold(kfold_run, tmp_path):
    """Delete fold 2's result as if the process died in it: rerunning trains only fold 2."""
    run, data, _ = kfold_run
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / "fold_2" / "result.json").unlink()
    (copy / "manifest.json").unlink()
    before = {f: (copy / f / "checkpoints" / "best.ckpt").stat().st_mtime_ns for f in ("fold_0", "fold_1")}
    train(tiny_train_cfg(data, copy, "ensemble.size=3"))
    after = {f: (copy / f / "checkpoints" / "best.ckpt").stat().st_mtime_ns for f in ("fold_0", "fold_1")}
    assert before == after
    assert (copy / "fold_2" / "result.json").is_file() and (copy / "manifest.json").is_file()
    with pytest.raises(ConfigError, match=r"differs in model\.optimizer"):
        train(tiny_train_cfg(data, copy, "ensemble.size=3", "model.optimizer.lr=0.5"))


def _kfold_sweep(data, log_dir, *sweep):
    """``train.py -m`` of a tiny 2-fold vgg16_bn_kfold experiment with the ``sweep`` overrides; its sweep folder."""
    args = [
        "-m", "experiment=vgg16_bn_kfold", "ensemble.size=2", f"data.dir={data}", "model.weights=null",
        "model.width=0.0625", "model.head_hidden=8", "model.finetune.head_epochs=0", "data.image_size=32",
        "data.batch_size=4", "data.num_workers=0", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", "report=false", f"paths.log_dir={log_dir}", *sweep,
    ]  # fmt: skip
    run = run_script("train.py", args, log_dir.parent)
    assert run.returncode == 0, run.stderr[-3000:]
    return next((log_dir / "vgg16_bn_kfold-multirun").iterdir())


def test_multirun_over_folds_and_sweep_summary(tmp_path):
    data = make_flat(tmp_path / "data", per_class=6, test=2)
    sweep = _kfold_sweep(data, tmp_path / "out", "data.fold=0,1", "report=true")
    assert sorted(p.name for p in sweep.glob("fold_*")) == ["fold_0", "fold_1"]
    manifest = json.loads((sweep / "manifest.json").read_text())
    assert [m["checkpoint"] for m in manifest["members"]] == [f"fold_{i}/checkpoints/best.ckpt" for i in (0, 1)]
    summary = _read_csv(sweep / "summary.csv")
    assert [r["overrides"].split()[-1] for r in summary] == ["data.fold=0", "data.fold=1"]
    assert all(float(r["val/logloss"]) > 0 and r["wall_time_s"] for r in summary)
    assert (sweep / "summary.md").read_text().startswith("| job | overrides |")
    # The folds of the sweep are one ensemble: its report, and the metric against the fold beside summary.md.
    assert (sweep / "report.html").is_file() and (sweep / "report" / "confusion.png").is_file()
    assert (sweep / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # 25 s on 2 cores; a multirun over folds is tested by test_multirun_over_folds_and_sweep_summary
def test_sweeps_with_kfold_give_every_job_its_own_folder(tmp_path):
    """Sweeping another key over a k-fold experiment, or data.fold together with another key: one folder per job."""
    data = make_flat(tmp_path / "data", per_class=6, test=0)
    ensembles = _kfold_sweep(data, tmp_path / "a", "model.optimizer.lr=0.01,0.02")
    assert sorted(p.name for p in ensembles.iterdir() if p.is_dir()) == ["0", "1"]
    assert all((ensembles / job / "manifest.json").is_file() for job in ("0", "1"))  # a whole k-fold run per job
    assert [r["overrides"] for r in _read_csv(ensembles / "summary.csv")] == [
        "model.optimizer.lr=0.01 (k-fold OOF)", "model.optimizer.lr=0.02 (k-fold OOF)",
    ]  # fmt: skip
    # summary.png plots each job's OOF log loss against the learning rate.
    oof = [json.loads((ensembles / job / "manifest.json").read_text())["oof"]["logloss"] for job in ("0", "1")]
    points = sweep_points(sweep_rows(ensembles), "val/logloss")
    assert points == {"model.optimizer.lr": [("0.01", pytest.approx(oof[0])), ("0.02", pytest.approx(oof[1]))]}
    assert (ensembles / "summary.png").is_file()

    grid = _kfold_sweep(data, tmp_path / "b", "data.fold=0,1", "model.optimizer.lr=0.01,0.02")
    jobs = sorted(p.name for p in grid.iterdir() if p.is_dir())
    assert len(jobs) == 4 and all(re.fullmatch(r"[0-3]_fold_[01]", j) for j in jobs), jobs
    assert all((grid / job / "result.json").is_file() for job in jobs)
    assert not (grid / "manifest.json").exists()  # folds of different learning rates are not one ensemble


def test_same_seed_same_metrics(tmp_path):
    data = make_flat(tmp_path / "data", per_class=8, test=0)
    a = train(tiny_train_cfg(data, tmp_path / "a", "trainer.max_epochs=2", "model.dropout=0.5"))
    b = train(tiny_train_cfg(data, tmp_path / "b", "trainer.max_epochs=2", "model.dropout=0.5"))
    c = train(tiny_train_cfg(data, tmp_path / "c", "trainer.max_epochs=2", "model.dropout=0.5", "seed=1"))
    assert a == b
    assert a != c


def test_resume_mid_run_matches_uninterrupted_run(tmp_path):
    import pytorch_lightning as pl

    data = make_flat(tmp_path / "data", per_class=8, test=0)
    extra = (
        "trainer.max_epochs=3",
        "model.finetune.head_epochs=1",
        "model.finetune.blocks=2",
        "model/scheduler=onecycle",
    )
    full = train(tiny_train_cfg(data, tmp_path / "full", *extra))

    class Crash(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 2:
                raise RuntimeError("simulated crash")

    cfg = tiny_train_cfg(data, tmp_path / "crashed", *extra)
    with open_dict(cfg):
        cfg.callbacks["crash"] = {"_target_": f"{__name__}._crash_factory"}
    global _CRASH
    _CRASH = Crash
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg)
    last = tmp_path / "crashed" / "checkpoints" / "last.ckpt"
    assert last.is_file()
    resumed = train(tiny_train_cfg(data, tmp_path / "resumed", *extra, f"ckpt_path={last}"))
    assert resumed == pytest.approx(full, abs=1e-6)


_CRASH = None


def _crash_factory():
    return _CRASH()


@needs_extra("optuna", "hydra_plugins.hydra_optuna_sweeper")
def test_optuna_search_returns_the_metric_to_the_sampler(tmp_path):
    data = make_flat(tmp_path / "data", per_class=6, test=0)
    args = [
        "hparams_search=optuna", f"data.dir={data}", "model.weights=null", "model.width=0.0625",
        "model.head_hidden=8", "model.finetune.head_epochs=0", "data.image_size=32", "data.batch_size=4",
        "data.num_workers=0", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
        "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=1", f"paths.log_dir={tmp_path / 'out'}",
    ]  # fmt: skip
    run = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    sweep = next((tmp_path / "out" / "train-multirun").iterdir())
    best = (sweep / "optimization_results.yaml").read_text()
    summary = _read_csv(sweep / "summary.csv")
    assert len(summary) == 2
    assert f"best_value: {min(float(r['val/logloss']) for r in summary):.4f}"[:16] in best
    assert all("model.optimizer.lr=" in r["overrides"] and "data.dir" not in r["overrides"] for r in summary)


def test_latest_resolves_to_the_whole_ensemble(kfold_run):
    from catdog.runs.selection import resolve_members

    run, _, _ = kfold_run
    members = resolve_members("latest", run.parent)
    assert sorted(str(m.relative_to(run)) for m in members) == [f"fold_{i}/checkpoints/best.ckpt" for i in range(3)]
