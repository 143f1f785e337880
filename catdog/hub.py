"""A model folder for the Hugging Face Hub: ``export.py format=hub output=DIR`` writes it, ``predict.py ckpt=DIR``
and ``catdog-serve ckpt=DIR`` load it, ``hub.repo_id=NAME`` pushes it and ``ckpt=hf://NAME`` (or ``hf-hub:NAME``)
downloads it.

The folder holds:

- ``model.safetensors``: the checkpoint's weights (the ``ClassifierModule``'s state dict), nothing executable;
- ``config.json``: what rebuilds the model and predicts as the checkpoint does: ``arch``, ``classes``,
  ``image_size``, ``crop_pct``, ``resize_size``, ``interpolation``, ``mean``, ``std``, ``temperature`` (null when
  none was fitted), the module's ``hyper_parameters``, the run's figures (``metrics``, from its ``result.json``),
  ``catdog_version`` and ``format`` / ``format_version``;
- ``README.md``: a model card with the Hub's YAML metadata (``library_name``, ``tags``, ``metrics``, a ``license``
  left for the owner to fill in), the run's figures labelled as catdog labels them, the training command, intended
  use and limitations;
- ``images/``: the pictures of the run's report, when it has one.

The pretrained-weights source is never needed to load it (``weights`` is set to none: every weight is in the file).
Pushing and downloading go through ``huggingface_hub`` (its token and cache, ``HF_TOKEN`` / ``huggingface-cli
login``, ``HF_HOME``); offline or without a token a push stops before anything is written.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from catdog.data.transforms import eval_resize_size
from catdog.errors import CheckpointError, ConfigError, check_known_keys
from catdog.runs.layout import RECORD_DIR, REPORT_DIR, RESULT_NAME

log = logging.getLogger(__name__)

FORMAT = "catdog-hub"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
IMAGES_DIR = "images"
INSTALL_HINT = 'pip install -e ".[hub]"'
#: ``ckpt=`` prefixes naming a Hub repository.
HUB_PREFIXES = ("hf://", "hf-hub:")
#: The run's figures copied into config.json and the card, with how catdog labels each.
FIGURES = (
    ("val/acc", "validation accuracy (best epoch, chosen on these images: in-sample)"),
    ("val/logloss", "validation log loss (best epoch, chosen on these images: in-sample)"),
    ("val/logloss_cross_fitted", "validation log loss after temperature, cross-fitted (T from other parts of the set)"),
    ("val/logloss_calibrated_in_sample", "validation log loss after temperature, in-sample (T fitted on these images)"),
    ("val/balanced_acc", "validation balanced accuracy (in-sample)"),
)
#: Keys of the datamodule's record that describe the data without naming local paths.
DATA_KEYS = ("classes", "csv_columns", "val_fraction", "seed", "sampler")


def catdog_version() -> str:
    try:
        return importlib.metadata.version("catdog")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def is_hub_ref(ckpt: Any) -> bool:
    return isinstance(ckpt, str) and ckpt.startswith(HUB_PREFIXES)


def is_hub_folder(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file()


def _safetensors():
    try:
        import safetensors.torch
    except ImportError:
        raise ConfigError(f"a Hub model folder ({WEIGHTS_NAME}) needs safetensors: {INSTALL_HINT}") from None
    return safetensors.torch


def _hf():
    try:
        import huggingface_hub
    except ImportError:
        raise ConfigError(f"the Hugging Face Hub needs huggingface_hub: {INSTALL_HINT}") from None
    return huggingface_hub


# ----- writing -----------------------------------------------------------------------------------------------------
def _jsonable(value: Any, key: str) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"the checkpoint's {key} cannot be written to {CONFIG_NAME}: {exc}") from None


def run_folder(ckpt: Path) -> Path | None:
    """The run folder of ``RUN/checkpoints/X.ckpt`` (where its result.json is), else None."""
    run = ckpt.resolve().parent.parent
    return run if (run / RESULT_NAME).is_file() else None


def hub_config(model, ckpt: Path, run: Path | None) -> dict[str, Any]:
    """config.json: the model's rebuild recipe, preprocessing, temperature and the figures of its ``run``."""
    hp = model.hparams
    result = json.loads((run / RESULT_NAME).read_text()) if run is not None else {}
    metrics = {k: result[k] for k, _ in FIGURES if isinstance(result.get(k), (int, float))}
    data = {k: v for k, v in (model.datamodule_hparams or {}).items() if k in DATA_KEYS}
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "catdog_version": catdog_version(),
        "arch": hp.arch, "classes": list(model.classes), "image_size": int(hp.image_size),
        "crop_pct": float(hp.crop_pct), "resize_size": eval_resize_size(int(hp.image_size), float(hp.crop_pct)),
        "interpolation": str(hp.interpolation), "mean": list(hp.mean), "std": list(hp.std),
        "temperature": model.temperature,
        "hyper_parameters": _jsonable({**hp, "weights": None}, "hyper_parameters"),
        "data": _jsonable(data, "data settings"), "metrics": metrics,
        "epochs": result.get("epochs"), "train_images": result.get("train_images"), "source": ckpt.name,
    }  # fmt: skip


