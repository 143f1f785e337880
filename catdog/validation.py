"""One validation entry per command: every key of a ``train.py``, ``predict.py``, ``export.py`` or ``catdog-serve``
config is checked here, before any data or checkpoint is read and anything is written, each error naming the key,
its value and what is allowed. The checks of one concern live with it (``check_data_config`` in the data module,
``check_optimizer`` in the optimizer's, ...); this module calls each of them once, and the code that later builds
from a checked config does not check it again.
"""

from __future__ import annotations

import logging
import random

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from catdog.averaging import check_averaging
from catdog.blending import check_blend
from catdog.budget import check_budget
from catdog.builders import resolve_preprocessing
from catdog.data.csv_data import check_outside_dir
from catdog.data.datamodule import check_data_config, check_policy
from catdog.data.decode import check_decoder
from catdog.data.hf_data import check_hf_input
from catdog.data.transforms import complete_mixing
from catdog.distributed import check_distributed, shared_seed
from catdog.ensemble import check_ensemble_mode
from catdog.errors import ConfigError
from catdog.exported import check_dependencies, check_export_args
from catdog.hub import check_hub_settings
from catdog.loggers import check_loggers
from catdog.lr_find import check_tune
from catdog.models.class_weights import check_class_weights
from catdog.models.distillation import check_distill
from catdog.models.module import check_training_args
from catdog.models.networks import check_blocks, check_network_args
from catdog.models.optim import plain
from catdog.models.precision import autocast_dtype, resolve_device
from catdog.models.stages import check_arch, fixed_input_size
from catdog.models.tta import check_tta, check_view_set
from catdog.models.weights import check_weights_available
from catdog.quantize import check_quantize_config
from catdog.runs.resume import check_init
from catdog.serving.settings import check_serve_settings
from catdog.submission import clip_bounds

log = logging.getLogger(__name__)


def check_train_config(cfg: DictConfig) -> None:
    """``train.py``: refuse a distributed set-up that cannot give one correct result, fill in the two values left to
    catdog that the checks depend on (``seed=null`` and null preprocessing, see :func:`resolve_seed` and
    :func:`catdog.builders.resolve_preprocessing`), then check every key."""
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    check_distributed(
        cfg,
        multirun=hydra_cfg is not None and hydra_cfg.mode == RunMode.MULTIRUN,
        run_dir_given=hydra_cfg is None or any(o.startswith("hydra.run.dir=") for o in hydra_cfg.overrides.hydra),
    )
    resolve_seed(cfg)
    check_arch(cfg.model.arch)  # the preprocessing comes from the architecture's weights
    resolve_preprocessing(cfg)
    d, m, t = cfg.data, cfg.model, cfg.trainer
    check_data_config(
        image_size=d.image_size, batch_size=d.batch_size, val_fraction=d.val_fraction, folds=d.folds, fold=d.fold,
        on_bad_image=d.on_bad_image, verify=d.verify, eval_batch_size=d.get("eval_batch_size"),
        progressive=plain(d.get("progressive")), augment=plain(d.get("augment")), crop_pct=d.crop_pct,
        interpolation=d.get("interpolation", "bilinear"), pipeline=d.get("pipeline", "workers"),
        cache=d.get("cache", False), pseudo=plain(d.get("pseudo")), exclude=d.get("exclude"),
        csv=d.get("csv"), csv_columns=plain(d.get("csv_columns")), sampler=d.get("sampler"),
        csv_outside_dir=d.get("csv_outside_dir", False), hf=d.get("hf"), hf_columns=plain(d.get("hf_columns")),
    )  # fmt: skip

    check_network_args(m.arch, m.get("head", "small"), m.get("width", 1.0), m.get("weights"), m.get("dropout", 0.5))
    check_blocks(m.arch, (m.get("finetune") or {}).get("blocks", -1), d.image_size)
    if d.get("progressive") and fixed_input_size(m.arch):
        raise ConfigError(
            f"model.arch={m.arch} takes one input size (it is built for data.image_size={d.image_size}), so it "
            "cannot train with progressive resizing: set data.progressive=null"
        )
    check_training_args(
        m.get("optimizer"), m.get("finetune"), m.get("scheduler"), m.get("scheduler_interval"), m.get("mixing")
    )
    mixing = complete_mixing(plain(m.get("mixing")))
    if (
        (plain(d.get("pseudo")) or {}).get("soft")
        and mixing["prob"] > 0
        and max(mixing["mixup_alpha"], mixing["cutmix_alpha"]) > 0
    ):
        raise ConfigError(
            "data.pseudo.soft=true cannot be combined with model.mixing (MixUp / CutMix take class indices): set "
            "data.pseudo.soft=false or turn mixing off"
        )
    check_class_weights(plain(m.get("class_weights")), d.get("sampler"))
    check_distill(plain(cfg.get("distill")))
    check_averaging(cfg)
    check_loggers(cfg)
    check_tune(cfg)
    check_budget(cfg)
    if m.get("init"):
        check_init(cfg)
    else:
        check_weights_available(m.arch, m.get("weights"))
    max_epochs = t.get("max_epochs")
    if max_epochs is not None and (not isinstance(max_epochs, int) or max_epochs == 0 or max_epochs < -1):
        raise ConfigError(f"trainer.max_epochs must be a positive integer (or -1 for no limit), got {max_epochs!r}")


