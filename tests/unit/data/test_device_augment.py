"""catdog/data/device_augment.py (data.pipeline=device): per-image parameters drawn as torchvision draws them,
pixels as torchvision computes them, determinism per (seed, epoch, index)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from catdog.data.device_augment import (
    NUM_BINS,
    OPS,
    BatchAugment,
    apply_colour_op,
    counter_uniform,
    magnitude_table,
    resized_crop_boxes,
)
from catdog.data.transforms import train_transform
from catdog.errors import ConfigError

N = 20_000
#: Two-sample Kolmogorov-Smirnov tests reject at this level: a false alarm once in a million seeds.
KS_ALPHA = 1e-6
#: Deviations of a share allowed, in standard errors (two-sided p ~ 6e-7).
Z = 5.0
JITTER_ORDERS = list(itertools.permutations(range(3)))  # (brightness, contrast, saturation) indices


def _ks(a: torch.Tensor, b: torch.Tensor) -> float:
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    a, b = a.flatten().double().sort().values, b.flatten().double().sort().values
    points = torch.cat([a, b])
    gap = torch.searchsorted(a, points, right=True) / len(a) - torch.searchsorted(b, points, right=True) / len(b)
    return float(gap.abs().max())


def _ks_critical(n: int, m: int, alpha: float = KS_ALPHA) -> float:
    """The KS statistic that samples of sizes n and m of one distribution exceed with probability ``alpha``
    (the asymptotic bound sqrt(-ln(alpha / 2) / 2) * sqrt((n + m) / (n m)))."""
    return math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt((n + m) / (n * m))


def _workers_jitter(j: float) -> v2.ColorJitter:
    """The ``ColorJitter`` in the workers pipeline's train transform at ``data.augment.color_jitter=j``."""
    return next(t for t in train_transform(32, color_jitter=j).transforms if isinstance(t, v2.ColorJitter))


# ----- random numbers and parameters --------------------------------------------------------------------------------
def test_counter_uniform_is_a_pure_function_of_seed_epoch_and_index():
    idx = torch.arange(1000)
    u = counter_uniform(7, 3, idx, 5)
    assert u.shape == (1000, 5) and float(u.min()) >= 0 and float(u.max()) < 1
    # the same sample in another batch, in another position: the same numbers
    assert torch.equal(counter_uniform(7, 3, torch.tensor([999, 4]), 5), u[[999, 4]])
    for other in (counter_uniform(8, 3, idx, 5), counter_uniform(7, 4, idx, 5)):
        assert (other != u).float().mean() > 0.99
    big = counter_uniform(1, 0, torch.arange(N), 2)
    assert abs(float(big.mean()) - 0.5) < 0.01 and abs(float(big.std()) - math.sqrt(1 / 12)) < 0.01
    counts = torch.histc(big[:, 0], bins=10, min=0, max=1)
    assert float(counts.min()) > 0.9 * N / 10 and float(counts.max()) < 1.1 * N / 10
    assert abs(float(torch.corrcoef(big.T)[0, 1])) < 0.03  # draws of one sample are not correlated


@pytest.mark.parametrize("hw", [(110, 110), (90, 160), (200, 100)])
def test_crop_boxes_follow_torchvision_random_resized_crop(hw):
    H, W = hw
    scale, ratio = (0.35, 1.0), (3 / 4, 4 / 3)
    u = counter_uniform(0, 0, torch.arange(N), 22)
    ours = resized_crop_boxes(u, torch.full((N,), H), torch.full((N,), W), scale, ratio)
    top, left, h, w = ours.unbind(1)
    assert bool(((top >= 0) & (left >= 0) & (top + h <= H) & (left + w <= W) & (h > 0) & (w > 0)).all())
    crop = v2.RandomResizedCrop(32, scale=scale, ratio=ratio)
    image = torch.zeros(3, H, W)
    torch.manual_seed(0)
    theirs = torch.tensor(
        [[p["top"], p["left"], p["height"], p["width"]] for p in (crop.make_params([image]) for _ in range(N))],
        dtype=torch.float32,
    )
    for name, a, b in (("ours", ours, theirs),):
        area_a, area_b = a[:, 2] * a[:, 3] / (H * W), b[:, 2] * b[:, 3] / (H * W)
        assert abs(float(area_a.mean() - area_b.mean())) < 0.01, name
        log_a, log_b = torch.log(a[:, 3] / a[:, 2]), torch.log(b[:, 3] / b[:, 2])
        assert abs(float(log_a.mean() - log_b.mean())) < 0.01 and abs(float(log_a.std() - log_b.std())) < 0.01
        for q in (0.1, 0.5, 0.9):
            assert abs(float(area_a.quantile(q) - area_b.quantile(q))) < 0.015, q
        centre_a = (a[:, 1] + a[:, 3] / 2) / W
        centre_b = (b[:, 1] + b[:, 3] / 2) / W
        assert abs(float(centre_a.mean() - centre_b.mean())) < 0.01