def _training_command(run: Path | None) -> str | None:
    overrides = run / RECORD_DIR / "overrides.yaml" if run is not None else None
    if overrides is None or not overrides.is_file():
        return None
    lines = [line.strip()[2:] for line in overrides.read_text().splitlines() if line.strip().startswith("- ")]
    # local paths (data.dir=..., cache folders) say nothing to a reader of the card
    return "python train.py " + " ".join(x for x in lines if not x.split("=", 1)[0].endswith(("dir", "cache_dir")))


def model_card(config: dict, command: str | None, pictures: list[str], repo_id: str | None) -> str:
    """README.md: the Hub's YAML metadata, then what the model is, its figures (labelled), how it was trained and
    how to use it."""
    name = repo_id or "this folder"
    tags = ["image-classification", "catdog", "pytorch", "torchvision" if "/" not in config["arch"] else "timm"]
    figures = [(label, config["metrics"][k]) for k, label in FIGURES if k in config["metrics"]]
    yaml = [
        "---", "library_name: catdog", "pipeline_tag: image-classification", "tags:", *(f"- {t}" for t in tags),
        "# license: set the licence you publish this model under (e.g. mit, apache-2.0); it depends on your data",
        "metrics:", "- accuracy", "- log_loss", "---",
    ]  # fmt: skip
    lines = [
        *yaml, "", f"# {config['arch']} classifier: {', '.join(config['classes'])}", "",
        f"A {config['arch']} image classifier fine-tuned with catdog on "
        f"{config.get('train_images') or 'an unknown number of'} training images, {config['image_size']} px crops "
        f"(resize {config['resize_size']}, {config['interpolation']}), classes {config['classes']}.",
        "",
        "## Figures", "",
        "Measured on the run's own validation split. That split also chose the best epoch, so every figure is "
        "in-sample for that choice; the cross-fitted log loss scores each part with a temperature fitted on the "
        "others. None of them is a test-set figure.", "",
    ]  # fmt: skip
    if figures:
        lines += ["| figure | value |", "|---|---:|", *(f"| {label} | {value:.4f} |" for label, value in figures), ""]
    else:
        lines += ["No figures: the checkpoint was exported without its run folder's result.json.", ""]
    t = config.get("temperature")
    lines += [f"Temperature: {t:.4f} (applied by catdog to the logits)." if t else "No temperature fitted.", ""]
    lines += ["## Training", ""]
    lines += [f"```\n{command}\n```" if command else "The training command was not recorded with the checkpoint."]
    lines += [f"\n{config.get('epochs')} epochs." if config.get("epochs") else "", ""]
    lines += [
        "## Use", "", "```", f"python predict.py ckpt={'hf://' + repo_id if repo_id else 'DIR'} input=IMAGES tta=5",
        f"catdog-serve ckpt={'hf://' + repo_id if repo_id else 'DIR'}", "```", "",
        f"`{WEIGHTS_NAME}` holds the weights; `{CONFIG_NAME}` the architecture, classes, preprocessing and "
        "temperature catdog rebuilds the model from.", "",
        "## Intended use and limitations", "",
        f"Sorting photos into {', '.join(config['classes'])}. The model has only seen these classes: any other "
        "picture still gets one of them, often with high confidence. Its figures come from its own validation split, "
        "drawn from the same source as its training images; on photos from elsewhere (other cameras, framing, "
        f"lighting) expect lower accuracy. It is not meant for decisions about people. Owner of {name}: add what the "
        "training data was and its licence.", "",
    ]  # fmt: skip
    if pictures:
        lines += ["## Report", "", *(f"![{Path(p).stem}]({IMAGES_DIR}/{p})" for p in pictures), ""]
    return "\n".join(lines)


