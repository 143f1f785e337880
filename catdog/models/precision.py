"""Which numeric precision to train and predict in, from what the device does natively.

One rule for ``train.py trainer.precision=null`` and ``predict.py precision=auto``:

- a CUDA GPU with native bf16 (Ampere and newer): bf16 mixed precision;
- any other CUDA GPU (T4, V100, P100: they only *emulate* bf16, slowly): fp16 mixed precision;
- a CPU with AMX tiles (Intel Xeon 4th generation and newer, where the OS enables them): bf16 mixed precision
  (2.7-3x faster convolutions than fp32, docs/benchmarks.md);
- any other CPU: fp32. That includes CPUs with AVX512-BF16 but no AMX: there oneDNN's bf16 convolutions measured
  slower than fp32 (docs/results.md), so bf16 is opt-in (``trainer.precision=bf16-mixed``).
"""

from __future__ import annotations

import logging

import torch

from catdog.errors import ConfigError

log = logging.getLogger(__name__)


def cuda_native_bf16() -> bool:
    """True on GPUs that compute in bf16 natively; False where ``torch.cuda.is_bf16_supported()`` would only say
    True because bf16 can be emulated (T4, V100, P100)."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch < 2.4 has no including_emulation and answers for native support only
        return bool(torch.cuda.is_bf16_supported())


def _cpu_check(name: str) -> bool:
    check = getattr(getattr(torch, "cpu", None), name, None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:  # pragma: no cover - a build without the CPU capability checks
        return False


def cpu_fast_bf16() -> bool:
    """True on x86 CPUs whose AMX tiles are usable: there bf16 convolutions run several times faster than fp32."""
    return _cpu_check("_is_amx_tile_supported")


def cpu_bf16_instructions() -> str:
    """What the CPU offers for bf16, for logs: ``amx``, ``avx512_bf16`` or ``none``."""
    if cpu_fast_bf16():
        return "amx"
    return "avx512_bf16" if _cpu_check("_is_avx512_bf16_supported") else "none"


def uses_cuda(accelerator: str = "auto") -> bool:
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def auto_precision(accelerator: str = "auto") -> str:
    """Lightning's precision string chosen by the rule in this module's docstring."""
    if uses_cuda(accelerator):
        return "bf16-mixed" if cuda_native_bf16() else "16-mixed"
    if accelerator in ("auto", "cpu") and cpu_fast_bf16():
        return "bf16-mixed"
    return "32-true"


def resolve_precision(precision: str | int | None, accelerator: str = "auto") -> str:
    """``trainer.precision``: an explicit value is kept; ``None`` (or ``auto``) is chosen by :func:`auto_precision`."""
    if precision is None or precision == "auto":
        return auto_precision(accelerator)
    return str(precision)


AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16, "32-true": None}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device} but no CUDA GPU is available")
    return torch.device(device)


PRECISIONS = ("auto", "32", "bf16", "16")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for prediction, or None for fp32.

    ``auto`` follows :mod:`catdog.models.precision`: bf16 on GPUs and CPUs that compute in bf16 natively, fp16 on CUDA
    GPUs that only emulate bf16, fp32 on other CPUs.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return AUTOCAST[auto_precision("cuda" if device.type == "cuda" else "cpu")]
    return {"32": None, "16": torch.float16, "bf16": torch.bfloat16}[precision]
