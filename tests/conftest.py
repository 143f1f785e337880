"""Shared fixtures: small generated datasets (PIL, in tmp folders) and composed Hydra configs for a tiny model."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from hydra import compose, initialize_config_dir
from PIL import Image

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
# The real Kaggle images, for the tests marked shared_data: CATDOG_SHARED_DATA=PATH points elsewhere.
SHARED_DATA = Path(
    os.environ.get("CATDOG_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data" / "dogs-vs-cats"
)

# A VGG16-BN at 1/16 width on 32 px images: one training step takes milliseconds on a CPU.
TINY = [
    "model.weights=null",
    "model.width=0.0625",
    "model.head_hidden=16",
    "model.finetune.head_epochs=0",
    "model.finetune.blocks=-1",
    "data.image_size=32",
    "data.batch_size=4",
    "data.num_workers=0",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
    "report=false",  # a report takes seconds to draw: tests that check one turn it on
]


def make_image(path, label: int = 0, size=(40, 36), seed: int = 0, mode: str = "RGB", fmt: str | None = None) -> Path:
    """A small image whose colour depends on ``label`` (so a tiny model can learn it), with noise from ``seed``."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = np.array([200, 60, 60]) if label == 0 else np.array([60, 60, 200])
    arr = np.clip(base + rng.normal(0, 25, size=(h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


def make_flat(root, per_class: int = 10, test: int = 5, classes=("cat", "dog")) -> Path:
    root = Path(root)
    for i in range(per_class):
        for label, name in enumerate(classes):
            make_image(root / "train" / f"{name}.{i}.jpg", label, seed=zlib.crc32(f"{name}.{i}".encode()) % 10_000)
    for i in range(test):
        make_image(root / "test" / f"{i + 1}.jpg", i % 2, seed=1000 + i)
    return root


def make_csv_data(root, rows, header="image,label", name="labels.csv") -> Path:
    """``data.csv`` data: an image under ``root`` for every row (``(image, label, ...)``; the colour follows the label)
    and the CSV of ``rows`` beside them."""
    root = Path(root)
    lines = [header]
    for i, row in enumerate(rows):
        make_image(root / row[0], zlib.crc32(str(row[1]).encode()) % 2, seed=i)
        lines.append(",".join(str(v) for v in row))
    path = root / name
    path.write_text("\n".join(lines) + "\n")
    return path


def make_class_folders(root, per_class: int = 8, classes=("cat", "dog"), validation: bool = True) -> Path:
    root = Path(root)
    for label, name in enumerate(classes):
        for i in range(per_class):
            make_image(root / "train" / name / f"{i}.png", label, seed=label * 100 + i)
            if validation and i < per_class // 2:
                make_image(root / "validation" / name / f"v{i}.png", label, seed=label * 100 + 50 + i)
    return root


@pytest.fixture
def flat_data(tmp_path) -> Path:
    return make_flat(tmp_path / "data")


@pytest.fixture
def folder_data(tmp_path) -> Path:
    return make_class_folders(tmp_path / "data")


def _compose(config_name: str, overrides, output_dir):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides))
    if output_dir is not None:
        cfg.paths.output_dir = str(output_dir)
    return cfg


def compose_train(overrides=(), output_dir=None):
    return _compose("train", overrides, output_dir)


def compose_predict(overrides=(), output_dir=None):
    return _compose("predict", overrides, output_dir)


ROOT = Path(__file__).resolve().parents[1]


# Runs ``<script> args...`` (sys.argv[1:]) as __main__ with a deprecation raised by catdog's code or the script's own
# an error, as pyproject's filterwarnings makes it in the test process.
STRICT_MAIN = """
import runpy, sys, warnings
for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
    warnings.filterwarnings("error", category=category, module=r"(catdog|__main__)(\\.|$)")
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _script(script: str, args) -> tuple[list[str], dict[str, str]]:
    """The command line of ``python <repo>/<script> args...`` (catdog's deprecations errors: :data:`STRICT_MAIN`) and
    its environment (the project importable)."""
    return [sys.executable, "-c", STRICT_MAIN, str(ROOT / script), *args], {**os.environ, "PYTHONPATH": str(ROOT)}


def run_script(script: str, args, cwd, timeout: int = 600):
    """Run ``python <repo>/<script> args...`` in ``cwd`` (the project importable), capturing its output."""
    command, env = _script(script, args)
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)


def start_script(script: str, args, cwd):
    """Start ``python <repo>/<script> args...`` in ``cwd`` without waiting: a Popen whose ``communicate()`` returns
    its output."""
    command, env = _script(script, args)
    return subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def installed(module: str) -> bool:
    """Whether ``module`` (a dotted name too) can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package of a dotted name is missing
        return False


def extra_marks(extra: str, *modules: str) -> list[pytest.MarkDecorator]:
    """The marks of a test that needs ``modules``, which ``pip install -e ".[EXTRA]"`` installs: ``extras``
    (``pytest -m extras`` runs these tests alone) and a skip naming the missing modules and that command."""
    missing = [m for m in modules if not installed(m)]
    reason = f'needs {", ".join(missing)}: pip install -e ".[{extra}]"'
    return [pytest.mark.extras, pytest.mark.skipif(bool(missing), reason=reason)]


def needs_extra(extra: str, *modules: str):
    """:func:`extra_marks` as a decorator."""

    def mark(test):
        for m in extra_marks(extra, *modules):
            test = m(test)
        return test

    return mark


def tiny_train_cfg(data_dir, out_dir, *extra):
    return compose_train([*TINY, f"data.dir={data_dir}", *extra], output_dir=out_dir)


@pytest.fixture(autouse=True)
def _quiet_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))


#: Architectures of five torchvision families, their number of stages and the overrides that keep them small.
FAMILIES = [
    ("vgg16_bn", 5, ["model.width=0.0625"]),
    ("resnet18", 4, []),
    ("convnext_tiny", 4, []),
    ("efficientnet_b0", 7, []),
    ("vit_b_16", 12, []),
]


@pytest.fixture(scope="module")
def vgg16_features_file(tmp_path_factory):
    """A torchvision-format vgg16 state dict (conv layers only, to keep it small) as an offline user would have."""
    path = tmp_path_factory.mktemp("w") / "vgg16-local.pth"
    state = {k: v for k, v in torchvision.models.vgg16().state_dict().items() if k.startswith("features.")}
    torch.save(state, path)
    return path


@pytest.fixture
def other_process():
    """A live process of this host that is not this one (it holds locks written for it)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def dirty_flat(tmp_path):
    """A flat Kaggle folder with unreadable training files (returned, sorted) and copy-tool clutter beside them."""
    from tests.unit.data.test_images import add_bad_training_files, add_clutter  # test helpers import this module

    root = make_flat(tmp_path / "data", per_class=8, test=0)
    bad = add_bad_training_files(root / "train")
    add_clutter(root / "train")
    return root, bad


@pytest.fixture
def umask_022():
    """The common umask, whatever the test process was started with."""
    old = os.umask(0o022)
    yield
    os.umask(old)
