"""Several processes, one result: which process writes, validation predictions gathered from every rank, and the
checks that keep a distributed run equal to a one-process one.

Lightning's DDP starts the other processes of a node by running ``train.py`` again (``LOCAL_RANK=1 ...``) once the
first ``Trainer.fit`` begins; torchrun and SLURM start them all at once. Every process runs the whole of ``train()``:
the same split, the same model, the same fits (each ``Trainer`` joins the process group the first one made), and
the same gathered validation predictions, so each finds the same best checkpoint and temperature. Only global rank
zero writes files.
"""

from __future__ import annotations

import logging
import os

import torch
from omegaconf import DictConfig
from torch.nn.parallel import DistributedDataParallel

from catdog.errors import CatdogError, ConfigError

log = logging.getLogger(__name__)

# Set by the process that drew a seed for ``seed=null``; the processes Lightning starts later inherit it.
SEED_ENV = "CATDOG_DRAWN_SEED"


def _int_env(*names: str) -> int | None:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return None


def launch_rank(devices_per_node: int | None = None) -> int:
    """This process's global rank, from the environment its launcher set (before any ``Trainer`` exists):
    ``RANK`` (torchrun, submitit), ``SLURM_PROCID`` (srun), ``JSM_NAMESPACE_RANK`` (jsrun), else Lightning's own
    children (``NODE_RANK`` x devices + ``LOCAL_RANK``; ``devices_per_node`` unknown: a count that is > 0 on every node
    but the first); 0 for a process started by hand."""
    rank = _int_env("RANK")
    if rank is not None:
        return rank
    if (_int_env("SLURM_NTASKS") or 1) > 1:
        return _int_env("SLURM_PROCID") or 0
    if _int_env("JSM_NAMESPACE_RANK") is not None:  # LSF's jsrun
        return _int_env("JSM_NAMESPACE_RANK")
    node = _int_env("NODE_RANK", "GROUP_RANK") or 0
    return node * (devices_per_node or 1) + (_int_env("LOCAL_RANK") or 0)


def devices_per_node(cfg: DictConfig) -> int | None:
    """``trainer.devices`` as a count (an int, or a list of device ids); None for "auto" / -1."""
    devices = cfg.trainer.get("devices")
    if isinstance(devices, bool):
        return None
    if isinstance(devices, int):
        return devices if devices > 0 else None
    if isinstance(devices, str) and devices.strip().isdigit():
        return int(devices)
    try:
        return len(list(devices))
    except TypeError:
        return None


def world_size(cfg: DictConfig) -> int:
    """How many processes the configured Trainer runs (``trainer.devices`` x ``trainer.num_nodes``); 1 when the
    count is left to Lightning ("auto", -1)."""
    return (devices_per_node(cfg) or 1) * int(cfg.trainer.get("num_nodes") or 1)


def secondary_rank() -> bool:
    """Whether this process is rank > 0 of a distributed run (any process of a node other than the first: whether
    the rank is 0 does not depend on the devices per node)."""
    return launch_rank() > 0


def is_writer(cfg: DictConfig) -> bool:
    """Whether this process writes the run's files (global rank zero)."""
    return not secondary_rank()


def externally_launched() -> bool:
    """Whether a launcher (torchrun, SLURM's srun, submitit) started every process itself."""
    return ("LOCAL_RANK" in os.environ and (_int_env("WORLD_SIZE") or 1) > 1) or (_int_env("SLURM_NTASKS") or 1) > 1


def shared_seed(draw) -> int:
    """The seed of a ``seed=null`` run, the same in every process: rank zero calls ``draw()`` and records the result
    in the environment, which the processes Lightning starts later inherit."""
    if secondary_rank():
        inherited = _int_env(SEED_ENV)
        if inherited is None:
            raise ConfigError(
                "seed=null in a process of a distributed run that did not inherit the drawn seed (started by "
                "torchrun / SLURM?): set seed=N"
            )
        return inherited
    seed = int(draw())
    os.environ[SEED_ENV] = str(seed)
    return seed


