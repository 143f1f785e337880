"""Training throughput (images/s) and peak memory: model-only bound vs catdog's pipeline vs a plain baseline.

(a) model-only: a synthetic uint8 batch already on the device; forward + backward + SGD step through
    ClassifierModule (device-side normalization, channels_last, bf16 autocast on CUDA).
(b) catdog: ImageDataset + train_transform + make_loader over JPEGs with N workers, then the same step as (a).
(c) baseline: a plain Dataset over the files + PIL transforms (RandomResizedCrop, flip, ToTensor, Normalize) +
    DataLoader, fp32, NCHW, a plain torchvision VGG16(-BN) with the same conv widths and head.

Examples:
    python bench/train_throughput.py --data /path/to/dogs-vs-cats/train                  # CPU: small defaults
    python bench/train_throughput.py --device cuda --data /path/to/dogs-vs-cats/train \\
        --width 1 --image-size 224 --batch-sizes 32,64,128 --steps 50 --workers 8
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, RandomSampler
from torchvision.models.vgg import VGG, cfgs, make_layers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    FlatFiles,
    add_common_args,
    baseline_train_transform,
    image_list,
    machine_line,
    markdown_table,
    memory_label,
    now,
    peak_memory_mib,
    ratio,
    reset_peak_memory,
    setup,
)

from catdog.data.cache import open_cache  # noqa: E402
from catdog.data.datamodule import ImageDataset, default_num_workers, make_loader  # noqa: E402
from catdog.data.transforms import eval_resize_size, train_transform  # noqa: E402
from catdog.models.module import ClassifierModule  # noqa: E402
from catdog.models.precision import auto_precision  # noqa: E402

CLASSES = ["cat", "dog"]
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 5e-4


# ----- the plain baseline ------------------------------------------------------------------------------------------
def baseline_network(arch: str, width: float, head: str, head_hidden: int, dropout: float) -> VGG:
    """torchvision's VGG16(-BN) (narrowed by ``width``) with a 2-class head of the same shape as catdog's."""
    cfg = [v if v == "M" else max(1, int(round(v * width))) for v in cfgs["D"]]
    net = VGG(make_layers(cfg, batch_norm=arch == "vgg16_bn"), num_classes=1000, init_weights=True)
    channels = cfg[-2]
    if head == "small":
        net.avgpool = nn.AdaptiveAvgPool2d(1)
        net.classifier = nn.Sequential(
            nn.Linear(channels, head_hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(head_hidden, 2)
        )
    else:
        net.classifier[0] = nn.Linear(channels * 7 * 7, 4096)
        net.classifier[6] = nn.Linear(4096, len(CLASSES))
    return net


def freeze_baseline(net: VGG, blocks: int) -> None:
    """Train only the head and the last ``blocks`` conv blocks (-1: everything), as catdog's staged fine-tuning does."""
    if blocks == -1:
        return
    groups, current = [], []
    for layer in net.features:
        current.append(layer)
        if isinstance(layer, nn.MaxPool2d):
            groups.append(current)
            current = []
    trainable = {id(p) for g in groups[len(groups) - blocks :] if blocks for m in g for p in m.parameters()}
    for p in net.features.parameters():
        p.requires_grad_(id(p) in trainable)


# ----- steps -------------------------------------------------------------------------------------------------------
def make_step(model: nn.Module, optimizer, device: torch.device, amp_dtype: torch.dtype | None):
    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def timed(batches, step, warmup: int, steps: int, batch_size: int, device: torch.device, stat: str) -> float:
    """images/s over ``steps`` steps after ``warmup`` untimed ones; ``batches`` yields ``(x, y, ...)``.

    ``stat="mean"``: total time of the timed steps (one synchronize at the end). ``"median"``: the median step time
    (each step synchronized), robust to a few steps slowed by other processes on a shared machine.
    """
    it = iter(batches)
    for _ in range(warmup):
        b = next(it)
        step(b[0], b[1])
    times = []
    t0 = start = now(device)
    for _ in range(steps):
        b = next(it)
        step(b[0], b[1])
        if stat == "median":
            t = now(device)
            times.append(t - start)
            start = t
    if stat == "median":
        return batch_size / statistics.median(times)
    return steps * batch_size / (now(device) - t0)


