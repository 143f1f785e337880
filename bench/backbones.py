"""One training step per backbone family: its stage list and the time of forward + backward + SGD step.

Random initialization (no download), every layer training, the model's native head for 2 classes, a synthetic uint8
batch already on the device, through catdog's ClassifierModule (device-side normalization, channels_last).

Examples:
    python bench/backbones.py                                   # CPU: smallest member of each family at 64 px
    python bench/backbones.py --archs resnet50,convnext_tiny --image-size 224 --device cuda --batch-size 64
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine_line, markdown_table  # noqa: E402

from catdog.errors import ConfigError  # noqa: E402
from catdog.models.module import ClassifierModule  # noqa: E402
from catdog.models.networks import check_input_size
from catdog.models.stages import family_of  # noqa: E402

DEFAULT_ARCHS = (
    "vgg16_bn,resnet18,resnet50,convnext_tiny,efficientnet_b0,efficientnet_v2_s,regnet_y_400mf,mobilenet_v3_large,"
    "mnasnet1_0,shufflenet_v2_x1_0,densenet121,squeezenet1_1,alexnet,googlenet,inception_v3,swin_t,maxvit_t,vit_b_16"
)


def step_time(arch: str, image_size: int, batch_size: int, steps: int, device: torch.device) -> dict:
    row = {"arch": arch, "family": family_of(arch)}
    try:
        model = ClassifierModule(
            ["cat", "dog"], arch=arch, weights=None, head="native", dropout=0.2, image_size=image_size,
            finetune={"head_epochs": 0, "blocks": -1, "lr_factor": 1.0},
        )  # fmt: skip
        row["stages"] = model.net.describe()
        row["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
        check_input_size(model.net, [image_size])
    except ConfigError as exc:
        row.setdefault("stages", f"{arch}: ? stages")
        row["error"] = f"cannot take {image_size} px"
        print(f"{arch}: {exc}", file=sys.stderr)
        return row
    model.to(device).train()
    model.apply_stage(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randint(0, 256, (batch_size, 3, image_size, image_size), dtype=torch.uint8, device=device)
    y = torch.randint(0, 2, (batch_size,), device=device)
    times = []
    for i in range(steps + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:  # two warm-up steps
            times.append(time.perf_counter() - start)
    row["step_ms"] = statistics.median(times) * 1000
    row["images_per_s"] = batch_size / statistics.median(times)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default=DEFAULT_ARCHS)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    rows = []
    for arch in args.archs.split(","):
        row = step_time(arch, args.image_size, args.batch_size, args.steps, device)
        rows.append(row)
        print(row["stages"], file=sys.stderr, flush=True)
    print()
    print(machine_line(device))
    print(f"one training step (fp32, batch {args.batch_size}, {args.image_size} px, every layer training), "
          f"median of {args.steps}:\n")  # fmt: skip
    print(
        markdown_table(
            ("arch", "family", "stages", "params (M)", "step (ms)", "images/s"),
            [
                (
                    r["arch"],
                    r["family"],
                    r["stages"].split(": ")[1].split(" stages")[0],
                    f"{r['params_m']:.1f}" if "params_m" in r else "-",
                    f"{r['step_ms']:.0f}" if "step_ms" in r else r["error"],
                    f"{r['images_per_s']:.0f}" if "step_ms" in r else "-",
                )
                for r in rows
            ],
        )  # fmt: skip
    )


if __name__ == "__main__":
    main()
