"""Train-time augmentation of whole batches on the training device (``data.pipeline=device``), CPU or GPU alike.

Every random number is a pure function of ``(seed, epoch, key, draw)`` (:func:`counter_uniform`: an integer hash,
no generator state), where the key is the sample's augmentation key (:mod:`catdog.data.samplers`: the image's index,
or with the class-balanced sampler the draw's position in the epoch), so a sample's augmentation does not depend on
the batch it lands in, the number of processes, the device or whether the run was resumed, exactly as the ``workers``
pipeline seeds each sample by (seed, epoch, key). Each image gets its own parameters, drawn as torchvision draws them:

- random resized crop: torchvision's ``RandomResizedCrop.get_params`` (ten attempts of a scale in ``scale`` and a
  log-uniform aspect ratio in ``ratio``, then the central fallback), on the image's cached size;
- horizontal flip with probability ``hflip``; a rotation uniform in ``[-rotation, rotation]`` degrees about the
  image's centre (black corners), taken before the crop as ``RandomRotation`` is;
- colour jitter: the ``workers`` pipeline's ``ColorJitter`` (:func:`catdog.data.transforms.colour_jitter`), its
  ranges read from it: brightness, contrast and saturation factors uniform in ``[max(0, 1 - j), 1 + j]``, the three
  applied in an order drawn per image (one of the 3! orders alike, as torchvision's ``randperm`` of its four
  operations orders the three that are on);
- TrivialAugmentWide (one of its 14 operations and one of its 31 magnitude bins per image, a random sign where the
  operation is signed) or RandAugment (2 operations at ``magnitude``), with the operation set and magnitude tables
  read from torchvision's own classes.

Every geometric step (rotation, crop, flip, the policy's shear / translate / rotate with black fill) is one affine map
per image, so each batch is resampled once: one ``grid_sample`` call, on a grid ``k`` times finer than the output and
averaged down by ``k`` where the crop shrinks the stored pixels by more than 1.25x (an antialiasing box filter; ``k``
depends only on the sizes, never on the batch). The colour operations are vectorized with per-image factors; the
jitter takes three batched steps, each image blended at every step with what its own operation at that position
blends it with (black, its grey mean or its greyscale).

What differs from the ``workers`` pipeline, by design: images are stored squashed to one square size (see
:mod:`catdog.data.device_store`), so crops of non-square images are resampled from a copy whose longer side has
as many pixels as its shorter one; the policy's colour operations run after its geometric ones; the output is float
in [0, 1], not quantized to uint8. The augmentation statistics (crop areas, aspect ratios, flip rate, operation
frequencies, jitter factors and orders) are torchvision's; ``tests/unit/data/test_device_augment.py`` compares them
with torchvision's own draws.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from catdog.data.transforms import augment_settings, colour_jitter
from catdog.errors import ConfigError

M32 = 0xFFFFFFFF
NUM_BINS = 31
CROP_ATTEMPTS = 10
#: The crop shrinks stored pixels by more than this: supersample the sampling grid (antialiasing).
ALIAS_LIMIT = 1.25
MAX_SUPERSAMPLE = 4
GRID_MODES = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest"}

# The policies' operations, in torchvision's order (its _AUGMENTATION_SPACE keys).
OPS = tuple(v2.TrivialAugmentWide._AUGMENTATION_SPACE)
#: The colour jitter's operations, in ``ColorJitter``'s order (its factors' columns), and their orders.
JITTER_OPS = ("brightness", "contrast", "saturation")
JITTER_ORDERS = tuple(itertools.permutations(range(len(JITTER_OPS))))


# ----- counter-based random numbers ---------------------------------------------------------------------------------
def _mix32(x):
    """A 32-bit integer hash (lowbias32-style; every product stays below 2**63): works on Python ints and int64
    tensors alike, with the same results."""
    x = x & M32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & M32
    x = x ^ (x >> 15)
    x = (x * 0x6CA68B35) & M32
    x = x ^ (x >> 16)
    return x


def counter_uniform(seed: int, epoch: int, index: torch.Tensor, draws: int) -> torch.Tensor:
    """``(len(index), draws)`` float32 uniforms in [0, 1), a pure function of (seed, epoch, index, draw number),
    computed on ``index``'s device (``index``: the samples' augmentation keys)."""
    base = _mix32(_mix32(int(seed) & M32) ^ _mix32((int(epoch) * 0x2545F491 + 0x165667B1) & M32))
    h = _mix32((index.to(torch.int64) & M32) * 0x27D4EB2F ^ base)
    j = torch.arange(1, draws + 1, device=index.device, dtype=torch.int64)
    bits = _mix32(_mix32(h[:, None] ^ (j[None, :] * 0x3C6EF372 & M32)) + j[None, :])
    return (bits >> 8).to(torch.float32) * (1.0 / (1 << 24))


# ----- parameters -----------------------------------------------------------------------------------------------------
def resized_crop_boxes(
    u: torch.Tensor, heights: torch.Tensor, widths: torch.Tensor, scale: Sequence[float], ratio: Sequence[float]
) -> torch.Tensor:
    """``(B, 4)`` boxes ``(top, left, height, width)`` in pixels, torchvision's ``RandomResizedCrop.get_params`` per
    image: ``u`` holds ``2 * CROP_ATTEMPTS + 2`` uniforms per image (scales, log-ratios, top, left)."""
    H, W = heights.to(u.dtype), widths.to(u.dtype)
    area = (H * W)[:, None]
    n = CROP_ATTEMPTS
    target = area * (scale[0] + (scale[1] - scale[0]) * u[:, :n])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, n : 2 * n])
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    valid = (w > 0) & (w <= W[:, None]) & (h > 0) & (h <= H[:, None])
    first = valid.to(torch.int8).argmax(1, keepdim=True)
    found = valid.any(1)
    w_ok, h_ok = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    top_ok = torch.floor(u[:, 2 * n] * (H - h_ok + 1)).clamp(max=H - h_ok)
    left_ok = torch.floor(u[:, 2 * n + 1] * (W - w_ok + 1)).clamp(max=W - w_ok)
    # torchvision's fallback: the central crop of the largest box whose aspect ratio is inside ``ratio``
    in_ratio = W / H
    w_fb = torch.where(in_ratio < ratio[0], W, torch.where(in_ratio > ratio[1], torch.round(H * ratio[1]), W))
    h_fb = torch.where(in_ratio < ratio[0], torch.round(W / ratio[0]), H)
    top_fb, left_fb = torch.div(H - h_fb, 2, rounding_mode="floor"), torch.div(W - w_fb, 2, rounding_mode="floor")
    return torch.stack(
        [
            torch.where(found, top_ok, top_fb),
            torch.where(found, left_ok, left_fb),
            torch.where(found, h_ok, h_fb),
            torch.where(found, w_ok, w_fb),
        ],
        1,
    )


def magnitude_table(policy: str, size: int) -> torch.Tensor:
    """``(len(OPS), NUM_BINS)`` magnitudes of torchvision's ``policy`` (trivial | randaugment) on ``size`` px images
    (0 for operations without a magnitude)."""
    space = (v2.TrivialAugmentWide if policy == "trivial" else v2.RandAugment)._AUGMENTATION_SPACE
    rows = []
    for name in OPS:
        values = space[name][0](NUM_BINS, size, size)
        rows.append(torch.zeros(NUM_BINS) if values is None else values.to(torch.float32))
    return torch.stack(rows)


def signed_ops() -> torch.Tensor:
    return torch.tensor([v2.TrivialAugmentWide._AUGMENTATION_SPACE[n][1] for n in OPS])


# ----- geometry -------------------------------------------------------------------------------------------------------
def _eye(b: int, device, dtype=torch.float32) -> torch.Tensor:
    return torch.eye(3, device=device, dtype=dtype).expand(b, 3, 3).clone()


def _rotation_about(angle_deg: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor) -> torch.Tensor:
    """Inverse maps (output -> input pixel coordinates) of rotations by ``angle_deg`` about (cx, cy)."""
    a = torch.deg2rad(angle_deg)
    cos, sin = torch.cos(a), torch.sin(a)
    m = _eye(len(a), a.device)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = cos, -sin, sin, cos
    m[:, 0, 2] = cx - cos * cx + sin * cy
    m[:, 1, 2] = cy - sin * cx - cos * cy
    return m


def policy_matrix(op: torch.Tensor, magnitude: torch.Tensor, size: int) -> torch.Tensor:
    """Inverse maps, in the ``size`` x ``size`` crop's pixel coordinates, of torchvision's geometric policy
    operations (``F.affine`` / ``F.rotate`` as the auto-augment classes call them); identity for the others."""
    b, dev = len(op), op.device
    m = _eye(b, dev)
    name = {n: i for i, n in enumerate(OPS)}
    shear_x, shear_y = op == name["ShearX"], op == name["ShearY"]
    m[:, 0, 1] = torch.where(shear_x, magnitude, 0.0)  # about the top-left corner (center=[0, 0])
    m[:, 1, 0] = torch.where(shear_y, magnitude, 0.0)
    shift = torch.trunc(magnitude)  # translate=[int(magnitude), 0]
    m[:, 0, 2] = torch.where(op == name["TranslateX"], -shift, 0.0)
    m[:, 1, 2] = torch.where(op == name["TranslateY"], -shift, 0.0)
    half = torch.full((b,), size / 2.0, device=dev)  # computed for every image: no host sync to ask which rotate
    return torch.where((op == name["Rotate"])[:, None, None], _rotation_about(magnitude, half, half), m)


def supersample_factor(stored: int, size: int) -> int:
    """Grid refinement for a ``size`` px output of crops of a ``stored`` px square (crops up to the whole side)."""
    return int(min(MAX_SUPERSAMPLE, max(1, math.ceil(stored / size / ALIAS_LIMIT))))


def _grid(matrix: torch.Tensor, size: int, k: int) -> torch.Tensor:
    """Apply ``(B, 3, 3)`` maps (output pixel coordinates in [0, size] -> anything) to the centres of a ``k * size``
    grid over the output: ``(B, n, n, 2)`` (``affine_grid`` from the output's normalized coordinates)."""
    to_pixels = torch.tensor(
        [[size / 2.0, 0.0, size / 2.0], [0.0, size / 2.0, size / 2.0], [0.0, 0.0, 1.0]], device=matrix.device
    )
    theta = (matrix @ to_pixels)[:, :2]
    return F.affine_grid(theta, [len(matrix), 1, size * k, size * k], align_corners=False)


def _inside(points: torch.Tensor, size: int) -> torch.Tensor:
    return ((points >= 0) & (points <= size)).all(-1)


# ----- colour ---------------------------------------------------------------------------------------------------------
def _col(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def _blend(a: torch.Tensor, b: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    return (_col(ratio) * a + (1.0 - _col(ratio)) * b).clamp_(0.0, 1.0)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)


def brightness(x, f):
    return _blend(x, torch.zeros_like(x), f)


def saturation(x, f):
    return _blend(x, _gray(x), f)


def contrast(x, f):
    return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True).expand_as(x), f)