def catdog_module(args, device: torch.device) -> tuple[ClassifierModule, torch.optim.Optimizer]:
    module = ClassifierModule(
        CLASSES,
        arch=args.arch,
        weights=None,
        head=args.head,
        width=args.width,
        image_size=args.image_size,
        optimizer={"_target_": "torch.optim.SGD", "lr": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY},
        finetune={"head_epochs": 0, "blocks": args.finetune_blocks},
        channels_last=args.layout == "channels_last",
    ).to(device)
    module.train()
    module.apply_stage(0)
    return module, module.configure_optimizers()


def run_model_only(args, device, bs, amp_dtype, steps: int | None = None) -> float:
    module, opt = catdog_module(args, device)
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randint(0, 256, (bs, 3, args.image_size, args.image_size), dtype=torch.uint8, generator=g).to(device)
    y = torch.randint(0, 2, (bs,), generator=g).to(device)

    def forever():
        while True:
            yield x, y

    step = make_step(module, opt, device, amp_dtype)
    return timed(forever(), step, args.warmup, steps or args.steps, bs, device, args.stat)


def run_catdog(args, device, bs, amp_dtype, paths, labels) -> float:
    module, opt = catdog_module(args, device)
    short_side = eval_resize_size(args.image_size, 0.875)
    cache = None
    if args.cache_dir:  # data.cache=true: decode once (built or reopened here, untimed), then read the cache
        t0 = time.perf_counter()
        cache = open_cache(paths, short_side, args.cache_dir)
        print(f"cache ready in {time.perf_counter() - t0:.1f} s ({cache.nbytes / 2**20:.0f} MiB)", file=sys.stderr)
    dataset = ImageDataset(paths, labels, train_transform(args.image_size), "skip", short_side, cache=cache)
    loader = make_loader(dataset, bs, args.workers, sampler=RandomSampler(dataset), drop_last=True)
    return timed(loader, make_step(module, opt, device, amp_dtype), args.warmup, args.steps, bs, device, args.stat)


def run_baseline(args, device, bs, paths, labels) -> float:
    net = baseline_network(args.arch, args.width, args.head, 256, 0.5).to(device)
    freeze_baseline(net, args.finetune_blocks)
    net.train()
    opt = torch.optim.SGD(
        [p for p in net.parameters() if p.requires_grad], lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
    )
    dataset = FlatFiles(paths, labels, baseline_train_transform(args.image_size))
    loader = DataLoader(
        dataset,
        batch_size=bs,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
    )
    return timed(loader, make_step(net, opt, device, None), args.warmup, args.steps, bs, device, args.stat)