def test_crop_falls_back_to_torchvisions_central_crop():
    # a 10 x 200 strip: no attempt fits the ratio range, so torchvision takes the central 10 x 13 box
    u = counter_uniform(0, 0, torch.arange(50), 22)
    boxes = resized_crop_boxes(u, torch.full((50,), 10), torch.full((50,), 200), (0.35, 1.0), (3 / 4, 4 / 3))
    h, w = 10, round(10 * 4 / 3)
    expected = torch.tensor([(10 - h) // 2, (200 - w) // 2, h, w], dtype=torch.float32)
    assert torch.equal(boxes, expected.expand(50, 4))


def _policy_draws(policy: str, size: int, n: int) -> list[tuple[str, float]]:
    """(operation, magnitude) as torchvision's own policy class draws them, recorded from its forward pass."""
    cls = v2.TrivialAugmentWide if policy == "trivial" else v2.RandAugment
    transform = cls() if policy == "trivial" else cls(num_ops=2, magnitude=9)
    seen = []

    def record(image, transform_id, magnitude, interpolation, fill):
        seen.append((transform_id, magnitude))
        return image

    transform._apply_image_or_video_transform = record
    image = torch.zeros(3, size, size, dtype=torch.uint8)
    torch.manual_seed(0)
    for _ in range(n):
        transform(image)
    return seen


@pytest.mark.parametrize("policy", ["trivial", "randaugment"])
def test_policy_operations_and_magnitudes_match_torchvisions(policy):
    size, n = 64, 6000
    aug = BatchAugment(seed=3, auto=policy)
    p = aug.sample(torch.full((n,), 80), torch.full((n,), 80), torch.arange(n), epoch=0, size=size)
    ops, mags = p["ops"].flatten(), p["magnitudes"].flatten()
    theirs = _policy_draws(policy, size, n)
    assert len(theirs) == len(ops)  # one draw per image (trivial), two (randaugment)
    for i, name in enumerate(OPS):
        ours_share = float((ops == i).float().mean())
        their_mags = [m for t, m in theirs if t == name]
        assert abs(ours_share - len(their_mags) / len(theirs)) < 0.015, name
        assert abs(ours_share - 1 / len(OPS)) < 0.015, name
        # magnitudes from the same values, signs included, with the same spread
        ours_set = {round(float(m), 4) for m in mags[ops == i]}
        their_set = {round(float(m), 4) for m in their_mags}
        assert len(ours_set & their_set) >= 0.9 * len(their_set | ours_set), name
        ours_abs = float(mags[ops == i].abs().mean())
        theirs_abs = float(torch.tensor(their_mags).abs().mean())
        assert ours_abs == pytest.approx(theirs_abs, rel=0.1, abs=1e-6), name
        if ours_abs > 0 and name not in ("Posterize", "Solarize"):  # the signed operations
            assert 0.4 < float((mags[ops == i] < 0).float().mean()) < 0.6, name
    assert magnitude_table(policy, size).shape == (len(OPS), NUM_BINS)


def test_flip_rate_rotation_range_and_jitter_range():
    n = N
    aug = BatchAugment(seed=1, hflip=0.3, rotation=10, color_jitter=0.2)
    p = aug.sample(torch.full((n,), 50), torch.full((n,), 50), torch.arange(n), epoch=2, size=32)
    assert abs(float(p["flip"].float().mean()) - 0.3) < 0.015
    assert float(p["angle"].abs().max()) <= 10 and float(p["angle"].abs().mean()) == pytest.approx(5, abs=0.2)
    assert float(p["jitter"].min()) >= 0.8 and float(p["jitter"].max()) <= 1.2
    none = BatchAugment(seed=1, hflip=0.0).sample(
        torch.full((n,), 50), torch.full((n,), 50), torch.arange(n), epoch=2, size=32
    )
    assert not bool(none["flip"].any()) and not bool(none["angle"].any())


@pytest.mark.parametrize("j", [0.2, 1.5])
def test_jitter_factors_and_orders_are_the_workers_colorjitters(j):
    n = N
    aug = BatchAugment(seed=4, color_jitter=j)
    p = aug.sample(torch.full((n,), 50), torch.full((n,), 50), torch.arange(n), epoch=1, size=32)
    jitter = _workers_jitter(j)
    torch.manual_seed(0)
    theirs = [jitter.make_params([]) for _ in range(n)]
    for k, name in enumerate(("brightness", "contrast", "saturation")):
        lo, hi = getattr(jitter, name)
        assert (lo, hi) == (max(0.0, 1 - j), 1 + j)  # torchvision clamps the low end at 0: no inverted images
        ours = p["jitter"][:, k]
        ulp = 2.0**-22  # float32's spacing at the largest bound here (2.5): the bounds' own rounding
        assert float(ours.min()) >= lo - ulp and float(ours.max()) <= hi + ulp, name
        their_factors = torch.tensor([t[f"{name}_factor"] for t in theirs])
        assert _ks(ours, their_factors) < _ks_critical(n, n), name
    # the order: one of the 3! alike per image, as torchvision's randperm(4) orders the three operations that are on
    ours_orders = [tuple(o) for o in p["order"].tolist()]
    their_orders = [tuple(int(i) for i in t["fn_idx"] if i < 3) for t in theirs]
    share = 1 / len(JITTER_ORDERS)
    se = math.sqrt(share * (1 - share) / n)  # 0.0026 at n = 20,000
    for order in JITTER_ORDERS:
        ours_share, their_share = ours_orders.count(order) / n, their_orders.count(order) / n
        assert abs(ours_share - share) < Z * se and abs(their_share - share) < Z * se, order
        assert abs(ours_share - their_share) < Z * math.sqrt(2) * se, order


# ----- pixels ---------------------------------------------------------------------------------------------------------
def _images(b=6, side=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, side, side), dtype=torch.uint8, generator=g)


def test_a_whole_image_crop_at_the_stored_size_returns_the_pixels():
    x = _images()
    side = torch.full((len(x),), 48)
    aug = BatchAugment(seed=0, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0)
    out = aug(x, side, side, torch.arange(len(x)), epoch=0, size=48)
    assert torch.allclose(out, x.float() / 255, atol=1e-5)
    flipped = BatchAugment(seed=0, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=1.0)
    out = flipped(x, side, side, torch.arange(len(x)), epoch=0, size=48)
    assert torch.allclose(out, x.flip(-1).float() / 255, atol=1e-5)


def test_crops_match_torchvisions_resized_crop():
    x = _images(b=32, side=64)
    side = torch.full((32,), 64)
    aug = BatchAugment(seed=5, hflip=0.0)
    idx = torch.arange(32)
    out = aug(x, side, side, idx, epoch=1, size=56)  # shrinks at most 64 / 56 < 1.25: no supersampling
    boxes = aug.sample(side, side, idx, 1, 56)["box"].long()
    for i, (top, left, h, w) in enumerate(boxes.tolist()):
        ref = TF.resized_crop(x[i].float() / 255, top, left, h, w, [56, 56], antialias=False)
        inner = (slice(2, -2), slice(2, -2))  # torchvision clamps at the crop's edge, grid_sample reads beyond it
        assert (out[i][:, inner[0], inner[1]] - ref[:, inner[0], inner[1]]).abs().max() < 2e-3, i


def test_supersampling_antialiases_a_large_shrink():
    # a 1-pixel checkerboard shrunk 4x averages to grey instead of aliasing to black or white
    board = ((torch.arange(128)[:, None] + torch.arange(128)[None, :]) % 2 * 255).to(torch.uint8)
    x = board.expand(1, 3, 128, 128).contiguous()
    aug = BatchAugment(seed=0, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0)
    out = aug(x, torch.tensor([128]), torch.tensor([128]), torch.tensor([0]), epoch=0, size=32)
    assert float((out - 0.5).abs().max()) < 0.02


@pytest.mark.parametrize("name", ["Brightness", "Color", "Contrast", "Sharpness", "Posterize", "Solarize",
                                  "AutoContrast", "Equalize"])  # fmt: skip
def test_colour_operations_match_torchvision_per_image(name):
    x = _images(b=4, side=24, seed=2).float() / 255
    factors = {"Posterize": [2.0, 4.0, 6.0, 8.0], "Solarize": [0.2, 0.5, 0.8, 1.0]}.get(name, [-0.5, -0.1, 0.3, 0.9])
    op = torch.full((4,), OPS.index(name))
    out = apply_colour_op(x, op, torch.tensor(factors))
    reference = {
        "Brightness": lambda img, m: TF.adjust_brightness(img, 1 + m),
        "Color": lambda img, m: TF.adjust_saturation(img, 1 + m),
        "Contrast": lambda img, m: TF.adjust_contrast(img, 1 + m),
        "Sharpness": lambda img, m: TF.adjust_sharpness(img, 1 + m),
        "Posterize": lambda img, m: TF.posterize(img, int(m)),
        "Solarize": lambda img, m: TF.solarize(img, m),
        "AutoContrast": lambda img, m: TF.autocontrast(img),
        "Equalize": lambda img, m: TF.equalize(TF.to_dtype(img, torch.uint8, scale=True)).float() / 255,
    }[name]
    for i, m in enumerate(factors):
        ref = reference(x[i], m)
        assert (out[i] - ref).abs().max() < 1e-4, (name, m)
    identity = apply_colour_op(x, torch.full((4,), OPS.index("Identity")), torch.zeros(4))
    assert torch.equal(identity, x)


def test_geometric_policy_ops_shift_rotate_and_fill_black():
    x = _images(b=1, side=32, seed=4)
    side = torch.tensor([32])
    aug = BatchAugment(seed=0, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, auto="trivial")
    params = aug.sample(side, side, torch.tensor([0]), 0, 32)
    params["ops"][:] = OPS.index("TranslateX")
    params["magnitudes"][:] = 5.0
    aug.sample = lambda *a, **k: params
    out = aug(x, side, side, torch.tensor([0]), epoch=0, size=32)
    assert torch.allclose(out[0, :, :, 5:], x[0, :, :, :-5].float() / 255, atol=1e-5)
    assert float(out[0, :, :, :5].abs().max()) < 1e-6  # torchvision's fill: black
    params["ops"][:], params["magnitudes"][:] = OPS.index("Rotate"), 90.0
    out = aug(x, side, side, torch.tensor([0]), epoch=0, size=32)
    ref = TF.rotate(x[0].float() / 255, 90.0)
    assert (out[0] - ref).abs().max() < 1e-4


def test_a_samples_augmentation_does_not_depend_on_its_batch():
    x = _images(b=8, side=40)
    hw = torch.full((8,), 40)
    aug = BatchAugment(seed=9, rotation=10, color_jitter=0.2, auto="randaugment")
    full = aug(x, hw, hw, torch.arange(8), epoch=3, size=32)
    rows = torch.tensor([6, 1])
    part = aug(x[rows], hw[rows], hw[rows], rows, epoch=3, size=32)
    assert torch.allclose(part, full[rows], atol=1e-5)
    other_epoch = aug(x, hw, hw, torch.arange(8), epoch=4, size=32)
    assert not torch.allclose(other_epoch, full, atol=1e-2)


@pytest.mark.parametrize("j", [0.5, 1.5])
def test_jittered_pixels_follow_the_workers_colorjitter(j):
    # The same 8 images, each 1,250 times: the device pipeline (its crop and flip the identity) against the workers
    # pipeline's ColorJitter on the same pixels. Past j = 1 torchvision draws factors from [0, 1 + j]: no inverted
    # images and, only where a brightness factor is near 0, black ones.
    n = 10_000
    base = _images(b=8, side=8, seed=1)
    idx = torch.arange(n)
    side = torch.full((n,), 8)
    aug = BatchAugment(seed=2, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, color_jitter=j)
    ours = aug(base[idx % 8], side, side, idx, epoch=0, size=8)
    jitter = _workers_jitter(j)
    torch.manual_seed(0)
    theirs = torch.stack([jitter(base[i % 8].float() / 255) for i in range(n)])
    critical = _ks_critical(n, n)  # 0.038
    for stat in (
        lambda x: x.mean(dim=(1, 2, 3)),  # brightness
        lambda x: x.std(dim=(1, 2, 3)),  # contrast
        lambda x: (x.amax(dim=1) - x.amin(dim=1)).mean(dim=(1, 2)),  # colourfulness
    ):
        assert _ks(stat(ours), stat(theirs)) < critical
    black_ours = float((ours.amax(dim=(1, 2, 3)) < 0.5 / 255).float().mean())  # every pixel rounds to 0
    black_theirs = float((theirs.amax(dim=(1, 2, 3)) < 0.5 / 255).float().mean())
    pooled = (black_ours + black_theirs) / 2
    # the standard error of the difference of two shares: 0.0004 at j = 1.5 (shares near 0.001); 1 / n: one image
    se = math.sqrt(2 * pooled * (1 - pooled) / n)
    assert abs(black_ours - black_theirs) <= Z * se + 1 / n, (black_ours, black_theirs)


def test_each_image_gets_its_own_jitter_order():
    # Brightness, contrast and saturation commute until a blend clamps to [0, 1]: an image whose pixels clamped
    # matches the one order it was jittered in; the others match several. Each image must match the order drawn for
    # it, and every order must be the only match of some image (each is expected ~20 times here).
    b, side = 240, 16
    x = _images(b=b, side=side, seed=3)
    hw, idx = torch.full((b,), side), torch.arange(b)
    aug = BatchAugment(seed=6, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, color_jitter=0.5)
    out = aug(x, hw, hw, idx, epoch=0, size=side)
    factors = aug.sample(hw, hw, idx, 0, side)["jitter"]
    kernels = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
    # float32 rounding, at worst: the grey mean sums 3 x 256 values (768 ulps of 6e-8: 4.6e-5), weighed by |1 - c| <=
    # 0.5 in the contrast blend and amplified at most 2x and 1.5x by the later ones (|f| + |1 - f| with f <= 1.5): 7e-5
    tolerance = 1e-4
    matches, only = [], set()
    for i in range(b):
        fits = []
        for order in JITTER_ORDERS:
            ref = x[i].float() / 255
            for k in order:
                ref = kernels[k](ref, float(factors[i, k]))
            if float((out[i] - ref).abs().max()) < tolerance:
                fits.append(order)
        assert fits, i  # the output is the workers' jitter in one of the orders
        matches.append(fits)
        if len(fits) == 1:
            only.add(fits[0])
    assert only == set(JITTER_ORDERS)
    drawn = [tuple(o) for o in aug.sample(hw, hw, idx, 0, side)["order"].tolist()]
    assert all(order in fits for order, fits in zip(drawn, matches))


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "0.2", True])
def test_both_pipelines_refuse_the_same_jitter_strengths(bad):
    for build in (lambda: BatchAugment(seed=0, color_jitter=bad), lambda: train_transform(32, color_jitter=bad)):
        with pytest.raises(ConfigError, match=r"data.augment.color_jitter must be a number >= 0"):
            build()