def sharpness(x, f):
    kernel = torch.ones(3, 3, device=x.device, dtype=x.dtype)
    kernel[1, 1] = 5.0
    kernel = (kernel / kernel.sum()).expand(3, 1, 3, 3)
    blurred = x.clone()
    blurred[..., 1:-1, 1:-1] = F.conv2d(x, kernel, groups=3)
    return _blend(x, blurred, f)


def posterize(x, bits):
    levels = _col(torch.exp2(bits.to(x.dtype)))
    return (x * levels).floor_().clamp_(max=levels - 1) / levels


def solarize(x, threshold):
    return torch.where(x >= _col(threshold), 1.0 - x, x)


def autocontrast(x, _):
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    same = hi <= lo
    scale = torch.where(same, torch.ones_like(hi), 1.0 / (hi - lo).clamp_min(1e-12))
    return torch.where(same, x, ((x - lo) * scale).clamp_(0.0, 1.0))


def equalize(x, _):
    return TF.equalize(TF.to_dtype(x, torch.uint8, scale=True)).to(x.dtype) / 255.0


# op name -> fn(images, per-image magnitude) for the colour operations (the geometric ones are in the affine map)
COLOUR_OPS = {
    "Brightness": lambda x, m: brightness(x, 1.0 + m),
    "Color": lambda x, m: saturation(x, 1.0 + m),
    "Contrast": lambda x, m: contrast(x, 1.0 + m),
    "Sharpness": lambda x, m: sharpness(x, 1.0 + m),
    "Posterize": posterize,
    "Solarize": solarize,
    "AutoContrast": autocontrast,
    "Equalize": equalize,
}


