"""Decode + augment throughput (images/s): catdog's uint8 path vs the tutorial's float PIL path.

catdog:        load_image(path, draft_size) (JPEG draft decoding, EXIF, RGB) + train_transform / eval_transform -> uint8
catdog-cached: the same transforms on pixels read from a decoded-image cache (catdog.data.cache, memory-mapped), built
               once over the images before the timed runs; its build time and file size are printed separately
baseline:      Image.open(path).convert("RGB") + RandomResizedCrop / Resize+CenterCrop + ToTensor + Normalize -> float32

Measured single process with one torch thread (= images/s per core), then through a DataLoader with N workers
(catdog: ImageDataset + make_loader; baseline: a plain Dataset + DataLoader), counted after the first batch so that
worker start-up is excluded. "per worker" is the DataLoader rate divided by the number of workers. Each figure is the
median of --repeats runs (robust to other processes on a shared machine).

Examples:
    python bench/data_pipeline.py --data /path/to/dogs-vs-cats/train
    python bench/data_pipeline.py --data /path/to/dogs-vs-cats/train --images 4000 --workers 8 --image-size 224
    python bench/data_pipeline.py --data /path/to/dogs-vs-cats/train --images 20000 --cache-only  # build time, size
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch
from PIL import Image
from torch.utils.data import DataLoader, RandomSampler

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    FlatFiles,
    add_common_args,
    baseline_eval_transform,
    baseline_train_transform,
    image_list,
    markdown_table,
)

from catdog.data.cache import DecodedCache, open_cache  # noqa: E402
from catdog.data.datamodule import ImageDataset, make_loader  # noqa: E402
from catdog.data.images import load_image  # noqa: E402
from catdog.data.transforms import eval_resize_size, eval_transform, train_transform  # noqa: E402


def pipelines(image_size: int, crop_pct: float, cache: DecodedCache | None = None):
    """name -> (per-image function, Dataset factory, uses make_loader)."""
    draft = eval_resize_size(image_size, crop_pct)
    c_train, c_eval = train_transform(image_size), eval_transform(image_size, crop_pct)
    b_train, b_eval = baseline_train_transform(image_size), baseline_eval_transform(image_size, crop_pct)

    def catdog(transform):
        return (
            lambda p: transform(load_image(p, draft_size=draft)),
            lambda paths, labels: ImageDataset(paths, labels, transform, "skip", draft),
            True,
        )

    def baseline(transform):
        return (
            lambda p: transform(Image.open(p).convert("RGB")),
            lambda paths, labels: FlatFiles(paths, labels, transform),
            False,
        )

    def cached(transform):
        return (
            lambda p: transform(cache.get(cache.row(p))),
            lambda paths, labels: ImageDataset(paths, labels, transform, "skip", draft, cache=cache),
            True,
        )

    rows = {
        "catdog train (uint8)": catdog(c_train),
        "catdog-cached train (uint8)": cached(c_train),
        "baseline train (float32)": baseline(b_train),
        "catdog eval (uint8)": catdog(c_eval),
        "catdog-cached eval (uint8)": cached(c_eval),
        "baseline eval (float32)": baseline(b_eval),
    }
    return {k: v for k, v in rows.items() if cache is not None or "cached" not in k}


def build_cache(paths, short_side: int, cache_dir: str, threads: int) -> tuple[DecodedCache, float, float]:
    """The cache of the distinct ``paths``; (cache, build seconds, reopen seconds)."""
    distinct = list(dict.fromkeys(paths))
    t0 = time.perf_counter()
    cache = open_cache(distinct, short_side, cache_dir, workers=threads)
    built = time.perf_counter() - t0
    t0 = time.perf_counter()
    open_cache(distinct, short_side, cache_dir, workers=threads)
    return cache, built, time.perf_counter() - t0


def single_process(fn, paths) -> tuple[float, str]:
    fn(paths[0])  # warm-up: imports, first-call caches
    t0 = time.perf_counter()
    for p in paths:
        out = fn(p)
    rate = len(paths) / (time.perf_counter() - t0)
    return rate, f"{out.dtype} {tuple(out.shape)}, {out.numel() * out.element_size() / 1024:.0f} KiB"


def with_loader(make_dataset, catdog: bool, paths, labels, workers: int, batch_size: int) -> float:
    dataset = make_dataset(paths, labels)
    if catdog:
        loader = make_loader(dataset, batch_size, workers, sampler=RandomSampler(dataset))
    else:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
    it = iter(loader)
    first = next(it)
    t0 = time.perf_counter()
    n = 0
    for batch in it:
        n += len(batch[0])
    elapsed = time.perf_counter() - t0
    del first, it, loader
    return n / elapsed


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, default_images=500)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--crop-pct", type=float, default=0.875)
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: number of CPUs, at most 8)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3, help="each figure is the median of this many runs")
    p.add_argument("--no-cache", action="store_true", help="leave out the catdog-cached rows")
    p.add_argument("--cache-dir", default=None, help="where the cache is built (default: a temporary folder, removed)")
    p.add_argument(
        "--cache-threads", type=int, default=None, help="decoding threads of the cache build (default: number of CPUs)"
    )
    p.add_argument("--cache-only", action="store_true", help="only build the cache and report its time and size")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # per-core figures; DataLoader workers use one thread each anyway
    workers = args.workers if args.workers is not None else min(8, os.cpu_count() or 1)

    print(f"load average {os.getloadavg()[0]:.2f}", file=sys.stderr)
    rows = []
    short_side = eval_resize_size(args.image_size, args.crop_pct)
    cache_threads = args.cache_threads or os.cpu_count() or 1
    with (
        image_list(args.data, args.images, args.synthetic_size, args.seed) as (paths, labels, source),
        tempfile.TemporaryDirectory(prefix="catdog-cache-") as tmp_cache,
    ):
        cache, cache_line = None, ""
        if not args.no_cache or args.cache_only:
            cache, built, reopened = build_cache(paths, short_side, args.cache_dir or tmp_cache, cache_threads)
            cache_line = (
                f"decoded-image cache: {len(cache)} images at short side <= {short_side} px, "
                f"{cache.nbytes / 2**20:.1f} MiB ({cache.nbytes / len(cache) / 1024:.1f} KiB per image), "
                f"built in {built:.1f} s with {cache_threads} threads ({len(cache) / built:.1f} images/s), "
                f"reopened in {reopened * 1000:.0f} ms; {len(cache.bad)} unreadable"
            )
            print(cache_line, file=sys.stderr)
            if args.cache_only:
                print(f"\n{cache_line}; {source}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}")
                return
        for name, (fn, make_dataset, catdog) in pipelines(args.image_size, args.crop_pct, cache).items():
            runs = [single_process(fn, paths) for _ in range(args.repeats)]
            single, output = statistics.median(r[0] for r in runs), runs[0][1]
            loader = None
            if workers:
                loader = statistics.median(
                    with_loader(make_dataset, catdog, paths, labels, workers, args.batch_size)
                    for _ in range(args.repeats)
                )
            print(
                f"{name}: {single:.1f} images/s single process, {loader or 0:.1f} with {workers} workers",
                file=sys.stderr,
            )
            rows.append([name, single, loader or "-", loader / workers if loader else "-", output])

    print(
        f"\ndata pipeline: {args.image_size} px (eval resize {eval_resize_size(args.image_size, args.crop_pct)}), "
        f"{len(paths)} images from {source}; single process = 1 thread; DataLoader: {workers} workers, "
        f"batch {args.batch_size}; median of {args.repeats} runs; {os.cpu_count()} CPUs; "
        f"load average at the end {os.getloadavg()[0]:.2f}" + (f"\n{cache_line}" if cache_line else "") + "\n"
    )
    print(
        markdown_table(
            ["pipeline", "1 process img/s", f"DataLoader {workers}w img/s", "per worker img/s", "output per image"],
            rows,
        )
    )


if __name__ == "__main__":
    main()
