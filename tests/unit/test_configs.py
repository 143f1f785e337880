"""conf/: every experiment composes and passes the train checks, with every optimizer group; the predict config."""

from pathlib import Path

import pytest
from hydra.utils import instantiate

from catdog.builders import resolve_preprocessing
from catdog.models.stages import all_archs
from catdog.validation import check_train_config
from tests.conftest import CONF_DIR, compose_predict, compose_train

EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))


def test_experiments_exist():
    assert {"vgg16", "vgg16_bn", "demo", "convnext_tiny", "efficientnet_v2_s"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_builds(experiment, tmp_path):
    cfg = compose_train([f"experiment={experiment}", "model.weights=null"], output_dir=tmp_path)
    resolve_preprocessing(cfg)
    check_train_config(cfg)
    assert cfg.model.arch in all_archs()
    dm = instantiate(cfg.data, _convert_="all")
    assert dm.hparams.image_size == cfg.data.image_size
    for cb in cfg.callbacks.values():
        instantiate(cb)


OPTIMIZERS = sorted(p.stem for p in (Path(CONF_DIR) / "model" / "optimizer").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_takes_every_optimizer_group_with_that_groups_own_settings(experiment, tmp_path):
    """An experiment's optimizer settings go with its optimizer choice: picking another group brings that group's
    settings alone (no SGD-only nesterov left over for AdamW, no recipe lr carried into another optimizer)."""
    for optimizer in OPTIMIZERS:
        cfg = compose_train(
            [f"experiment={experiment}", "model.weights=null", f"model/optimizer={optimizer}"], output_dir=tmp_path
        )
        resolve_preprocessing(cfg)
        check_train_config(cfg)
        alone = compose_train([f"model/optimizer={optimizer}"]).model.optimizer
        if experiment not in ("vgg16",):  # model=vgg16 sets its own lower lr for every optimizer
            assert cfg.model.optimizer == alone, (experiment, optimizer)


def test_experiment_picks_architecture():
    assert compose_train(["experiment=vgg16"]).model.arch == "vgg16"
    assert compose_train(["experiment=vgg16_bn"]).model.arch == "vgg16_bn"
    # plain VGG needs the lower learning rate
    assert (
        compose_train(["experiment=vgg16"]).model.optimizer.lr
        < compose_train(["experiment=vgg16_bn"]).model.optimizer.lr
    )


def test_predict_config_requires_ckpt():
    cfg = compose_predict(["ckpt=x.ckpt", "tta=5"])
    assert cfg.tta == 5 and cfg.ckpt == "x.ckpt"