def jitter_step(x: torch.Tensor, op: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """One position of the colour jitter: each image's operation ``op`` (an index into :data:`JITTER_OPS`) with its
    ``factor``, all in one blend (torchvision's ``adjust_brightness`` blends with black, ``adjust_contrast`` with the
    image's grey mean, ``adjust_saturation`` with its greyscale)."""
    gray = _gray(x)
    other = torch.where(_col(op == 0), 0.0, torch.where(_col(op == 1), gray.mean(dim=(1, 2, 3), keepdim=True), gray))
    return _blend(x, other, factor)


def colour_jitter_batch(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """``ColorJitter`` per image: ``factors`` (B, 3) in :data:`JITTER_OPS`'s order, applied in ``order`` (B, 3),
    each row a permutation of 0..2."""
    for position in range(order.shape[1]):
        op = order[:, position]
        x = jitter_step(x, op, factors.gather(1, op[:, None])[:, 0])
    return x


def apply_colour_op(x: torch.Tensor, op: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """Each image's policy colour operation (``op``, an index into :data:`OPS`), batched per operation."""
    out = x
    for name, fn in COLOUR_OPS.items():
        rows = torch.nonzero(op == OPS.index(name)).flatten()
        if rows.numel():
            out = out.index_copy(0, rows, fn(x.index_select(0, rows), magnitude.index_select(0, rows)))
    return out


# ----- the pipeline ---------------------------------------------------------------------------------------------------
class BatchAugment:
    """``data.augment``'s settings (the ``workers`` pipeline's :func:`catdog.data.transforms.train_transform`), applied
    to whole batches: ``augment(images, heights, widths, keys, epoch, size) -> (B, 3, size, size)`` float in
    [0, 1] from ``(B, 3, S, S)`` uint8 stored squares whose images were ``heights`` x ``widths`` px."""

    def __init__(self, seed: int, interpolation: str = "bilinear", **augment):
        if interpolation not in GRID_MODES:
            raise ConfigError(f"data.interpolation must be one of {list(GRID_MODES)}, got {interpolation!r}")
        a = augment_settings(augment)  # train_transform's settings and defaults
        self.seed = int(seed)
        self.scale, self.ratio = tuple(float(s) for s in a["scale"]), tuple(float(r) for r in a["ratio"])
        self.hflip, self.rotation = float(a["hflip"]), float(a["rotation"])
        jitter = colour_jitter(a["color_jitter"])
        # (lo, hi) of each JITTER_OPS factor, (1, 1) for an operation the ColorJitter leaves out; None when off
        self.jitter = None if jitter is None else tuple(getattr(jitter, n) or (1.0, 1.0) for n in JITTER_OPS)
        self.auto = a["auto"]
        self.num_ops = {None: 0, "trivial": 1, "randaugment": 2}[self.auto]
        self.magnitude = 9 if a["magnitude"] is None else int(a["magnitude"])
        self.mode = GRID_MODES[interpolation]
        self._tables: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self._orders: dict[str, torch.Tensor] = {}

    # draws per image: crop (22), flip, rotation, 3 jitter factors, per policy op: op, bin, sign; then the jitter order
    def draws(self) -> int:
        return 2 * CROP_ATTEMPTS + 2 + 1 + 1 + 3 + 3 * self.num_ops + 1

    def _tables_on(self, size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(magnitude table, signed flags) on ``device``, built once per size."""
        key = (size, str(device))
        if key not in self._tables:
            self._tables[key] = (magnitude_table(self.auto, size).to(device), signed_ops().to(device))
        return self._tables[key]

    def _orders_on(self, device) -> torch.Tensor:
        """:data:`JITTER_ORDERS` as a ``(6, 3)`` tensor on ``device``, built once."""
        key = str(device)
        if key not in self._orders:
            self._orders[key] = torch.tensor(JITTER_ORDERS, device=device)
        return self._orders[key]

    def sample(self, heights: torch.Tensor, widths: torch.Tensor, keys: torch.Tensor, epoch: int, size: int):
        """The per-image parameters (a dict of ``(B, ...)`` tensors): crop boxes, flips, angles, jitter factors (in
        :data:`JITTER_OPS`'s order) and order (the operations' indices, first applied first), the policy's operations
        and magnitudes."""
        u = counter_uniform(self.seed, epoch, keys, self.draws())
        c = 2 * CROP_ATTEMPTS + 2
        params = {
            "box": resized_crop_boxes(u[:, :c], heights, widths, self.scale, self.ratio),
            "flip": u[:, c] < self.hflip,
            "angle": (2.0 * u[:, c + 1] - 1.0) * self.rotation,
        }
        ranges = self.jitter or [(1.0, 1.0)] * len(JITTER_OPS)
        params["jitter"] = torch.stack([lo + (hi - lo) * u[:, c + 2 + i] for i, (lo, hi) in enumerate(ranges)], 1)
        orders = self._orders_on(u.device)
        pick = torch.floor(u[:, c + 5 + 3 * self.num_ops] * len(orders)).long().clamp_(max=len(orders) - 1)
        params["order"] = orders[pick]
        ops, mags = [], []
        table, signed = self._tables_on(size, u.device) if self.num_ops else (None, None)
        for k in range(self.num_ops):
            uo, ub, us = u[:, c + 5 + 3 * k], u[:, c + 6 + 3 * k], u[:, c + 7 + 3 * k]
            op = torch.floor(uo * len(OPS)).long().clamp_(max=len(OPS) - 1)
            if self.auto == "trivial":
                b = torch.floor(ub * NUM_BINS).long().clamp_(max=NUM_BINS - 1)
            else:
                b = torch.full_like(op, self.magnitude)
            m = table[op, b]
            sign = torch.where(signed[op] & (us < 0.5), -1.0, 1.0)
            ops.append(op)
            mags.append(m * sign)
        params["ops"] = torch.stack(ops, 1) if ops else torch.zeros(len(u), 0, dtype=torch.long, device=u.device)
        params["magnitudes"] = torch.stack(mags, 1) if mags else torch.zeros(len(u), 0, device=u.device)
        return params

    def __call__(
        self,
        images: torch.Tensor,
        heights: torch.Tensor,
        widths: torch.Tensor,
        keys: torch.Tensor,
        epoch: int,
        size: int,
    ) -> torch.Tensor:
        b, stored = len(images), images.shape[-1]
        if b == 0:
            return torch.zeros(0, 3, size, size, device=images.device)
        p = self.sample(heights, widths, keys, epoch, size)
        H, W = heights.to(torch.float32), widths.to(torch.float32)
        dev = images.device
        # output crop pixels -> policy (inverse, composed in the order the operations run) -> flip -> crop box ->
        # rotation about the image centre -> storage's normalized coordinates
        # op k's input point of an output pixel: M_k @ ... @ M_last (op k's inverse map applied last)
        policy, inner = _eye(b, dev), []
        for k in reversed(range(self.num_ops)):
            policy = policy_matrix(p["ops"][:, k], p["magnitudes"][:, k], size) @ policy
            inner.append(policy)
        flip = _eye(b, dev)
        flip[:, 0, 0] = torch.where(p["flip"], -1.0, 1.0)
        flip[:, 0, 2] = torch.where(p["flip"], float(size), 0.0)
        top, left, h, w = p["box"].unbind(1)
        crop = _eye(b, dev)
        crop[:, 0, 0], crop[:, 0, 2], crop[:, 1, 1], crop[:, 1, 2] = w / size, left, h / size, top
        rotation = _rotation_about(p["angle"], W / 2, H / 2) if self.rotation else _eye(b, dev)
        norm = _eye(b, dev)
        norm[:, 0, 0], norm[:, 0, 2], norm[:, 1, 1], norm[:, 1, 2] = 2.0 / W, -1.0, 2.0 / H, -1.0
        k = supersample_factor(stored, size)
        grid = _grid(norm @ rotation @ crop @ flip @ policy, size, k)
        x = F.grid_sample(images.to(torch.float32).mul_(1 / 255), grid, mode=self.mode, align_corners=False)
        if self.num_ops:
            keep = torch.ones(b, size * k, size * k, dtype=torch.bool, device=dev)
            for m in inner:  # black where any policy step sampled outside its input
                keep &= _inside(_grid(m, size, k), size)
            x = x * keep[:, None].to(x.dtype)
        if k > 1:
            x = F.avg_pool2d(x, k)
        if self.mode == "bicubic":  # the only filter that overshoots
            x = x.clamp_(0.0, 1.0)
        if self.jitter is not None:
            x = colour_jitter_batch(x, p["jitter"], p["order"])
        for k in range(self.num_ops):
            x = apply_colour_op(x, p["ops"][:, k], p["magnitudes"][:, k])
        return x
