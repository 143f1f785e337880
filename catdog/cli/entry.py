"""Shared entry-point behaviour: the run folder is held by one process (catdog.runs.lock) before anything is written
there; catdog's own errors (and a missing mandatory key) end the program with a one-line message, not a traceback;
console lines that come from how catdog drives Lightning, which a user cannot act on, are left out (real warnings
stay)."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf.errors import MissingMandatoryValue

from catdog.distributed import adopt_submitit_environment
from catdog.errors import CatdogError
from catdog.runs.layout import save_config_record
from catdog.runs.lock import hold_folder

log = logging.getLogger("catdog")

#: The project's Hydra configs (conf/ beside the package, in a source checkout or an editable install).
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def _catdog_cause(exc: BaseException) -> CatdogError | None:
    """The CatdogError behind ``exc`` (Hydra wraps errors raised while it instantiates objects)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, CatdogError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


# Warnings that catdog's own use of Lightning triggers: a short demo has fewer batches than the logging interval, a
# resumed run's checkpoint folder is not empty, a run continued from another run's checkpoint has a new folder, the
# bare Trainer that scores the best checkpoint has none of the callbacks that wrote it, and Lightning's own use of a
# deprecated torch API.
NOISE_WARNINGS = (
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    r"Checkpoint directory .* exists and is not empty",
    r"The dirpath has changed from",
    r"Be aware that when using `ckpt_path`, callbacks used to create the checkpoint",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"torch.distributed.nn.functional.all_gather is deprecated",
)


class _NoAdvert(logging.Filter):
    """Lightning's "Tip: ... litlogger" line, printed once per Trainer (so once per fold and per sweep job), and its
    note that catdog's own plain model summary (in logs) replaces its default one."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "litlogger" not in message and "Skipping setting a default `ModelSummary`" not in message


def quiet_console() -> None:
    for pattern in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoAdvert) for f in logger.filters):
            logger.addFilter(_NoAdvert())
    logging.getLogger("alembic").setLevel(logging.WARNING)  # optuna's storage migrations, with the optuna extra


def _missing_message(exc: MissingMandatoryValue) -> str:
    key = exc.full_key or str(exc)
    conf = f"conf/{HydraConfig.get().job.config_name}.yaml" if HydraConfig.initialized() else "the config"
    return f"{key} is required: add {key}=... to the command (see {conf})"


def run_cli(fn, cfg, record: bool = True):
    """Run ``fn(cfg)`` holding the lock of Hydra's output folder: a process aimed at a folder another one uses stops
    with a one-line message and writes nothing there. ``record``: write the folder's ``.hydra/`` record once it is
    held (``train`` writes its own, once the run is accepted)."""
    quiet_console()
    adopt_submitit_environment()  # a task of a multi-task submitit job learns its rank before taking the lock
    folder = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None
    try:
        with hold_folder(folder):
            if record and folder is not None:
                save_config_record(cfg, folder)
            return fn(cfg)
    except Exception as exc:
        cause = _catdog_cause(exc)
        if isinstance(exc, MissingMandatoryValue):
            message = _missing_message(exc)
        elif cause is not None:
            message = str(cause)
        else:
            raise
        log.error("%s", message)  # Hydra's console handler shows it; its run log keeps it
        sys.exit(2)
