"""Loggers as a config group (conf/logger/): each one writes where its config says, with no network; several at once
keep the CSV history of a resumed run; a missing package is named before any data is read."""

import csv
import json

import pytest

from catdog import loggers
from catdog.errors import ConfigError
from catdog.training import train
from tests.conftest import make_flat, needs_extra, tiny_train_cfg
from tests.e2e.conftest import train_until_interrupted


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_flat(tmp_path_factory.mktemp("data"), per_class=4, test=0)


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory):
    """``paths.log_dir`` of this module's runs: one MLflow store for all of them (MLflow builds its tables once)."""
    return tmp_path_factory.mktemp("outputs")


def _metric(run, name: str) -> float:
    """The value of ``name`` that the run's last epoch logged (result.json keeps the Trainer's final metrics)."""
    return json.loads((run / "result.json").read_text())["metrics"][name]


def _csv_val_epochs(run) -> list[int]:
    with (run / "csv" / "metrics.csv").open(newline="") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f) if r.get("val/logloss")]


def _scalars(folder, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def _mlflow_runs(log_dir, run_dir):
    """MLflow runs named after ``run_dir`` in the store under ``log_dir``, oldest first, with their client."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{log_dir}/mlflow.db")
    experiment = client.get_experiment_by_name("train")
    runs = [r for r in client.search_runs([experiment.experiment_id]) if r.info.run_name == str(run_dir)]
    return client, sorted(runs, key=lambda r: r.info.start_time)


@needs_extra("loggers", "tensorboard")
def test_tensorboard_logger_writes_val_logloss_events(data, tmp_path):
    run = tmp_path / "run"
    train(tiny_train_cfg(data, run, "logger=tensorboard"))
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    logged = _scalars(run / "tensorboard", "val/logloss")
    assert [value for _, value in logged] == [pytest.approx(_metric(run, "val/logloss"))]
    assert not (run / "csv").exists()


@needs_extra("loggers", "mlflow", "sqlalchemy", "alembic")
def test_mlflow_logger_records_val_logloss_in_a_local_store(data, tmp_path, log_dir):
    run = tmp_path / "run"
    train(tiny_train_cfg(data, run, "logger=mlflow", f"paths.log_dir={log_dir}"))
    client, runs = _mlflow_runs(log_dir, run)
    assert [r.info.status for r in runs] == ["FINISHED"]
    history = client.get_metric_history(runs[0].info.run_id, "val/logloss")  # the name kept as it is
    assert [m.value for m in history] == [pytest.approx(_metric(run, "val/logloss"))]
    assert runs[0].data.params["arch"] == "vgg16_bn"


@needs_extra("wandb", "wandb")
def test_wandb_logger_writes_one_offline_run_per_fold(data, tmp_path, monkeypatch):
    home = tmp_path / "home"
    for name, value in {
        "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true", "WANDB_DISABLE_CODE": "true",
        "WANDB_DIR": tmp_path / "wandb", "WANDB_CACHE_DIR": tmp_path / "wandb-cache",
        "WANDB_CONFIG_DIR": tmp_path / "wandb-config", "WANDB_DATA_DIR": tmp_path / "wandb-data",
        "WANDB_ARTIFACT_DIR": tmp_path / "wandb-artifacts", "HOME": home, "MPLCONFIGDIR": tmp_path / "mpl",
    }.items():  # fmt: skip
        monkeypatch.setenv(name, str(value))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run = tmp_path / "run"
    train(tiny_train_cfg(data, run, "logger=wandb", "data.folds=2"))
    for fold in (0, 1):  # each fold its own W&B run, not logged into the first one
        (offline,) = (run / f"fold_{fold}" / "wandb").glob("offline-run-*")
        assert len(list(offline.glob("run-*.wandb"))) == 1
    assert not home.exists()


@needs_extra("loggers", "tensorboard", "mlflow", "sqlalchemy", "alembic")
def test_many_loggers_resumed_run_keeps_the_csv_history(data, tmp_path, log_dir):
    run = tmp_path / "run"
    args = ("logger=many_loggers", "trainer.max_epochs=2", f"paths.log_dir={log_dir}")
    cfg = tiny_train_cfg(data, run, *args)
    train_until_interrupted(cfg, cfg.trainer.max_epochs - 1)  # Ctrl-C at the start of its last epoch
    assert _csv_val_epochs(run) == [0]
    train(tiny_train_cfg(data, run, *args))  # resumed in its folder
    assert _csv_val_epochs(run) == [0, 1]  # earlier rows kept, none twice
    # TensorBoard: an event file per session in the same folder, read as one run.
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2
    assert len(_scalars(run / "tensorboard", "val/logloss")) == 2
    # MLflow: one run per session, both named after the run folder.
    client, runs = _mlflow_runs(log_dir, run)
    assert [r.info.status for r in runs] == ["FAILED", "FINISHED"]
    assert [len(client.get_metric_history(r.info.run_id, "val/logloss")) for r in runs] == [1, 1]


def test_no_logger_trains_without_the_learning_rate_monitor(data, tmp_path):
    run = tmp_path / "run"
    train(tiny_train_cfg(data, run, "~logger"))
    assert (run / "result.json").is_file()
    assert not (run / "csv").exists()


@pytest.mark.parametrize(
    ("logger", "missing", "message"),
    [
        ("tensorboard", {"tensorboard", "tensorboardX"}, "logger.tensorboard (TensorBoardLogger) needs tensorboard: "),
        ("many_loggers", {"mlflow"}, "logger.mlflow (MLFlowLogger) needs mlflow: "),
        ("mlflow", {"sqlalchemy", "alembic"}, "logger.mlflow (MLFlowLogger) needs sqlalchemy and alembic: "),
        ("wandb", {"wandb"}, "logger.wandb (WandbLogger) needs wandb: "),
    ],
)
def test_missing_logger_package_is_named_before_reading_data(logger, missing, message, tmp_path, monkeypatch):
    monkeypatch.setattr(loggers, "_installed", lambda module: module not in missing)
    cfg = tiny_train_cfg(tmp_path / "does-not-exist", tmp_path / "run", f"logger={logger}")
    with pytest.raises(ConfigError) as error:
        train(cfg)
    extra = "wandb" if logger == "wandb" else "loggers"
    assert str(error.value).startswith(f'{message}pip install -e ".[{extra}]"')
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()
