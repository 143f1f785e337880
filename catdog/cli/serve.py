"""``catdog-serve`` / ``python -m catdog.serve ckpt=PATH [tta=5]``: the model(s) behind an HTTP endpoint and a web
page (see conf/serve.yaml and :mod:`catdog.serving`)."""

import hydra
from omegaconf import DictConfig

from catdog.cli.entry import CONFIG_DIR, run_cli
from catdog.cli.resolvers import register_resolvers
from catdog.serving.server import serve

register_resolvers()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="serve")
def main(cfg: DictConfig):
    return run_cli(serve, cfg)