def check_output_folder(output: Path, overwrite: bool) -> Path:
    """``output`` may be written: absent, an empty folder, or (``overwrite=true``) a folder this module wrote."""
    if not output.exists() or (output.is_dir() and not any(output.iterdir())):
        return output
    if not output.is_dir():
        raise ConfigError(f"output={output} is a file; format=hub writes a folder")
    if not overwrite:
        raise ConfigError(f"output={output} exists and is not empty; pass overwrite=true to replace it, or output=")
    if not is_hub_folder(output):
        raise ConfigError(f"output={output} is not a catdog model folder; overwrite=true replaces only those")
    return output


def check_hub_settings(hub: Any) -> dict[str, Any]:
    """``export.py``'s ``hub`` block: ``repo_id`` (null, or OWNER/NAME to push) and ``private``."""
    check_known_keys(hub, ("repo_id", "private"), "hub")
    hub = dict(hub or {})
    repo_id = hub.get("repo_id")
    if repo_id is not None and (not isinstance(repo_id, str) or repo_id.count("/") != 1 or " " in repo_id):
        raise ConfigError(f"hub.repo_id must be null (write the folder only) or OWNER/NAME, got {repo_id!r}")
    if not isinstance(hub.get("private", False), bool):
        raise ConfigError(f"hub.private must be true or false, got {hub.get('private')!r}")
    if repo_id is not None:
        _hf()
    _safetensors()
    return hub


def write_hub_folder(model, ckpt: Path, output: Path, repo_id: str | None = None, overwrite: bool = False) -> Path:
    """Write the folder (see the module docstring) to ``output`` (:func:`check_output_folder`); built in a sibling
    temporary folder and renamed into place, so a failure leaves nothing half-written and an old folder whole."""
    st = _safetensors()
    check_output_folder(output, overwrite)
    run = run_folder(ckpt)
    config = hub_config(model, ckpt, run)
    pictures = sorted(p.name for p in (run / REPORT_DIR).glob("*.png")) if run is not None else []
    staging = output.with_name(f".{output.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        st.save_file(state, str(staging / WEIGHTS_NAME), metadata={"format": "pt"})
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        (staging / CARD_NAME).write_text(model_card(config, _training_command(run), pictures, repo_id))
        if pictures:
            (staging / IMAGES_DIR).mkdir()
            for name in pictures:
                shutil.copyfile(run / REPORT_DIR / name, staging / IMAGES_DIR / name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = output.with_name(f".{output.name}.old")
    if output.exists():
        shutil.rmtree(old, ignore_errors=True)
        output.rename(old)  # empty, or (overwrite=true) a model folder, replaced once the new one is whole
    staging.rename(output)
    shutil.rmtree(old, ignore_errors=True)
    return output


# ----- reading -----------------------------------------------------------------------------------------------------
def read_hub_config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / CONFIG_NAME).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder / CONFIG_NAME}: not readable JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{folder / CONFIG_NAME} is not a catdog model folder's config (format != {FORMAT})")
    if int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{folder / CONFIG_NAME} has format_version {config['format_version']}, newer than this catdog reads "
            f"({FORMAT_VERSION}): upgrade catdog"
        )
    for key in ("hyper_parameters", "classes"):
        if key not in config:
            raise CheckpointError(f"{folder / CONFIG_NAME} has no {key!r}")
    return config


