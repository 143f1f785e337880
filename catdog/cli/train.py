"""``catdog-train`` / ``python train.py experiment=vgg16_bn data.dir=PATH``: train (see conf/train.yaml)."""

import hydra
from omegaconf import DictConfig

from catdog.cli.entry import CONFIG_DIR, run_cli
from catdog.cli.resolvers import register_resolvers
from catdog.training import train

register_resolvers()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run_cli(train, cfg, record=False)  # train writes .hydra/ once the run is accepted
