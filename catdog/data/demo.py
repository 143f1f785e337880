"""A small synthetic Dogs-vs-Cats stand-in, generated on the fly so the demo needs no download.

"Cats" are scenes of ellipses, "dogs" of rectangles, over noisy backgrounds with random colours, sizes and aspect
ratios; written in Kaggle's flat layout (``train/cat.N.jpg``, ``test/N.jpg``). A tiny network learns it in a minute.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from catdog.errors import DatasetError

log = logging.getLogger(__name__)

DEMO_CLASSES = ("cat", "dog")
MARKER = ".catdog-demo"


def _scene(rng: np.random.Generator, label: int, size: tuple[int, int]) -> Image.Image:
    w, h = size
    base = rng.integers(40, 200, size=3)
    noise = rng.normal(0, 18, size=(h, w, 3))
    img = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 4))):
        cw, ch = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
        x0, y0 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        box = (x0, y0, x0 + cw, y0 + ch)
        (draw.ellipse if label == 0 else draw.rectangle)(box, fill=colour, outline=(0, 0, 0), width=2)
    return img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0, 1.0))))


def make_demo_dataset(root: str | os.PathLike, per_class: int = 300, test: int = 50, seed: int = 0) -> Path:
    """Write the synthetic dataset to ``root`` if it is missing or empty (an existing complete one is reused; a folder
    with anything else in it is the user's data, used as it is and left alone).

    It is generated in a temporary folder beside ``root`` and renamed into place, so an interrupted generation
    leaves nothing half-made at ``root``.
    """
    root = Path(root)
    if (root / MARKER).exists():
        return root
    if root.is_dir() and any(root.iterdir()):
        # The user's own images: the demo recipe trains on them as they are, and nothing is written there.
        log.info("%s holds data of its own: training on it (the synthetic dataset is only generated into a new or "
                 "empty folder)", root)  # fmt: skip
        return root
    if root.exists() and not root.is_dir():
        raise DatasetError(f"data.dir={root} is a file; the demo dataset needs a folder (a new or empty one)")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        _write_demo(tmp, per_class, test, seed)
        os.replace(tmp, root)  # also over an empty folder
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote the synthetic demo dataset to %s (%d train, %d test images)", root, 2 * per_class, test)
    return root


def _write_demo(root: Path, per_class: int, test: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    (root / "train").mkdir(parents=True, exist_ok=True)
    (root / "test").mkdir(parents=True, exist_ok=True)

    def size():
        return int(rng.integers(64, 129)), int(rng.integers(64, 129))

    for i in range(per_class):
        for label, name in enumerate(DEMO_CLASSES):
            _scene(rng, label, size()).save(root / "train" / f"{name}.{i}.jpg", quality=90)
    for i in range(test):
        _scene(rng, int(rng.integers(0, 2)), size()).save(root / "test" / f"{i + 1}.jpg", quality=90)
    (root / MARKER).write_text("catdog synthetic demo dataset\n")