def read_hub_weights(folder: Path) -> dict[str, torch.Tensor]:
    try:
        return _safetensors().load_file(str(folder / WEIGHTS_NAME), device="cpu")
    except (OSError, ValueError, RuntimeError) as exc:  # safetensors' own errors subclass these
        raise CheckpointError(f"{folder / WEIGHTS_NAME}: not a readable safetensors file ({exc})") from None


# ----- the Hub -----------------------------------------------------------------------------------------------------
def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def check_push(repo_id: str) -> str:
    """The token to push ``repo_id`` with, or a ConfigError saying what to do (checked before anything is written)."""
    hf = _hf()
    if _offline():
        raise ConfigError(
            f"hub.repo_id={repo_id}: HF_HUB_OFFLINE is set, so nothing can be pushed; unset it, or drop hub.repo_id "
            "to write the folder only and push it later with huggingface-cli upload"
        )
    token = hf.get_token()
    if not token:
        raise ConfigError(
            f"hub.repo_id={repo_id}: no Hugging Face token; run `huggingface-cli login` or set HF_TOKEN (a token with "
            "write access), or drop hub.repo_id to write the folder only"
        )
    try:
        hf.HfApi(token=token).whoami()
    except Exception as exc:  # noqa: BLE001 - network, auth and HTTP errors: all mean "cannot push now"
        raise ConfigError(
            f"hub.repo_id={repo_id}: the Hub cannot be reached or refused the token ({type(exc).__name__}: {exc}); "
            "check the network and the token, or drop hub.repo_id to write the folder only"
        ) from None
    return token


def push_folder(folder: Path, repo_id: str, token: str, private: bool = False) -> str:
    """Create ``repo_id`` (a model repository) if needed and upload ``folder``; returns the commit's URL."""
    hf = _hf()
    api = hf.HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model")
    return str(getattr(info, "commit_url", info))


def download(ref: str) -> Path:
    """The local folder of ``hf://NAME`` / ``hf-hub:NAME[@revision]`` through huggingface_hub's cache."""
    hf = _hf()
    name = ref.split("://", 1)[1] if "://" in ref else ref.split(":", 1)[1]
    repo_id, _, revision = name.partition("@")
    if not repo_id or repo_id.count("/") > 1:
        raise ConfigError(f"ckpt={ref}: expected hf://OWNER/NAME (or hf-hub:OWNER/NAME), optionally @REVISION")
    try:
        folder = hf.snapshot_download(repo_id, revision=revision or None, allow_patterns=[WEIGHTS_NAME, CONFIG_NAME])
    except Exception as exc:  # noqa: BLE001 - offline, missing repo, HTTP and auth errors: one message
        offline = " (HF_HUB_OFFLINE is set and it is not in the cache)" if _offline() else ""
        raise CheckpointError(
            f"ckpt={ref}: cannot download {repo_id} from the Hugging Face Hub{offline}: {type(exc).__name__}: {exc}. "
            "Check the name and the network (a private repository needs `huggingface-cli login` or HF_TOKEN), or "
            "pass the folder itself: ckpt=DIR"
        ) from None
    if not is_hub_folder(folder):
        raise CheckpointError(f"ckpt={ref}: {repo_id} has no {WEIGHTS_NAME} and {CONFIG_NAME} (not a catdog model)")
    return Path(folder)
