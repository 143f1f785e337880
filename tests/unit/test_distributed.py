"""catdog/distributed.py: the checks of a distributed set-up, the launch rank, the gather of validation predictions,
the samplers' shards and the launcher configs."""

import pytest
import torch
from hydra import compose, initialize_config_dir

from catdog.builders import build_trainer
from catdog.data.samplers import EpochShuffleSampler, ShardSampler
from catdog.distributed import SEED_ENV, check_distributed, gather_predictions, launch_rank
from catdog.errors import ConfigError
from tests.conftest import CONF_DIR, TINY, compose_train, needs_extra

DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_epochs=2"]


def test_distributed_checks(monkeypatch):
    cfg = compose_train([*TINY, *DDP])
    # CATDOG_DRAWN_SEED: left in this process by an earlier in-process train() with seed=null (catdog.distributed)
    for name in (
        "RANK", "LOCAL_RANK", "WORLD_SIZE", "SLURM_NTASKS", "SLURM_PROCID", "NODE_RANK", "GROUP_RANK", SEED_ENV,
    ):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    check_distributed(cfg, multirun=False)
    with pytest.raises(ConfigError, match="hydra.launcher.tasks_per_node=2"):
        check_distributed(cfg, multirun=True)
    cfg.trainer.strategy = "ddp_spawn"
    with pytest.raises(ConfigError, match="trainer.strategy=ddp_spawn"):
        check_distributed(cfg, multirun=False)
    cfg.trainer.strategy, cfg.seed = "ddp", None
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="seed=N"):
        check_distributed(cfg, multirun=False)
    cfg.seed = 3
    with pytest.raises(ConfigError, match="hydra.run.dir=PATH"):
        check_distributed(cfg, multirun=False, run_dir_given=False)
    check_distributed(cfg, multirun=False, run_dir_given=True)
    # Lightning's children: node rank x devices + local rank; torchrun's RANK wins.
    monkeypatch.setenv("NODE_RANK", "1")
    assert launch_rank(2) == 3
    monkeypatch.setenv("RANK", "5")
    assert launch_rank(2) == 5


def test_ddp_steps_see_the_images_of_one_process_with_n_times_the_batch(tmp_path):
    """catdog shards its own epoch shuffle across ranks (Lightning's sampler wrapper, which reshuffles with a seed of
    its own, is off): at every step the union of the ranks' batches is the one-process batch of world x batch images,
    each image keeping its (seed, epoch, index) augmentation seed; validation shares cover every image."""
    n, world, batch, epoch = 41, 2, 4, 3
    one = list(EpochShuffleSampler(n, seed=11, epoch=epoch))
    shards = []
    for rank in range(world):
        sampler = EpochShuffleSampler(n, seed=11, rank=rank, world=world)
        sampler.set_epoch(epoch)
        shards.append(list(sampler))
        assert len(shards[-1]) == len(sampler) == 21  # padded to an equal share
    for step in range(n // (world * batch)):
        ranks = [set(s[step * batch : (step + 1) * batch]) for s in shards]
        assert set.union(*ranks) == set(one[step * world * batch : (step + 1) * world * batch])
    val = [list(ShardSampler(5, rank, 3)) for rank in range(3)]
    assert sorted(set(i for v in val for i in v)) == [0, 1, 2, 3, 4] and all(len(v) == 2 for v in val)
    trainer = build_trainer(compose_train([*TINY, *DDP], output_dir=tmp_path))
    assert trainer._accelerator_connector.use_distributed_sampler is False


def test_gather_drops_padding_and_repeats_in_index_order():
    """Rank 0 holds images 0, 2, 4; rank 1 holds 1 and the sampler's repeat of 0 (its image 3 was unreadable, so its
    share is shorter and padded for the gather)."""

    class TwoRanks:
        device = torch.device("cpu")

        def __init__(self, other):
            self.other = list(other)  # rank 1's count, logp, targets, indices, in gather order

        def all_gather(self, t):
            o = self.other.pop(0)
            if len(o) < len(t):  # rank 1 pads its share as gather_predictions does
                o = torch.cat([o, o.new_full((len(t) - len(o), *o.shape[1:]), -1)])
            return torch.stack([t, o])

    def share(indices):
        idx = torch.tensor(indices)
        return torch.stack([-idx.float(), idx.float()], 1), idx % 2, idx

    rank1 = share([1, 0])
    logp, targets, indices = gather_predictions(TwoRanks([torch.tensor([2]), *rank1]), *share([0, 2, 4]))
    assert indices.tolist() == [0, 1, 2, 4]
    assert logp[:, 1].tolist() == [0.0, 1.0, 2.0, 4.0]
    assert targets.tolist() == [0, 1, 0, 0]


needs_submitit = needs_extra("slurm", "hydra_plugins.hydra_submitit_launcher")


@needs_submitit
@pytest.mark.parametrize("launcher", ["slurm", "local"])
def test_launcher_configs_follow_the_trainer(launcher):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "train", [f"hydra/launcher={launcher}", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"],
            return_hydra_config=True,
        )  # fmt: skip
    hydra_launcher = cfg.hydra.launcher
    assert hydra_launcher.tasks_per_node == 4
    if launcher == "slurm":
        assert hydra_launcher.nodes == 2 and hydra_launcher.gpus_per_node == 4
        assert "partition" in hydra_launcher and hydra_launcher.timeout_min == 240
        assert hydra_launcher._target_.endswith("SlurmLauncher")
    else:
        assert hydra_launcher._target_.endswith("LocalLauncher")
