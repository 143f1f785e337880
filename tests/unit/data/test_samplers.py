"""catdog/data/samplers.py: draw codes, the epoch shuffle, the class-balanced draw and their DDP shards."""

from __future__ import annotations

from collections import Counter

import torch

from catdog.data.samplers import BalancedEpochSampler, EpochShuffleSampler, draw_code, split_code


def test_draw_codes_round_trip_for_ints_and_tensors():
    n = 7
    for epoch, key, index in [(0, 0, 0), (3, 6, 2), (1000, 5, 6)]:
        assert split_code(draw_code(epoch, key, index, n), n) == (epoch, key, index)
    keys, indices = torch.arange(n), torch.randperm(n, generator=torch.Generator().manual_seed(0))
    e, k, i = split_code(draw_code(4, keys, indices, n), n)
    assert (e == 4).all() and torch.equal(k, keys) and torch.equal(i, indices)


def test_shuffle_keys_each_image_by_its_index():
    """An image is augmented once per epoch, keyed by its own index (as before the key existed)."""
    decoded = [split_code(c, 9) for c in EpochShuffleSampler(9, seed=1, epoch=5)]
    assert sorted(i for _, _, i in decoded) == list(range(9))
    assert all(e == 5 and k == i for e, k, i in decoded)


def test_balanced_sampler_draws_every_class_alike_from_seed_and_epoch_alone():
    labels = [0] * 90 + [1] * 10
    sampler = BalancedEpochSampler(labels, seed=3, epoch=2)
    drawn = list(sampler)
    assert len(drawn) == 100 and all(split_code(c, 100)[0] == 2 for c in drawn)
    again = BalancedEpochSampler(labels, seed=3, epoch=2)
    assert list(again) == drawn
    sampler.set_epoch(3)
    assert list(sampler) != drawn
    # 2000 draws of a fair coin: the minority share's standard error is 0.011, so +-0.05 is beyond 4.4 SE
    minority = sum(labels[split_code(c, 100)[2]] for e in range(20) for c in BalancedEpochSampler(labels, 0, e))
    assert 0.45 < minority / 2000 < 0.55
    shards = [list(BalancedEpochSampler(labels, 3, 2, rank=r, world=2)) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == sorted(drawn) and len(shards[0]) == len(shards[1]) == 50


def test_balanced_draws_of_one_image_carry_keys_of_their_own():
    """The minority images are drawn ~5 times each per epoch: every draw has its own augmentation key (its position),
    so no two draws of an epoch share (epoch, key)."""
    labels = [0] * 90 + [1] * 10
    decoded = [split_code(c, 100) for c in BalancedEpochSampler(labels, seed=0, epoch=1)]
    counts = Counter(i for _, _, i in decoded)
    assert max(counts.values()) > 1  # repeats happen (55 minority draws from 10 images on average)
    assert sorted(k for _, k, _ in decoded) == list(range(100))
