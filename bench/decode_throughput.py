"""Eval decoding throughput (images/s): files -> eval-ready uint8 crops, predict.py's decoder=pil against the fast path
with each JPEG library (decoder=torchcodec, decoder=torchvision; decoder=fast is the best one here).

pil:         load_image(path, draft_size) + eval_transform (PIL decode, PIL draft mode for large JPEGs, PIL resize)
torchcodec,  catdog.data.decode: on the CPU decode_cpu (libjpeg-turbo through that library, PIL's draft mode for JPEGs
torchvision: at least twice the resize size, tensor resize); on CUDA decode_batch (nvJPEG batches, resize on the GPU)

Measured per image in one thread with one torch thread (CPU: images/s per core), then through the loader predict.py
uses: pil = ImageDataset + make_loader with --workers processes, fast = fast_loader (CPU: DecodedImages + make_loader
with --workers processes; CUDA: DecodedBatches, --workers reading threads, nvJPEG batches), counted after the first
batch so that worker start-up is excluded. Each figure is the median of
--repeats runs. No model runs: this is the input side of bench/predict_throughput.py.

Examples:
    python bench/decode_throughput.py --data /path/to/dogs-vs-cats/test --images 500
    python bench/decode_throughput.py --synthetic-size 1024x768 --images 100          # large photos: draft mode
    python bench/decode_throughput.py --device cuda --data /path/to/dogs-vs-cats/test --images 2000 --workers 8
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import image_list, machine_line, markdown_table, now, resolve_device  # noqa: E402

from catdog.data.datamodule import ImageDataset, make_loader  # noqa: E402
from catdog.data.decode import (  # noqa: E402
    EvalGeometry,
    decode_batch,
    decode_cpu,
    decoder_description,
    fast_loader,
    read_file,
    resolve_decoder,
)
from catdog.data.images import load_image  # noqa: E402
from catdog.data.transforms import eval_transform  # noqa: E402


@contextlib.contextmanager
def photos(width: int, height: int, count: int, seed: int):
    """``count`` synthetic ``width`` x ``height`` JPEGs (gradient + light noise, quality 90) in a temporary folder."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="catdog-bench-") as tmp:
        paths = []
        for i in range(min(count, 32)):
            base = rng.uniform(0, 255, size=3).astype(np.float32)
            img = np.stack([base[0] * xx / width, base[1] * yy / height, base[2] * (1 - xx * yy / (width * height))])
            img = img.transpose(1, 2, 0) + rng.normal(0, 4, size=(height, width, 3)).astype(np.float32)
            path = Path(tmp) / f"{i}.jpg"
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB").save(path, quality=90)
            paths.append(str(path))
        yield [paths[i % len(paths)] for i in range(count)], f"synthetic {width}x{height} JPEGs ({len(paths)} distinct)"


def per_image(decoder: str, geometry: EvalGeometry, device: torch.device):
    """``decoder``: pil, or a JPEG library as resolve_decoder gives it."""
    if decoder == "pil":
        transform = eval_transform(geometry.image_size, geometry.crop_pct, geometry.square, geometry.interpolation)
        return lambda p: transform(load_image(p, draft_size=geometry.resize))
    if device.type == "cuda":
        return lambda p: decode_batch([p], [read_file(p)], geometry, device, library=decoder)[0]
    return lambda p: decode_cpu(p, geometry, decoder)


def loader(decoder: str, paths, geometry: EvalGeometry, batch_size: int, workers: int, device: torch.device):
    if decoder == "pil":
        transform = eval_transform(geometry.image_size, geometry.crop_pct, geometry.square, geometry.interpolation)
        return make_loader(ImageDataset(paths, None, transform, "error", geometry.resize), batch_size, workers)
    return fast_loader(paths, geometry, batch_size, device, workers, library=decoder)


def one_thread(one, paths, device: torch.device) -> tuple[int, float]:
    t0 = now(device)
    for path in paths:
        one(path)
    return len(paths), now(device) - t0


def through_loader(make, device: torch.device) -> tuple[int, float]:
    batches = iter(make())
    next(batches)  # worker start-up excluded
    t0 = now(device)
    images = sum(len(idx) for _, _, idx in batches)
    return images, now(device) - t0


def median_rate(run, repeats: int) -> float:
    """Median images/s over ``repeats`` calls of ``run() -> (images, seconds)``."""
    rates = []
    for _ in range(repeats):
        images, seconds = run()
        rates.append(images / seconds if seconds > 0 else float("nan"))
    return statistics.median(rates)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    p.add_argument("--data", default=None, help="folder of JPEGs; omitted: synthetic JPEGs of --synthetic-size")
    p.add_argument("--images", type=int, default=200, help="more than --batch-size (the first batch is untimed)")
    p.add_argument("--synthetic-size", default="200x200", help="WxH of the synthetic JPEGs (no --data)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="loader workers: processes (CUDA fast: threads)")
    p.add_argument("--decoders", default="pil,torchvision,torchcodec", help="predict.py decoder= values")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    torch.set_num_threads(1)
    geometry = EvalGeometry(args.image_size)
    width, height = (int(v) for v in args.synthetic_size.lower().split("x"))
    source = image_list(args.data, args.images, seed=args.seed) if args.data else None
    rows = []
    print(f"{machine_line(device)}; load average {os.getloadavg()[0]:.2f}", file=sys.stderr)
    with source or photos(width, height, args.images, args.seed) as listed:
        paths, description = (listed[0], listed[2]) if args.data else listed
        for name in args.decoders.split(","):
            decoder = resolve_decoder(name)
            one = per_image(decoder, geometry, device)
            for path in paths[:2]:  # warm-up: libraries, kernels
                one(path)
            make = functools.partial(loader, decoder, paths, geometry, args.batch_size, args.workers, device)
            single = median_rate(functools.partial(one_thread, one, paths, device), args.repeats)
            rate = median_rate(functools.partial(through_loader, make, device), args.repeats)
            label = decoder_description(decoder).split(" for ")[0]
            print(f"{label}: {single:.1f} images/s one thread, {rate:.1f} loader", file=sys.stderr)
            rows.append([label, single, rate])

    print(
        f"\n{machine_line(device)}; load average at the end {os.getloadavg()[0]:.2f}\n"
        f"eval decoding to {args.image_size} px (resize {geometry.resize}), {len(paths)} images from {description}; "
        f"loader: batch {args.batch_size}, {args.workers} workers; median of {args.repeats} runs\n"
    )
    print(markdown_table(["decoder", "one thread img/s", f"loader ({args.workers} workers) img/s"], rows))


if __name__ == "__main__":
    main()
