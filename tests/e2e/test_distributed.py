"""Several processes (DDP with the gloo backend on the CPU) give the result of one: the same validation metrics,
oof.csv and temperature for a given model, each file written once, a k-fold ensemble assembled once."""

import csv
import hashlib
import json
import re
from pathlib import Path

import pytest
import torch

from catdog.builders import build_datamodule, build_model
from catdog.checkpoints import read_checkpoint
from catdog.fit import score_checkpoint
from catdog.runs.layout import split_text
from catdog.runs.resume import DISTILL_KEY, RUN_SETTINGS_KEY
from tests.conftest import TINY, compose_train, make_flat, needs_extra, run_script, tiny_train_cfg

DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_epochs=2"]


TINY_CLI = [a for a in TINY if not a.startswith("trainer.enable_")]  # the CLI's own progress and summary stay


def _oof(path: Path) -> dict[str, list[float]]:
    with path.open(newline="") as f:
        return {r["path"]: [float(r["p_cat"]), float(r["p_dog"])] for r in csv.DictReader(f)}


def _one_process_validation(run: Path, overrides):
    """Validate ``run``'s best checkpoint in this (single) process, on the split made by the same settings (checked
    against the run's ``split.csv``)."""
    cfg = compose_train([*TINY, *overrides], output_dir=run)
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    assert split_text(datamodule) == (run / "split.csv").read_text()
    model = build_model(cfg, datamodule.classes)
    score_checkpoint(cfg, model, datamodule, str(run / "checkpoints" / "best.ckpt"))
    logp, targets, indices = model.last_validation
    root = Path(datamodule.root)
    paths = [Path(datamodule.val_set.paths[i]).relative_to(root).as_posix() for i in indices.tolist()]
    return dict(zip(paths, logp.exp().tolist())), logp, targets


