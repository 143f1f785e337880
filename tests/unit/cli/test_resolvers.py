"""catdog/cli/resolvers.py: one run and sweep folder name per config."""

import re
from pathlib import Path

from hydra import compose, initialize_config_dir

from catdog.cli.resolvers import register_resolvers
from tests.conftest import CONF_DIR

STAMP = re.compile(r"^\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d-\d{3}_[0-9a-f]{6}$")


def test_run_and_sweep_folders_resolve_to_one_name_per_config():
    register_resolvers()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        a = compose(config_name="train", return_hydra_config=True)
        b = compose(config_name="train", return_hydra_config=True)
    run = a.hydra.run.dir
    assert run == a.hydra.run.dir  # resolved once, then cached
    assert run.startswith("outputs/train/") and STAMP.match(Path(run).name)
    assert Path(a.hydra.sweep.dir).name == Path(run).name
    assert b.hydra.run.dir != run  # another config (another process): another folder