def check_distributed(cfg: DictConfig, multirun: bool, run_dir_given: bool = True) -> None:
    """Refuse the distributed set-ups that cannot give one correct result, each with what to do instead
    (``run_dir_given``: whether the command names ``hydra.run.dir``)."""
    n = world_size(cfg)
    if n <= 1:
        return
    if externally_launched() and not multirun and not run_dir_given and "SUBMITIT_EXECUTOR" not in os.environ:
        raise ConfigError(
            "processes started by torchrun / srun each make their own time-stamped run folder: name one for all of "
            "them with hydra.run.dir=PATH"
        )
    strategy = str(cfg.trainer.get("strategy") or "auto")
    if strategy.startswith(("ddp_spawn", "ddp_fork", "ddp_notebook")):
        raise ConfigError(
            f"trainer.strategy={strategy}: catdog runs several processes with trainer.strategy=ddp (each process "
            "runs train.py); use trainer=ddp"
        )
    if multirun and not externally_launched():
        raise ConfigError(
            f"a multirun sweep (-m) with {n} processes per job (trainer.devices x trainer.num_nodes): Lightning would "
            "start every job's other processes by running the whole sweep again. Run the sweep through a launcher "
            "that starts each job's processes itself: hydra/launcher=slurm (a SLURM cluster) or hydra/launcher=local "
            "(this machine), which give each job trainer.devices tasks (hydra.launcher.tasks_per_node="
            f"{devices_per_node(cfg) or 'DEVICES'}); or sweep with trainer.devices=1"
        )
    if cfg.get("seed") is None and externally_launched() and _int_env(SEED_ENV) is None:
        raise ConfigError(
            "seed=null with processes started by torchrun / SLURM / submitit: each process would draw its own seed "
            "(and its own train/validation split); set seed=N"
        )


def adopt_submitit_environment() -> None:
    """Inside a job of Hydra's submitit launcher with several tasks, export the torch.distributed variables
    (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) so that Lightning joins those tasks into one DDP group
    instead of starting processes of its own. SLURM jobs need nothing: Lightning reads SLURM's variables."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "local" or "LOCAL_RANK" in os.environ:
        return
    try:
        from submitit import JobEnvironment
        from submitit.helpers import TorchDistributedEnvironment
    except ImportError:
        return
    if JobEnvironment().num_tasks > 1:
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def gather_predictions(
    module, logp: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every rank's validation predictions, each image once, ordered by dataset index (a one-process validation's
    order). Lightning's distributed sampler gives ranks equal shares by repeating a few images; ranks may also hold
    different counts where unreadable images were skipped, so shares are padded to one length for the gather and
    the padding and repeats dropped afterwards."""
    device = module.device
    count = torch.tensor([len(indices)], device=device)
    longest = int(module.all_gather(count).max())
    pad = longest - len(indices)
    logp = torch.cat([logp, logp.new_zeros(pad, logp.shape[1])]).to(device)
    targets = torch.cat([targets, targets.new_zeros(pad)]).to(device)
    indices = torch.cat([indices, indices.new_full((pad,), -1)]).to(device)
    logp, targets, indices = (module.all_gather(t).flatten(0, 1).cpu() for t in (logp, targets, indices))
    order = torch.argsort(indices, stable=True)
    logp, targets, indices = logp[order], targets[order], indices[order]
    keep = indices >= 0
    keep[1:] &= indices[1:] != indices[:-1]
    return logp[keep], targets[keep], indices[keep]


# ----- staged fine-tuning under DDP ---------------------------------------------------------------------------------
# DistributedDataParallel registers the parameters that require a gradient when it is built, and all-reduces only
# those: a part unfrozen later would train on every process's own gradient, and the replicas would drift apart. So
# the wrapper is rebuilt whenever the set of trainable parameters changes (once per unfreeze), and the replicas are
# compared at every epoch end.