def _check_prediction(cfg: DictConfig) -> None:
    """What predict.py and catdog-serve share: TTA, views, ensembling, device, precision, decoder."""
    check_tta(cfg.tta)
    check_view_set(cfg.get("tta_views", "zoom"))
    check_ensemble_mode(cfg.get("ensemble", "prob"))
    autocast_dtype(str(cfg.get("precision", "auto")), resolve_device(cfg.device))
    check_decoder(cfg.get("decoder", "auto"))


def check_predict_config(cfg: DictConfig) -> None:
    """``predict.py``: TTA, views, clipping, bad-image policy, ensembling, batch size, device, precision, decoder."""
    _check_prediction(cfg)
    clip_bounds(cfg.clip)
    check_policy(cfg.on_bad_image, "on_bad_image")
    check_blend(cfg.get("blend", "mean"))
    if not isinstance(cfg.batch_size, int) or isinstance(cfg.batch_size, bool) or cfg.batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {cfg.batch_size!r}")
    check_outside_dir(OmegaConf.select(cfg, "data.csv_outside_dir", default=False))
    check_hf_input(cfg.get("input"), plain(OmegaConf.select(cfg, "data.hf_columns")))


def check_serve_config(cfg: DictConfig) -> None:
    """``catdog-serve``: TTA, views, ensembling, calibration, device, precision, decoder and the ``serve`` block."""
    _check_prediction(cfg)
    if not isinstance(cfg.get("calibrate", True), bool):
        raise ConfigError(f"calibrate must be true or false, got {cfg.get('calibrate')!r}")
    check_serve_settings(plain(cfg.get("serve")))


def check_export_config(cfg: DictConfig) -> None:
    """``export.py``: format, opset, batch, quantization and the Hub settings, and the packages they need."""
    fmt = cfg.get("format")
    check_export_args(fmt, cfg.get("opset"), cfg.get("batch"))
    quantize = check_quantize_config(plain(cfg.get("quantize")), fmt)
    if fmt == "hub":
        if quantize is not None:
            raise ConfigError("quantize= applies to format=onnx; a format=hub folder holds the float32 weights")
        check_hub_settings(plain(cfg.get("hub")))
    # quantize=int8 runs ONNX Runtime (calibration and the gate) whether or not the float32 file is verified
    check_dependencies(fmt, bool(cfg.get("verify", True)) or quantize is not None)


def resolve_seed(cfg: DictConfig) -> int:
    """``cfg.seed``; ``seed=null`` draws one (logged, and saved with the run's configuration)."""
    seed = cfg.get("seed")
    if seed is None:
        seed = shared_seed(lambda: random.SystemRandom().randrange(2**31))  # one for all processes of a run
        with open_dict(cfg):
            cfg.seed = seed
        log.info("seed=null: drew seed %d (saved in .hydra/config.yaml; seed=%d repeats this run)", seed, seed)
    elif isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, or null for a random one; got {seed!r}")
    return seed
