"""Train a catdog classifier: python train.py experiment=vgg16_bn data.dir=PATH (see conf/train.yaml)."""

import hydra
from omegaconf import DictConfig

from catdog.cli import run_cli
from catdog.sweep import register_resolvers
from catdog.training import train

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run_cli(train, cfg, record=False)  # train writes .hydra/ once the run is accepted


if __name__ == "__main__":
    main()