_REGISTERED = "_catdog_registered"


def _trainable(module: torch.nn.Module) -> frozenset[int]:
    return frozenset(id(p) for p in module.parameters() if p.requires_grad)


def note_ddp_parameters(trainer) -> None:
    """Record which parameters Lightning's DDP wrapper registered: those trainable when it was built, which are those
    trainable now if nothing has changed them since (call it before the first change, at fit start)."""
    wrapper = getattr(getattr(trainer, "strategy", None), "model", None)
    if isinstance(wrapper, DistributedDataParallel) and not hasattr(wrapper, _REGISTERED):
        setattr(wrapper, _REGISTERED, _trainable(wrapper.module))


def rewrap_ddp(trainer) -> bool:
    """Rebuild the DDP wrapper when the trainable parameters are no longer those it registered (an unfreeze, or a
    resume past one): the new wrapper all-reduces every trainable parameter's gradient, and starts by broadcasting
    rank zero's parameters and buffers. Returns whether it rebuilt; outside DDP (or without a trainer) it does
    nothing."""
    strategy = getattr(trainer, "strategy", None)
    wrapper = getattr(strategy, "model", None)
    if not isinstance(wrapper, DistributedDataParallel):
        return False
    trainable = _trainable(wrapper.module)
    if getattr(wrapper, _REGISTERED, None) == trainable:
        return False
    reducer = getattr(wrapper, "reducer", None)
    if reducer is not None:
        reducer._remove_autograd_hooks()  # the old wrapper must not all-reduce gradients any more
    strategy.model = strategy._setup_model(wrapper.module)  # Lightning's own wrapping, with its DDP settings
    strategy._register_ddp_hooks()
    setattr(strategy.model, _REGISTERED, trainable)
    log.info("DDP: %d parameter tensors now trained on every process", len(trainable))
    return True


class ReplicaDriftError(CatdogError):
    """The processes of a distributed run hold different parameters."""


def parameter_checksum(module: torch.nn.Module) -> torch.Tensor:
    """Two float64 numbers that change with any parameter: the sum of all parameters, and a sum weighted by each
    tensor's position (so swapped or shifted values count too)."""
    # (sum, sum of absolute values) of each tensor, one float64 copy at a time
    copies = (p.detach().double() for p in module.parameters())
    sums = torch.stack([torch.stack([d.sum(), d.abs().sum()]) for d in copies])
    position = torch.arange(1, len(sums) + 1, dtype=torch.float64, device=sums.device)
    return torch.stack([sums[:, 0].sum(), (sums[:, 0] * position + sums[:, 1] / position).sum()])


def compare_checksums(gathered: torch.Tensor, epoch: int, rtol: float = 1e-9) -> None:
    """Raise :class:`ReplicaDriftError` naming ``epoch`` and the processes whose checksum (a row of ``gathered``,
    one per process) differs from rank zero's."""
    reference = gathered[0]
    tolerance = rtol * reference.abs().clamp_min(1.0)
    off = [rank for rank, row in enumerate(gathered) if bool(((row - reference).abs() > tolerance).any())]
    if off:
        raise ReplicaDriftError(
            f"epoch {epoch}: the model's parameters differ between processes (rank(s) {off} vs rank 0; checksums "
            f"{[[float(v) for v in row] for row in gathered]}), so each process trains a model of its own. The run "
            "stopped; its checkpoints are those of the last epoch whose replicas agreed"
        )


def check_replicas(module, epoch: int) -> None:
    """Under DDP: gather one checksum of the parameters from every process (one small all-gather), log "replicas in
    sync" when they agree, raise :class:`ReplicaDriftError` naming ``epoch`` when they don't."""
    gathered = module.all_gather(parameter_checksum(module)).reshape(-1, 2).cpu()
    compare_checksums(gathered, epoch)
    log.info("epoch %d: replicas in sync (%d processes, parameter checksum %.6e)", epoch, len(gathered), gathered[0, 0])