def measure(fn, device) -> tuple[float, float]:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    reset_peak_memory(device)
    rate = fn()
    mem = peak_memory_mib(device)
    gc.collect()
    return rate, mem


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, default_images=0)
    p.add_argument("--arch", choices=("vgg16", "vgg16_bn"), default="vgg16_bn")
    p.add_argument("--width", type=float, default=None, help="conv width multiplier (default: 0.25 CPU, 1 CUDA)")
    p.add_argument("--head", choices=("small", "vgg"), default="small")
    p.add_argument("--image-size", type=int, default=None, help="default: 128 CPU, 224 CUDA")
    p.add_argument("--batch-size", type=int, default=None, help="default: 16 CPU, 64 CUDA")
    p.add_argument("--batch-sizes", default=None, help="comma-separated list, e.g. 32,64,128 (overrides --batch-size)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 6 CPU, 50 CUDA)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 3 CPU, 10 CUDA)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: CPUs - 1, at most 8)")
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="auto: as train.py (catdog.models.precision)",
    )
    p.add_argument("--layout", choices=("channels_last", "nchw"), default="channels_last", help="(a)/(b) layout")
    p.add_argument("--stat", choices=("auto", "mean", "median"), default="auto", help="auto: median CPU, mean CUDA")
    p.add_argument("--finetune-blocks", type=int, default=-1, help="conv blocks trained (-1: all, 0: head only)")
    p.add_argument("--variants", default="model,catdog,baseline", help="subset of model,catdog,baseline")
    p.add_argument(
        "--cache-dir", default=None, help="(b) reads a decoded-image cache kept in this folder (catdog's data.cache)"
    )
    args = p.parse_args(argv)
    device = setup(args)
    cuda = device.type == "cuda"
    args.width = args.width if args.width is not None else (1.0 if cuda else 0.25)
    args.image_size = args.image_size or (224 if cuda else 128)
    args.steps = args.steps or (50 if cuda else 6)
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 3)
    args.stat = args.stat if args.stat != "auto" else ("mean" if cuda else "median")
    args.workers = args.workers if args.workers is not None else default_num_workers()
    if args.batch_sizes:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    else:
        batch_sizes = [args.batch_size or (64 if cuda else 16)]
    if args.precision == "auto":  # train.py's rule; fp16 (GPUs without native bf16) is measured as bf16 here
        precision = "fp32" if auto_precision("cuda" if cuda else "cpu") == "32-true" else "bf16"
    else:
        precision = args.precision
    amp_dtype = torch.bfloat16 if precision == "bf16" else None
    variants = set(args.variants.split(","))

    needed = max(batch_sizes) * (args.warmup + args.steps + 1)
    count = max(args.images, needed)
    print(f"{machine_line(device)}; load average {os.getloadavg()[0]:.2f}", file=sys.stderr)
    rows = []
    with image_list(args.data, count, args.synthetic_size, args.seed) as (paths, labels, source):
        # Process-wide warm-up (kernel selection / JIT, allocator growth), so that the first variant is not penalized.
        run_model_only(args, device, batch_sizes[0], amp_dtype, steps=1)
        for bs in batch_sizes:
            res = {}
            if "model" in variants:
                res["a"] = measure(lambda bs=bs: run_model_only(args, device, bs, amp_dtype), device)
                print(f"batch {bs}: (a) model-only {res['a'][0]:.1f} images/s", file=sys.stderr)
            if "catdog" in variants:
                res["b"] = measure(lambda bs=bs: run_catdog(args, device, bs, amp_dtype, paths, labels), device)
                print(f"batch {bs}: (b) catdog pipeline {res['b'][0]:.1f} images/s", file=sys.stderr)
            if "baseline" in variants:
                res["c"] = measure(lambda bs=bs: run_baseline(args, device, bs, paths, labels), device)
                print(f"batch {bs}: (c) baseline {res['c'][0]:.1f} images/s", file=sys.stderr)
            rate = {k: v[0] for k, v in res.items()}
            mem = {k: v[1] for k, v in res.items()}
            rows.append(
                [
                    bs,
                    rate.get("a", "-"),
                    rate.get("b", "-"),
                    rate.get("c", "-"),
                    ratio(rate.get("b"), rate.get("a")),
                    ratio(rate.get("b"), rate.get("c")),
                    mem.get("a", "-"),
                    mem.get("b", "-"),
                    mem.get("c", "-"),
                ]
            )

    print(
        f"\n{machine_line(device)}; load average at the end {os.getloadavg()[0]:.2f}\n"
        f"train throughput: {args.arch} width {args.width:g}, head {args.head}, {args.image_size} px, "
        f"finetune blocks {args.finetune_blocks}, (a)/(b) {precision} {args.layout}, (c) fp32 NCHW, "
        f"{args.workers} workers, {args.warmup} warm-up + {args.steps} timed steps ({args.stat} step time); "
        f"data: {source}; "
        f"memory: {memory_label(device)} (MiB)\n"
    )
    print(
        markdown_table(
            [
                "batch",
                "(a) model-only img/s",
                "(b) catdog img/s",
                "(c) baseline img/s",
                "(b)/(a)",
                "(b)/(c)",
                "(a) peak MiB",
                "(b) peak MiB",
                "(c) peak MiB",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
