"""``catdog-export`` / ``python export.py ckpt=PATH format=onnx|torchscript``: a self-contained model file (see
conf/export.yaml and :mod:`catdog.exporting`)."""

import hydra
from omegaconf import DictConfig

from catdog.cli.entry import CONFIG_DIR, run_cli
from catdog.cli.resolvers import register_resolvers
from catdog.exporting import export

register_resolvers()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
def main(cfg: DictConfig):
    return run_cli(export, cfg)
