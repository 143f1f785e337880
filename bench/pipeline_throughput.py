"""End-to-end training throughput of each data pipeline against the model alone, at several image sizes.

Everything runs through catdog's own builders on a composed recipe (``--experiment``, default vgg16_bn_scratch), so
the figures are those of ``python train.py experiment=...`` in its steady state (no validation, no checkpoints):

  model-only:  the recipe's model, optimizer, precision and callbacks (EMA, ...), fed one uint8 batch that is already
               on the device: the bound any data pipeline can reach.
  workers:     data.pipeline=workers: the decoded-image cache read and augmented one image at a time in N DataLoader
               workers.
  device:      data.pipeline=device: the decoded images held on the device, augmented in whole batches there.

images/s are counted from the start of batch --warmup to the end of the last batch (the device synchronized at both
ends); "of model" is the end-to-end rate over the model-only rate at that size. The decoded-image cache is built
first (once per image size, in --cache-dir) and the device pipeline's image store before its timing starts; their
times are printed apart.

Examples:
    python bench/pipeline_throughput.py --data DATA/train --device cuda --sizes 112,144,176 --workers 12
    python bench/pipeline_throughput.py --data DATA/train --experiment cpu_scratch --sizes 64,96 --steps 20 --warmup 3
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import hydra
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from pytorch_lightning import Callback
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine_line, markdown_table, sync  # noqa: E402

from catdog.builders import build_datamodule, build_model, build_trainer  # noqa: E402

CONF = str(Path(__file__).resolve().parents[1] / "conf")


class Timer(Callback):
    """Wall time from the start of batch ``warmup`` to the end of the last batch, the device synchronized."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end, self.images = warmup, None, None, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            sync(pl_module.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx >= self.warmup:
            self.images += len(batch[1])
            sync(pl_module.device)
            self.end = time.perf_counter()

    def rate(self) -> float:
        return self.images / (self.end - self.start) if self.start is not None and self.end else float("nan")


class FixedBatches(Dataset):
    """The same ready batch ``n`` times (a DataLoader with ``batch_size=None`` yields it as is)."""

    def __init__(self, batch, n: int):
        self.batch, self.n = batch, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.batch


def recipe(args, size: int, pipeline: str | None):
    overrides = [
        f"experiment={args.experiment}", f"data.dir={args.data_root}", f"data.image_size={size}",
        "data.progressive=null", f"trainer.max_epochs={args.epochs}", f"trainer.limit_train_batches={args.steps}",
        "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", "report=false", "calibrate=false", f"data.cache_dir={args.cache_dir}",
        f"paths.log_dir={args.cache_dir}", f"trainer.accelerator={'gpu' if args.device == 'cuda' else 'cpu'}",
        f"data.num_workers={args.workers}", f"model.compile={str(args.compile).lower()}", *args.overrides,
    ]  # fmt: skip
    if args.batch_size:
        overrides.append(f"data.batch_size={args.batch_size}")
    if pipeline:
        overrides.append(f"data.pipeline={pipeline}")
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = tempfile.mkdtemp(prefix="catdog-bench-")
    return cfg


def averaging_callbacks(cfg):
    """The recipe's weight-averaging callback (its per-step update is part of the training step), if any."""
    averaging = (cfg.get("callbacks") or {}).get("averaging")
    return [hydra.utils.instantiate(averaging)] if averaging is not None else []


def run(cfg, timer: Timer, datamodule=None, loader=None) -> float:
    trainer = build_trainer(
        cfg, callbacks=[timer, *averaging_callbacks(cfg)], logger=False, enable_checkpointing=False
    )  # fmt: skip
    classes = datamodule.classes if datamodule is not None else ["cat", "dog"]
    model = build_model(cfg, classes)
    if datamodule is not None:
        trainer.fit(model, datamodule=datamodule)
    else:
        trainer.fit(model, train_dataloaders=loader)
    return timer.rate()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="the training images folder (e.g. DATA/train)")
    parser.add_argument("--experiment", default="vgg16_bn_scratch")
    parser.add_argument("--sizes", default="112,144,176")
    parser.add_argument("--pipelines", default="workers,device")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--steps", type=int, default=60, help="training batches per measurement (warm-up included)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--workers", type=int, default=max(1, min(12, (os.cpu_count() or 2) - 1)))
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="model.compile=true")
    parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "catdog-bench-cache"))
    parser.add_argument("overrides", nargs="*", help="more train.py overrides, e.g. data.augment.auto=null")
    args = parser.parse_args(argv)
    args.data_root = str(Path(args.data).resolve().parent)
    if Path(args.data).name != "train":
        raise SystemExit(f"--data must be a dataset's train/ folder, got {args.data}")
    device = torch.device(args.device)
    print(machine_line(device))
    print(f"experiment={args.experiment}, {args.steps} batches ({args.warmup} warm-up), workers={args.workers}, "
          f"compile={args.compile}, overrides {args.overrides}\n")  # fmt: skip
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        cfg = recipe(args, size, None)
        bs = cfg.data.batch_size
        x = torch.randint(0, 256, (bs, 3, size, size), dtype=torch.uint8, device=device)
        y = torch.randint(0, 2, (bs,), device=device)
        loader = DataLoader(FixedBatches((x, y, torch.arange(bs, device=device)), args.steps), batch_size=None)
        model_only = run(cfg, Timer(args.warmup), loader=loader)
        row = [size, bs, f"{model_only:.0f}"]
        for pipeline in args.pipelines.split(","):
            cfg = recipe(args, size, pipeline)
            start = time.perf_counter()
            datamodule = build_datamodule(cfg)
            datamodule.setup("fit")
            setup_s = time.perf_counter() - start
            timer = Timer(args.warmup)
            rate = run(cfg, timer, datamodule=datamodule)
            row += [f"{rate:.0f}", f"{rate / model_only:.2f}"]
            print(f"size {size} {pipeline}: {rate:.0f} images/s (setup {setup_s:.1f} s)", flush=True)
        rows.append(row)
    headers = ["size", "batch", "model-only img/s"]
    for pipeline in args.pipelines.split(","):
        headers += [f"{pipeline} img/s", f"{pipeline} of model"]
    print()
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