def test_two_processes_validate_like_one_and_write_each_file_once(tmp_path):
    data = make_flat(tmp_path / "data", per_class=15, test=0)  # 6 validation images: shares of 3 per process
    out = tmp_path / "out"
    args = [*TINY_CLI, *DDP, f"data.dir={data}", f"paths.log_dir={out}", "data.val_fraction=0.25", "seed=7"]
    args.append("report=true")
    run = run_script("train.py", args, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    (folder,) = (out / "train").iterdir()
    logs = run.stdout + run.stderr
    assert "Starting with 2 processes" in logs
    # Rank zero alone writes and reports: each of these lines comes once.
    assert len(re.findall(r"best checkpoint .*best\.ckpt: val/logloss", logs)) == 1
    assert len(re.findall(r"report: .*report\.html", logs)) == 1
    assert len(re.findall(r"epoch 1/1: train/loss", logs)) == 1

    result = json.loads((folder / "result.json").read_text())
    oof = _oof(folder / "oof.csv")
    probs, logp, targets = _one_process_validation(folder, [f"data.dir={data}", "data.val_fraction=0.25", "seed=7"])
    assert sorted(oof) == sorted(probs) and len(oof) == 8  # every validation image once, no sampler repeats
    assert max(abs(a - b) for p in oof for a, b in zip(oof[p], probs[p])) < 1e-5
    nll = float(torch.nn.functional.nll_loss(logp, targets))
    assert result["val/logloss"] == pytest.approx(nll, abs=1e-5)
    # The score that chose the checkpoint (logged during training) is the whole validation set's, not a shard's.
    states = read_checkpoint(folder / "checkpoints" / "best.ckpt")["callbacks"]
    chosen = next(v["best_model_score"] for k, v in states.items() if "val/logloss" in k)
    assert float(chosen) == pytest.approx(nll, abs=1e-5)
    from catdog.models.calibration import calibration_record

    assert result["calibration"]["temperature"] == pytest.approx(
        calibration_record(logp, targets)["temperature"], abs=1e-4
    )
    split = (folder / "split.csv").read_text().splitlines()
    assert len(split) == 1 + 30 and len(set(split)) == len(split)


@pytest.mark.slow  # 25 s on 2 cores: two processes through every fold
def test_two_process_kfold_assembles_its_ensemble_once(tmp_path):
    data = make_flat(tmp_path / "data", per_class=6, test=0)
    out = tmp_path / "out"
    args = [*TINY_CLI, *DDP, "trainer.max_epochs=1", f"data.dir={data}", f"paths.log_dir={out}", "ensemble.size=2"]
    run = run_script("train.py", args, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    (folder,) = (out / "train").iterdir()
    logs = run.stdout + run.stderr
    assert len(re.findall(r"k-fold: OOF log loss", logs)) == 1
    assert len(re.findall(r"training fold 2 of 2", logs)) == 1
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [m["fold"] for m in manifest["members"]] == [0, 1]
    oof = _oof(folder / "oof.csv")
    assert len(oof) == 12  # every labelled image once, by the fold that did not train on it
    for fold in (0, 1):
        fold_oof = _oof(folder / f"fold_{fold}" / "oof.csv")
        fold_args = [f"data.dir={data}", "data.folds=2", f"data.fold={fold}"]
        probs, _, _ = _one_process_validation(folder / f"fold_{fold}", fold_args)
        assert sorted(fold_oof) == sorted(probs)
        assert max(abs(a - b) for p in probs for a, b in zip(fold_oof[p], probs[p])) < 1e-5


def test_a_multirun_with_several_processes_per_job_is_refused(tmp_path):
    data = make_flat(tmp_path / "data", per_class=2, test=0)
    args = ["-m", *TINY_CLI, *DDP, f"data.dir={data}", f"paths.log_dir={tmp_path / 'out'}", "seed=1,2"]
    run = run_script("train.py", args, cwd=tmp_path)
    assert run.returncode != 0
    assert "hydra/launcher=local" in run.stdout + run.stderr
    assert "Starting with 2 processes" not in run.stdout + run.stderr


def _staged(data: Path, out: Path, *extra: str) -> list[str]:
    """Staged fine-tuning (head 1 epoch, then every layer) of a VGG16 without BatchNorm or dropout, so that 2
    processes of batch 4 compute what one process of batch 8 does."""
    return [
        *TINY_CLI, f"data.dir={data}", "data.val_fraction=0.25", "seed=7", "model.arch=vgg16", "model.dropout=0.0",
        "model.finetune.head_epochs=1", "model.finetune.blocks=-1", "model.finetune.lr_factor=1.0",
        "model.optimizer.lr=0.05", "trainer.max_epochs=2", "calibrate=false", "trainer.precision=32-true",
        f"hydra.run.dir={out}", *extra,
    ]  # fmt: skip


def test_staged_fine_tuning_on_two_processes_trains_like_one(tmp_path):
    """After the unfreeze every process trains the backbone on the averaged gradient: 2 processes end with the
    weights and validation log loss of one process with twice the batch, and the replicas are checked every epoch.

    In float32, pinned: on a CPU with AMX the automatic precision is bf16, which rounds each gradient to 8 bits, so
    one batch of 8 and two of 4 differ by up to 2^-9 of every update (3e-5 in these weights). In float32 the two
    set-ups differ only in the order the gradient's terms are summed: a few roundings of 2^-24 relative per update,
    4 updates of weights below 0.7 (one float32 ulp there is 6e-8), so 1e-6 (16 such ulps) bounds what reordering can
    do, and the log loss (~0.7) within 1e-6 likewise."""
    data = make_flat(tmp_path / "data", per_class=15, test=0)
    one = run_script("train.py", _staged(data, tmp_path / "one", "data.batch_size=8"), cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    two_args = _staged(data, tmp_path / "two", *DDP, "data.batch_size=4")
    two = run_script("train.py", two_args, cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    logs = two.stdout + two.stderr
    assert re.search(r"epoch 0: replicas in sync \(2 processes", logs)
    assert re.search(r"epoch 1: replicas in sync \(2 processes", logs)
    assert "now trained on every process" in logs
    weights = [read_checkpoint(tmp_path / r / "checkpoints" / "last.ckpt")["state_dict"] for r in ("one", "two")]
    backbone = [k for k in weights[0] if ".features." in k]
    assert backbone and max(float((weights[0][k] - weights[1][k]).abs().max()) for k in weights[0]) < 1e-6
    results = [json.loads((tmp_path / r / "result.json").read_text()) for r in ("one", "two")]
    assert results[1]["val/logloss"] == pytest.approx(results[0]["val/logloss"], abs=1e-6)


@pytest.mark.slow  # 40 s on 2 cores (a teacher, its views and two students); one-vs-two processes is tested above
def test_a_distilled_student_on_two_processes_trains_like_one(tmp_path):
    """A student of a 2-fold teacher whose out-of-fold rows are predicted again with a view (distill.tta=1) trains on
    2 processes as on one, with :func:`test_staged_fine_tuning_on_two_processes_trains_like_one`'s bounds (the
    teacher's term is, like the labels', a per-image loss averaged over the batch): the same targets (one
    ``distill_targets.csv``, the same digest), weights and log loss. The 2 processes predict the teacher's views (the
    first one; the other reuses what it kept) and the one process reuses them, so both students start from the
    same random state only if predicting them leaves it as reusing does. Without its teacher the student ends far
    outside these bounds."""
    from catdog.training import train

    data = make_flat(tmp_path / "data", per_class=15, test=0)
    teacher = tmp_path / "teacher"
    train(tiny_train_cfg(data, teacher, "ensemble.size=2", "data.seed=0"))
    distill = [f"distill.teacher={teacher}", "distill.tta=1"]
    two = run_script("train.py", _staged(data, tmp_path / "two", *DDP, "data.batch_size=4", *distill), cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    logs = two.stdout + two.stderr
    assert re.search(r"epoch 1: replicas in sync \(2 processes", logs)
    assert len(re.findall(r"predicting its 30 out-of-fold rows again with tta=1", logs)) == 1
    assert sorted(p.name for p in teacher.iterdir() if "tta" in p.name) == ["oof_tta1_zoom.csv", "oof_tta1_zoom.json"]
    one = run_script("train.py", _staged(data, tmp_path / "one", "data.batch_size=8", *distill), cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    assert "oof_tta1_zoom.csv: the out-of-fold rows with tta=1 (zoom) kept from an earlier" in one.stdout + one.stderr

    runs = [tmp_path / r for r in ("one", "two")]
    records = [json.loads((r / "result.json").read_text())["distill"] for r in runs]
    targets = [sorted(p.name for p in r.rglob("*distill_targets*")) for r in runs]
    assert targets == [["distill_targets.csv"]] * 2
    texts = [(r / "distill_targets.csv").read_text() for r in runs]
    assert texts[1] == texts[0] and len(texts[1].splitlines()) == 1 + records[1]["images"] == 1 + 22
    assert records[1]["targets_digest"] == records[0]["targets_digest"] == hashlib.sha1(texts[1].encode()).hexdigest()
    assert records[1]["tta"] == 1 and "oof_tta1_zoom.csv" in records[1]["rows"]
    checkpoints = [read_checkpoint(r / "checkpoints" / "last.ckpt") for r in runs]
    assert [c[RUN_SETTINGS_KEY][DISTILL_KEY] for c in checkpoints] == [records[0]["targets_digest"]] * 2
    assert checkpoints[1]["hyper_parameters"]["distill"] == {"alpha": 0.5, "temperature": 2.0}
    weights = [c["state_dict"] for c in checkpoints]
    assert max(float((weights[0][k] - weights[1][k]).abs().max()) for k in weights[0]) < 1e-6
    results = [json.loads((r / "result.json").read_text()) for r in runs]
    assert results[1]["val/logloss"] == pytest.approx(results[0]["val/logloss"], abs=1e-6)

    plain = run_script("train.py", _staged(data, tmp_path / "plain", "data.batch_size=8"), cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr[-3000:]
    alone = read_checkpoint(tmp_path / "plain" / "checkpoints" / "last.ckpt")["state_dict"]
    assert max(float((alone[k] - weights[1][k]).abs().max()) for k in alone) > 1e-4


@pytest.mark.slow  # 19 s on 2 cores: two processes made to drift apart
def test_replicas_that_drift_apart_stop_the_run(tmp_path):
    data = make_flat(tmp_path / "data", per_class=6, test=0)
    out = tmp_path / "run"
    args = [
        *TINY_CLI,
        *DDP,
        f"data.dir={data}",
        f"hydra.run.dir={out}",
        "+callbacks.drift._target_=tests.helpers.NudgeRank",
    ]
    run = run_script("train.py", args, cwd=tmp_path)
    assert run.returncode != 0
    assert "epoch 0: the model's parameters differ between processes (rank(s) [1] vs rank 0" in run.stdout + run.stderr
    assert not (out / "checkpoints" / "last.ckpt").exists() and not (out / "result.json").exists()


needs_submitit = needs_extra("slurm", "hydra_plugins.hydra_submitit_launcher")


@needs_submitit
def test_local_launcher_sweep_of_two_ddp_jobs_writes_its_summary(tmp_path):
    """Two sweep points run side by side through submitit's local executor, each as 2 DDP processes."""
    data = make_flat(tmp_path / "data", per_class=6, test=0)
    args = ["-m", "hydra/launcher=local", *TINY_CLI, *DDP, "trainer.max_epochs=1", f"data.dir={data}"]
    run = run_script("train.py", [*args, f"paths.log_dir={tmp_path / 'out'}", "seed=1,2"], cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    (sweep,) = (tmp_path / "out" / "train-multirun").iterdir()
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [r["overrides"] for r in rows] == ["seed=1", "seed=2"]
    assert all(float(r["val/logloss"]) > 0 for r in rows)
    assert (sweep / "summary.png").is_file()
    for job in ("0", "1"):
        assert json.loads((sweep / job / "result.json").read_text())["val/logloss"] is not None
    logs = "".join(p.read_text() for p in (sweep / ".submitit").glob("*/*_log.err"))
    assert logs.count("Starting with 2 processes") == 2  # one DDP group of two tasks per job
