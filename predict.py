"""Predict with a trained checkpoint: python predict.py ckpt=PATH tta=5 (see conf/predict.yaml)."""

import hydra
from omegaconf import DictConfig

from catdog.cli import run_cli
from catdog.prediction import predict
from catdog.sweep import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig):
    return run_cli(predict, cfg)


if __name__ == "__main__":
    main()
