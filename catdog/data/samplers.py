"""Training and validation samplers: an epoch's order from (seed, epoch) alone, sharded across DDP processes.

A training sampler yields one integer *draw code* per sample, ``(epoch * n + key) * n + index`` (:func:`draw_code`):
the dataset index of the image, the epoch (so the dataset knows which progressive size and augmentation to use) and
the *augmentation key* that seeds the sample's augmentation, together with the run's seed. The shuffle's key is the
image's index: each image is augmented once per epoch. The class-balanced sampler draws with replacement, so one
image may be drawn several times in an epoch: its key is the draw's position in the epoch's draw, and every copy gets
augmentations of its own. Both are pure functions of (seed, epoch, position), so a resumed run and a run on several
processes see exactly what one uninterrupted process sees.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch
from torch.utils.data import Sampler


def draw_code(epoch, key, index, n: int):
    """The code a training sampler yields for ``index`` (of ``n`` images) drawn with augmentation ``key`` in ``epoch``
    (ints or integer tensors alike)."""
    return (epoch * n + key) * n + index


def split_code(code, n: int):
    """``(epoch, key, index)`` of a :func:`draw_code` (ints or integer tensors alike)."""
    rest = code // n
    return rest // n, rest % n, code % n


def shard(order: list[int], rank: int, world: int) -> list[int]:
    """Process ``rank``'s share of ``order`` among ``world`` processes: positions ``rank, rank + world, ...`` after
    the order is padded with its first items to a multiple of ``world`` (as torch's ``DistributedSampler`` pads), so
    at every step the union of the processes' batches of B is the one-process batch of ``world`` x B."""
    if world <= 1 or not order:
        return list(order)
    padded = list(order)
    while len(padded) % world:
        padded += order[: world - len(padded) % world]
    return padded[rank::world]


class EpochShuffleSampler(Sampler[int]):
    """A shuffle that depends only on (seed, epoch); yields :func:`draw_code` ``(epoch, index, index)``.

    Unlike ``shuffle=True`` it draws nothing from the global RNG, so a resumed run sees the same order and
    the same augmentations as an uninterrupted one, whatever the number of workers. Under DDP each process takes its
    :func:`shard` of the one epoch order (``rank`` of ``world``): the processes' batches of a step together are the
    one-process batch of ``world`` x the batch size.
    """

    def __init__(self, n: int, seed: int, epoch: int = 0, rank: int = 0, world: int = 1):
        self.n, self.seed, self.epoch = n, int(seed), int(epoch)
        self.rank, self.world = int(rank), max(1, int(world))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return -(-self.n // self.world)

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)

    def __iter__(self):
        order = torch.randperm(self.n, generator=self._generator())
        return iter(shard(draw_code(self.epoch, order, order, self.n).tolist(), self.rank, self.world))


class BalancedEpochSampler(EpochShuffleSampler):
    """``data.sampler=balanced``: each epoch draws as many indices as there are images, with replacement, every class
    equally likely (an image of class c with probability ``1 / (K * n_c)``), from (seed, epoch) alone. The draw at
    position p of the epoch yields :func:`draw_code` ``(epoch, p, index)``: an image drawn twice is augmented twice,
    differently. Under DDP the one draw is sharded as :class:`EpochShuffleSampler` shards its order."""

    def __init__(self, labels: Sequence[int], seed: int, epoch: int = 0, rank: int = 0, world: int = 1):
        super().__init__(len(labels), seed, epoch, rank, world)
        counts = Counter(labels)
        self.weights = torch.tensor([1.0 / counts[y] for y in labels], dtype=torch.float64)

    def __iter__(self):
        drawn = torch.multinomial(self.weights, self.n, replacement=True, generator=self._generator())
        codes = draw_code(self.epoch, torch.arange(self.n), drawn, self.n)
        return iter(shard(codes.tolist(), self.rank, self.world))


class ShardSampler(Sampler[int]):
    """Indices ``0..n-1`` in order, or this process's :func:`shard` of them under DDP (validation: every process
    scores its share and :func:`catdog.distributed.gather_predictions` reassembles the whole set)."""

    def __init__(self, n: int, rank: int = 0, world: int = 1):
        self.indices = shard(list(range(n)), int(rank), int(world))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)
