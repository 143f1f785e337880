"""Prediction throughput (images/s) for tta=0 and tta=N: catdog's loader + predict_loader, and the model alone.

For each configuration (precision x memory layout), each decoder (--decoders) and each TTA depth:
  loader:     the images as predict.py reads them, then catdog.prediction.predict_loader with the row's precision
              (predict.py's precision=32|bf16|16). Decoder pil: ImageDataset + eval_transform + make_loader (PIL in
              DataLoader worker processes; includes their start-up); fast: catdog.data.decode.fast_loader (nvJPEG
              batches with --workers reading threads on CUDA; libjpeg-turbo / PIL draft mode + tensor resize in
              --workers DataLoader processes on the CPU).
  model-only: a synthetic uint8 batch already on the device through ClassifierModule.predict_proba(x, tta) (the same
              for every decoder).
images/s counts input images (not views); "time x" is the time of tta=N over the time of tta=0 for that row's
configuration and decoder.

Examples:
    python bench/predict_throughput.py --data /path/to/dogs-vs-cats/test                  # CPU: small defaults
    python bench/predict_throughput.py --device cuda --data /path/to/dogs-vs-cats/test --images 2000 \\
        --width 1 --image-size 224 --batch-size 128 --workers 8 --decoders pil,fast
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    add_common_args,
    cpu_supports_bf16,
    image_list,
    machine_line,
    markdown_table,
    now,
    setup,
)

from catdog.data.datamodule import ImageDataset, default_num_workers, make_loader  # noqa: E402
from catdog.data.decode import EvalGeometry, fast_loader  # noqa: E402
from catdog.data.transforms import eval_resize_size, eval_transform  # noqa: E402
from catdog.models.module import ClassifierModule  # noqa: E402
from catdog.prediction import predict_loader  # noqa: E402

CONFIGS = {
    "fp32-nchw": (None, False),
    "fp32-channels_last": (None, True),
    "bf16-nchw": (torch.bfloat16, False),
    "bf16-channels_last": (torch.bfloat16, True),
}


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def build_model(args, channels_last: bool, device: torch.device) -> ClassifierModule:
    model = ClassifierModule(
        ["cat", "dog"],
        arch=args.arch,
        weights=None,
        width=args.width,
        image_size=args.image_size,
        channels_last=channels_last,
    )
    return model.to(device).eval()


@torch.inference_mode()
def model_only(
    model, device, dtype, tta: int, batch_size: int, image_size: int, warmup: int, repeats: int, compile: bool = False
) -> float:
    """Images/s of ``predict_proba`` on a batch already on the device (``torch.compile``d with ``compile``; the
    compilation happens in the untimed warm-up)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (batch_size, 3, image_size, image_size), dtype=torch.uint8, generator=g).to(device)
    forward = torch.compile(model.predict_proba) if compile else model.predict_proba
    with autocast(device, dtype):
        t0 = time.perf_counter()
        for _ in range(max(1, warmup) if compile else warmup):
            forward(x, tta)
        if compile:
            print(f"compilation + first batch: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        t0 = now(device)
        for _ in range(repeats):
            forward(x, tta)
        elapsed = now(device) - t0
    return repeats * batch_size / elapsed


def loader_rate(args, model, device, dtype, tta: int, paths, decoder: str = "pil") -> float:
    t0 = now(device)
    if decoder == "fast":
        loader = fast_loader(paths, EvalGeometry(args.image_size, 0.875), args.batch_size, device, args.workers)
    else:
        dataset = ImageDataset(
            paths,
            None,
            eval_transform(args.image_size, 0.875),
            "error",
            eval_resize_size(args.image_size, 0.875),
        )
        loader = make_loader(dataset, args.batch_size, args.workers)
    precision = {None: "32", torch.bfloat16: "bf16", torch.float16: "16"}[dtype]
    probs, _ = predict_loader(model, loader, tta, device, precision, compile=args.compile)
    elapsed = now(device) - t0
    assert len(probs) == len(paths)
    return len(paths) / elapsed


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, default_images=0)
    p.add_argument("--arch", choices=("vgg16", "vgg16_bn"), default="vgg16_bn")
    p.add_argument("--width", type=float, default=None, help="conv width multiplier (default: 0.5 CPU, 1 CUDA)")
    p.add_argument("--image-size", type=int, default=None, help="default: 128 CPU, 224 CUDA")
    p.add_argument("--batch-size", type=int, default=None, help="default: 32 CPU, 128 CUDA")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: CPUs - 1, at most 8)")
    p.add_argument("--tta", default="0,5", help="comma-separated TTA depths; the first is the reference for 'time x'")
    p.add_argument(
        "--configs",
        default=None,
        help=f"comma-separated subset of {','.join(CONFIGS)} (default: CPU all that the CPU supports; "
        "CUDA bf16-channels_last,fp32-nchw)",
    )
    p.add_argument("--repeats", type=int, default=None, help="timed model-only batches (default: 3 CPU, 20 CUDA)")
    p.add_argument("--warmup", type=int, default=None, help="untimed model-only batches (default: 1 CPU, 5 CUDA)")
    p.add_argument("--skip-loader", action="store_true", help="model-only figures only")
    p.add_argument(
        "--decoders",
        default="pil,fast",
        help="comma-separated loader decoders (predict.py decoder=): pil (PIL in DataLoader workers) and/or fast "
        "(catdog.data.decode.fast_loader: nvJPEG on CUDA, libjpeg-turbo on the CPU)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the forward pass (model-only: compilation untimed; loader: compilation included)",
    )
    args = p.parse_args(argv)
    device = setup(args)
    cuda = device.type == "cuda"
    args.width = args.width if args.width is not None else (1.0 if cuda else 0.5)
    args.image_size = args.image_size or (224 if cuda else 128)
    args.batch_size = args.batch_size or (128 if cuda else 32)
    args.images = args.images or (2000 if cuda else 128)
    args.repeats = args.repeats or (20 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    args.workers = args.workers if args.workers is not None else default_num_workers()
    ttas = [int(t) for t in args.tta.split(",")]
    if args.configs:
        configs = args.configs.split(",")
    elif cuda:
        configs = ["bf16-channels_last", "fp32-nchw"]
    else:
        configs = [c for c in CONFIGS if CONFIGS[c][0] is None or cpu_supports_bf16()]
    decoders = args.decoders.split(",")
    if set(decoders) - {"pil", "fast"}:
        raise SystemExit(f"unknown --decoders {sorted(set(decoders) - {'pil', 'fast'})}; choose from ['pil', 'fast']")
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        raise SystemExit(f"unknown --configs {sorted(unknown)}; choose from {list(CONFIGS)}")

    print(f"{machine_line(device)}; load average {os.getloadavg()[0]:.2f}", file=sys.stderr)
    rows = []
    with image_list(args.data, args.images, args.synthetic_size, args.seed) as (paths, _, source):
        for name in configs:
            dtype, channels_last = CONFIGS[name]
            model = build_model(args, channels_last, device)
            m_rates = {}
            for tta in ttas:
                m_rates[tta] = model_only(
                    model, device, dtype, tta, args.batch_size, args.image_size, args.warmup, args.repeats, args.compile
                )
            for decoder in decoders:
                ref_loader = None
                for tta in ttas:
                    l_rate = None if args.skip_loader else loader_rate(args, model, device, dtype, tta, paths, decoder)
                    ref_loader = ref_loader or l_rate
                    m_rate = m_rates[tta]
                    print(
                        f"{name} {decoder} tta={tta}: loader {l_rate or 0:.1f} images/s, model-only {m_rate:.1f} "
                        "images/s",
                        file=sys.stderr,
                    )
                    rows.append(
                        [
                            name,
                            decoder,
                            tta,
                            l_rate if l_rate is not None else "-",
                            ref_loader / l_rate if l_rate else "-",
                            m_rate,
                            m_rates[ttas[0]] / m_rate,
                        ]
                    )
            del model

    print(
        f"\n{machine_line(device)}; load average at the end {os.getloadavg()[0]:.2f}\n"
        f"predict throughput: {args.arch} width {args.width:g}, {args.image_size} px, batch {args.batch_size}, "
        f"{args.workers} workers; loader over {len(paths)} images from {source}; "
        f"model-only: {args.warmup} warm-up + {args.repeats} timed batches\n"
    )
    print(
        markdown_table(
            ["config", "decoder", "tta", "loader img/s", "loader time x", "model-only img/s", "model-only time x"],
            rows,
        )
    )


if __name__ == "__main__":
    main()
