"""catdog/loggers.py and conf/logger/: named loggers that compose."""

import hydra
from omegaconf import OmegaConf

from catdog import loggers
from tests.conftest import compose_train


def test_logger_configs_are_named_loggers_that_compose():
    assert list(compose_train().logger) == ["csv"]
    assert list(compose_train(["logger=many_loggers"]).logger) == ["csv", "tensorboard", "mlflow"]
    assert list(compose_train(["logger=[csv,wandb]"]).logger) == ["csv", "wandb"]
    assert loggers.logger_configs(compose_train(["~logger"])) == {}
    single = OmegaConf.create({"logger": {"_target_": "catdog.loggers.CSVLogger", "save_dir": "."}})
    assert list(loggers.logger_configs(single)) == ["logger"]  # one logger given directly
    for name in ("csv", "tensorboard", "mlflow", "wandb"):
        for conf in compose_train([f"logger={name}"]).logger.values():
            hydra.utils.get_class(conf._target_)
