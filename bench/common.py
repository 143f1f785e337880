"""Shared helpers for the benchmark scripts: device choice, image lists, timing, memory and markdown tables."""

from __future__ import annotations

import contextlib
import os
import platform
import random
import resource
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from catdog.data.images import list_image_files
from catdog.data.transforms import IMAGENET_MEAN, IMAGENET_STD


# ----- the plain tutorial baseline ---------------------------------------------------------------------------------
class FlatFiles(Dataset):
    """The tutorial dataset: open, convert to RGB, transform to a normalized float tensor."""

    def __init__(self, paths, labels, transform):
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        img = Image.open(self.paths[i]).convert("RGB")
        return self.transform(img), self.labels[i]


def baseline_train_transform(image_size: int) -> T.Compose:
    return T.Compose(
        [
            T.RandomResizedCrop(image_size),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def baseline_eval_transform(image_size: int, crop_pct: float = 0.875) -> T.Compose:
    return T.Compose(
        [
            T.Resize(int(round(image_size / crop_pct))),
            T.CenterCrop(image_size),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def add_common_args(parser, default_images: int) -> None:
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--data",
        default=None,
        help="folder of JPEGs (e.g. dogs-vs-cats/train, Kaggle names cat.N.jpg / dog.N.jpg); "
        "omitted: synthetic JPEGs are written to a temporary folder",
    )
    parser.add_argument("--images", type=int, default=default_images, help="how many images to read from --data")
    parser.add_argument("--synthetic-size", type=int, default=200, help="side of the synthetic JPEGs (no --data)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but no CUDA GPU is available")
    return torch.device(name)


def setup(args) -> torch.device:
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device


def _synthetic_jpeg(path: Path, size: int, rng: np.random.Generator) -> None:
    """A smooth colour gradient plus noise: decodes like a photo, not like flat colour or pure noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(0, 255, size=3).astype(np.float32)
    img = np.stack([base[0] * xx, base[1] * yy, base[2] * (1 - xx * yy)], axis=-1)
    img += rng.normal(0, 12, size=img.shape).astype(np.float32)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB").save(path, quality=90)


@contextlib.contextmanager
def image_list(
    data: str | None, count: int, synthetic_size: int = 200, seed: int = 0
) -> Iterator[tuple[list[str], list[int], str]]:
    """``(paths, labels, description)``: ``count`` images from ``data`` (shuffled, seeded), or synthetic JPEGs.

    Labels come from Kaggle names (``cat.*`` -> 0, ``dog.*`` -> 1); other names get label 0. Synthetic JPEGs live in
    a temporary folder removed on exit. A folder with fewer than ``count`` images is cycled.
    """
    if data:
        files = [str(p) for p in list_image_files(data)]
        if not files:
            raise SystemExit(f"no images in {data}")
        random.Random(seed).shuffle(files)
        paths = [files[i % len(files)] for i in range(count)]
        labels = [1 if os.path.basename(p).lower().startswith("dog") else 0 for p in paths]
        yield paths, labels, f"{data} ({min(count, len(files))} distinct JPEGs)"
        return
    rng = np.random.default_rng(seed)
    distinct = min(count, 256)
    with tempfile.TemporaryDirectory(prefix="catdog-bench-") as tmp:
        files = []
        for i in range(distinct):
            name = f"{'dog' if i % 2 else 'cat'}.{i}.jpg"
            _synthetic_jpeg(Path(tmp) / name, synthetic_size, rng)
            files.append(os.path.join(tmp, name))
        paths = [files[i % distinct] for i in range(count)]
        labels = [i % distinct % 2 for i in range(count)]
        yield paths, labels, f"synthetic {synthetic_size}x{synthetic_size} JPEGs ({distinct} distinct)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now(device: torch.device) -> float:
    sync(device)
    return time.perf_counter()


def reset_peak_memory(device: torch.device) -> None:
    """Reset the peak counter: CUDA allocator stats, or the process's peak RSS (Linux ``clear_refs``)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_memory_mib(device: torch.device) -> float:
    """CUDA: ``max_memory_allocated``. CPU: peak RSS of this process since the last reset (VmHWM), else ru_maxrss."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_label(device: torch.device) -> str:
    return "CUDA max_memory_allocated" if device.type == "cuda" else "peak RSS, main process"


def cpu_supports_bf16() -> bool:
    """True when a bf16 conv runs under CPU autocast (oneDNN with AVX512-BF16 / AMX is what makes it fast)."""
    if not torch.backends.mkldnn.is_available():
        return False
    is_supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        if is_supported is not None and not is_supported():
            return False
        conv = torch.nn.Conv2d(3, 8, 3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = conv(torch.randn(1, 3, 16, 16))
        return out.dtype == torch.bfloat16
    except (RuntimeError, AttributeError):
        return False


def machine_line(device: torch.device) -> str:
    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        what = platform.processor() or platform.machine()
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    what = line.split(":", 1)[1].strip()
                    break
        what += f", {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads"
    return f"device: {device} ({what}); torch {torch.__version__}"


#: CPU flags that decide which kernels run fast: int8 dot products (VNNI), bf16 (AVX512-BF16, AMX tiles).
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_features() -> str:
    """The :data:`CPU_FLAGS` this CPU has (``/proc/cpuinfo``), e.g. ``flags avx2 avx512f avx512_vnni, no amx``."""
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    present = [f for f in CPU_FLAGS if f in flags]
    amx = "" if any(f.startswith("amx") for f in present) else ", no amx"
    return f"flags {' '.join(present) or 'none of ' + '/'.join(CPU_FLAGS)}{amx}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
        return str(v)

    rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|"
    lines = ["| " + " | ".join(headers) + " |", rule]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def ratio(a: float | None, b: float | None) -> float | str:
    return a / b if a and b else "n/a"
