"""``catdog-export`` / ``python export.py ckpt=PATH format=onnx|torchscript|hub``: a self-contained model file (ONNX,
the default; TorchScript, deprecated by torch) or a Hub folder (see conf/export.yaml and :mod:`catdog.exporting`)."""

import hydra
from omegaconf import DictConfig

from catdog.cli.entry import CONFIG_DIR, run_cli
from catdog.cli.resolvers import register_resolvers
from catdog.exporting import export

register_resolvers()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
def main(cfg: DictConfig):
    return run_cli(export, cfg)
