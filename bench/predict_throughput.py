"""Prediction throughput (images/s) at tta=0 and tta=N, and single-image latency, for every way predict.py runs a
model, on the same images in one run: the checkpoint in PyTorch (fp32, and bf16 where the CPU has AMX or on CUDA),
its ONNX file and its int8 ONNX file (ONNX Runtime), and decoding alone (the loader's ceiling).

The model is a checkpoint (--ckpt: its architecture, width, image size, crop and interpolation) or a freshly built
ClassifierModule with random weights (--arch, --width, --image-size). Engines (--configs):
  fp32-channels_last, fp32-nchw, bf16-channels_last, bf16-nchw
              the model in PyTorch with that precision (predict.py precision=32|bf16) and memory layout
  onnx-fp32   the model exported as export.py does (catdog.exporting.onnx_bytes) and loaded as predict.py loads a
              .onnx file (catdog.exported.load_exported: ONNX Runtime with intra-op threads = torch's threads)
  onnx-int8   that file quantized as export.py quantize=int8 does (catdog.quantize.quantize_onnx: QDQ, per-channel
              int8 weights, int8 activations), calibrated on --calibration of the benchmark's images: a speed
              measurement only (export.py calibrates on the run's training images and scores the file; --int8 PATH
              times a file it wrote)
For each engine and TTA depth:
  loader:     the images as predict.py reads them (decoder pil: ImageDataset + eval_transform + make_loader; fast:
              catdog.data.decode.fast_loader, libjpeg-turbo / PIL draft mode + tensor resize in --workers DataLoader
              processes on the CPU, nvJPEG batches on CUDA), then catdog.prediction.predict_loader; the time includes
              the DataLoader workers' start-up.
  model-only: a synthetic uint8 batch already on the device through predict_proba(x, tta) (--warmup untimed,
              --repeats timed batches).
  latency:    one image already decoded through predict_proba(x[:1], tta), --latency-runs times after 3 untimed
              calls: the median (p50) and 99th percentile (p99) in milliseconds.
decode only: the same loader without a model (per decoder), the rate no engine can beat through it.
images/s counts input images (not views).

Examples:
    python bench/predict_throughput.py --data /path/to/dogs-vs-cats/test                  # CPU: small defaults
    python bench/predict_throughput.py --data ../shared/data/dogs-vs-cats/test --images 2000 \\
        --ckpt RUN/checkpoints/best.ckpt --batch-size 64
    python bench/predict_throughput.py --device cuda --data /path/to/dogs-vs-cats/test --images 2000 \\
        --width 1 --image-size 224 --batch-size 128 --workers 8 --decoders pil,fast
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    add_common_args,
    cpu_features,
    image_list,
    machine_line,
    markdown_table,
    now,
    setup,
)

from catdog.data.datamodule import ImageDataset, default_num_workers, make_loader  # noqa: E402
from catdog.data.decode import EvalGeometry, fast_loader, resolve_decoder  # noqa: E402
from catdog.data.transforms import eval_resize_size, eval_transform  # noqa: E402
from catdog.errors import ConfigError  # noqa: E402
from catdog.exported import load_exported  # noqa: E402
from catdog.exporting import export_metadata, onnx_bytes  # noqa: E402
from catdog.inference import load_classifier  # noqa: E402
from catdog.models.module import ClassifierModule  # noqa: E402
from catdog.models.precision import cpu_fast_bf16  # noqa: E402
from catdog.prediction import predict_loader  # noqa: E402
from catdog.quantize import CalibrationImages, image_batches, quantize_onnx, read_metadata, with_metadata  # noqa: E402

EAGER = {
    "fp32-nchw": (None, False),
    "fp32-channels_last": (None, True),
    "bf16-nchw": (torch.bfloat16, False),
    "bf16-channels_last": (torch.bfloat16, True),
}
ONNX = ("onnx-fp32", "onnx-int8")
CONFIGS = (*EAGER, *ONNX)
LATENCY_WARMUP = 3


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def build_model(args, channels_last: bool, device: torch.device):
    """The checkpoint (--ckpt) in the layout asked for, else a fresh random ClassifierModule."""
    if args.ckpt:
        model = load_classifier(args.ckpt)
        model.hparams.channels_last = channels_last
        model.net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    else:
        model = ClassifierModule(
            ["cat", "dog"], arch=args.arch, weights=None, width=args.width, image_size=args.image_size,
            channels_last=channels_last,
        )  # fmt: skip
        model.temperature = None
    return model.to(device).eval()


def geometry_of(model) -> EvalGeometry:
    hp = model.hparams
    return EvalGeometry(int(hp.image_size), float(hp.crop_pct), False, str(hp.interpolation))


def make_images_loader(paths, geometry: EvalGeometry, batch_size: int, workers: int, device, decoder: str):
    """The loader predict.py builds for ``decoder`` (pil | a JPEG library, as resolve_decoder gives it)."""
    if decoder != "pil":
        return fast_loader(paths, geometry, batch_size, device, workers, library=decoder)
    transform = eval_transform(geometry.image_size, geometry.crop_pct, False, geometry.interpolation)
    dataset = ImageDataset(paths, None, transform, "error", eval_resize_size(geometry.image_size, geometry.crop_pct))
    return make_loader(dataset, batch_size, workers)


def onnx_files(args, model, paths, geometry: EvalGeometry, folder: Path, wanted) -> dict[str, Path]:
    """The engine's ONNX files: the model exported in float32 and quantized to int8 (or --onnx / --int8 files)."""
    files = {}
    if args.onnx:
        files["onnx-fp32"] = Path(args.onnx)
    if args.int8:
        files["onnx-int8"] = Path(args.int8)
    if all(name in files for name in wanted):
        return files
    t0 = time.perf_counter()
    fp32 = onnx_bytes(model, export_metadata(model, "onnx", None, str(args.ckpt or "random weights")))
    print(f"ONNX export: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    if "onnx-fp32" not in files:
        files["onnx-fp32"] = folder / "model.onnx"
        files["onnx-fp32"].write_bytes(fp32)
    if "onnx-int8" in wanted and "onnx-int8" not in files:
        t0 = time.perf_counter()
        chosen = paths[: args.calibration]
        batches = (x for x, _ in image_batches(chosen, geometry, args.batch_size, args.workers))
        int8 = quantize_onnx(fp32, CalibrationImages(batches), folder)
        files["onnx-int8"] = folder / "model.int8.onnx"
        files["onnx-int8"].write_bytes(with_metadata(int8, {**read_metadata(fp32), "precision": "int8"}))
        print(f"int8 quantization ({len(chosen)} images): {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return files


@torch.inference_mode()
def model_only(model, device, dtype, tta: int, x: torch.Tensor, warmup: int, repeats: int, compile: bool) -> float:
    """Images/s of ``predict_proba`` on the batch ``x`` already on the device (``torch.compile``d with ``compile``;
    the compilation happens in the untimed warm-up)."""
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
    return repeats * len(x) / elapsed


@torch.inference_mode()
def latency_ms(model, device, dtype, tta: int, x: torch.Tensor, runs: int) -> tuple[float, float]:
    """(p50, p99) milliseconds of ``predict_proba`` on one image already on the device."""
    one = x[:1]
    times = []
    with autocast(device, dtype):
        for i in range(LATENCY_WARMUP + runs):
            t0 = now(device)
            model.predict_proba(one, tta)
            if i >= LATENCY_WARMUP:
                times.append((now(device) - t0) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def loader_rate(args, model, device, precision: str, tta: int, paths, geometry, decoder: str) -> float:
    t0 = now(device)
    loader = make_images_loader(paths, geometry, args.batch_size, args.workers, device, decoder)
    probs, _ = predict_loader(model, loader, tta, device, precision, compile=args.compile)
    elapsed = now(device) - t0
    assert len(probs) == len(paths)
    return len(paths) / elapsed


def decode_rate(args, paths, geometry, device, decoder: str) -> float:
    t0 = now(device)
    images = sum(
        len(idx) for _, _, idx in make_images_loader(paths, geometry, args.batch_size, args.workers, device, decoder)
    )
    elapsed = now(device) - t0
    assert images == len(paths)
    return images / elapsed


def ort_version() -> str:
    try:
        return importlib.metadata.version("onnxruntime")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def default_configs(cuda: bool) -> list[str]:
    """CUDA: bf16 and fp32 in PyTorch. CPU: what predict.py can run here: fp32 channels_last, bf16 where AMX makes
    it the automatic choice, and the ONNX files when onnxruntime is installed."""
    if cuda:
        return ["bf16-channels_last", "fp32-nchw"]
    configs = ["fp32-channels_last"] + (["bf16-channels_last"] if cpu_fast_bf16() else [])
    if all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime")):
        configs += list(ONNX)
    return configs


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, default_images=0)
    p.add_argument("--ckpt", default=None, help="a catdog .ckpt to time (default: a fresh model of --arch/--width)")
    p.add_argument("--arch", default="vgg16_bn", help="architecture of the fresh model (no --ckpt)")
    p.add_argument("--width", type=float, default=None, help="conv width multiplier (default: 0.5 CPU, 1 CUDA)")
    p.add_argument("--image-size", type=int, default=None, help="default: 128 CPU, 224 CUDA (--ckpt: its own)")
    p.add_argument("--batch-size", type=int, default=None, help="default: 32 CPU, 128 CUDA")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: CPUs - 1, at most 8)")
    p.add_argument("--tta", default="0,5", help="comma-separated TTA depths")
    p.add_argument("--configs", default=None, help=f"comma-separated subset of {','.join(CONFIGS)} (default: CPU "
                   "fp32-channels_last, bf16-channels_last where AMX, onnx-fp32 and onnx-int8 with onnxruntime; "
                   "CUDA bf16-channels_last,fp32-nchw)")  # fmt: skip
    p.add_argument("--repeats", type=int, default=None, help="timed model-only batches (default: 3 CPU, 20 CUDA)")
    p.add_argument("--warmup", type=int, default=None, help="untimed model-only batches (default: 1 CPU, 5 CUDA)")
    p.add_argument("--latency-runs", type=int, default=100, help="timed single-image calls per engine and TTA")
    p.add_argument("--calibration", type=int, default=64, help="images the in-process int8 file is calibrated on")
    p.add_argument("--onnx", default=None, help="time this float32 .onnx file written by export.py instead")
    p.add_argument("--int8", default=None, help="time this int8 .onnx file written by export.py instead")
    p.add_argument("--skip-loader", action="store_true", help="model-only and latency figures only")
    p.add_argument("--decoders", default="fast", help="comma-separated loader decoders (predict.py decoder=): pil "
                   "and/or fast")  # fmt: skip
    p.add_argument("--compile", action="store_true", help="torch.compile the PyTorch forward pass (model-only: "
                   "compilation untimed; loader: included)")  # fmt: skip
    args = p.parse_args(argv)
    device = setup(args)
    cuda = device.type == "cuda"
    if args.ckpt:
        hp = load_classifier(args.ckpt).hparams
        args.arch, args.width, args.image_size = hp.arch, hp.width, int(hp.image_size)
    args.width = args.width if args.width is not None else (1.0 if cuda else 0.5)
    args.image_size = args.image_size or (224 if cuda else 128)
    args.batch_size = args.batch_size or (128 if cuda else 32)
    args.images = args.images or (2000 if cuda else 128)
    args.repeats = args.repeats or (20 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    args.workers = args.workers if args.workers is not None else default_num_workers()
    ttas = [int(t) for t in args.tta.split(",")]
    configs = args.configs.split(",") if args.configs else default_configs(cuda)
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        raise SystemExit(f"unknown --configs {sorted(unknown)}; choose from {list(CONFIGS)}")
    if cuda and set(configs) & set(ONNX):
        raise SystemExit("the ONNX engines are timed on the CPU only here: --device cpu")
    try:
        decoders = [resolve_decoder(d) for d in args.decoders.split(",")]
    except ConfigError as exc:
        raise SystemExit(f"--decoders: {exc}") from None

    load_start = os.getloadavg()[0]
    print(f"{machine_line(device)}; {cpu_features()}; load average {load_start:.2f}", file=sys.stderr)
    rows = []
    with (
        image_list(args.data, args.images, args.synthetic_size, args.seed) as (paths, _, source),
        tempfile.TemporaryDirectory(prefix="catdog-bench-onnx-") as tmp,
    ):
        reference = build_model(args, True, device)
        geometry = geometry_of(reference)
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (args.batch_size, 3, geometry.image_size, geometry.image_size), dtype=torch.uint8,
                          generator=g).to(device)  # fmt: skip
        wanted = [c for c in configs if c in ONNX]
        files = onnx_files(args, reference, paths, geometry, Path(tmp), wanted) if wanted else {}
        del reference
        if not args.skip_loader:
            for decoder in decoders:
                rate = decode_rate(args, paths, geometry, device, decoder)
                print(f"decode only, {decoder}: {rate:.1f} images/s", file=sys.stderr)
                rows.append(["decode only", decoder, "-", rate, "-", "-", "-"])
        for name in configs:
            if name in ONNX:
                model, dtype, precision = load_exported(files[name]).to(device), None, "32"
            else:
                dtype, channels_last = EAGER[name]
                model = build_model(args, channels_last, device)
                precision = {None: "32", torch.bfloat16: "bf16"}[dtype]
            for tta in ttas:
                m_rate = model_only(
                    model, device, dtype, tta, x, args.warmup, args.repeats, args.compile and name in EAGER
                )
                p50, p99 = latency_ms(model, device, dtype, tta, x, args.latency_runs)
                for decoder in decoders:
                    l_rate = (
                        None
                        if args.skip_loader
                        else loader_rate(args, model, device, precision, tta, paths, geometry, decoder)
                    )
                    print(
                        f"{name} {decoder} tta={tta}: loader {l_rate or 0:.1f} images/s, model-only {m_rate:.1f} "
                        f"images/s, latency p50 {p50:.2f} ms p99 {p99:.2f} ms",
                        file=sys.stderr,
                    )
                    rows.append([name, decoder, tta, l_rate if l_rate is not None else "-", m_rate, p50, p99])
            del model

    what = f"--ckpt {args.ckpt}" if args.ckpt else "random weights"
    print(
        f"\n{machine_line(device)}; {cpu_features()}; onnxruntime {ort_version()}; "
        f"load average at the start {load_start:.2f}, at the end {os.getloadavg()[0]:.2f}\n"
        f"predict throughput: {args.arch} width {args.width:g}, {args.image_size} px ({what}), batch "
        f"{args.batch_size}, {args.workers} workers; loader over {len(paths)} images from {source}; model-only: "
        f"{args.warmup} warm-up + {args.repeats} timed batches; latency: {args.latency_runs} single-image calls\n"
    )
    print(
        markdown_table(
            ["engine", "decoder", "tta", "loader img/s", "model-only img/s", "latency p50 ms", "latency p99 ms"], rows
        )
    )


if __name__ == "__main__":
    main()
