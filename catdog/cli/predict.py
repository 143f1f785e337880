"""``catdog-predict`` / ``python predict.py ckpt=PATH tta=5``: predict with a checkpoint, a run or an ensemble (see
conf/predict.yaml)."""

import hydra
from omegaconf import DictConfig

from catdog.cli.entry import CONFIG_DIR, run_cli
from catdog.cli.resolvers import register_resolvers
from catdog.prediction import predict

register_resolvers()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
def main(cfg: DictConfig):
    return run_cli(predict, cfg)
