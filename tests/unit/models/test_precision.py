"""catdog/models/precision.py: the automatic precision rule, on every kind of device (CPU flags and CUDA answers
mocked)."""

import pytest
import torch

from catdog.models import precision
from catdog.models.precision import autocast_dtype


def _cpu(monkeypatch, amx: bool = False, avx512_bf16: bool = False) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)


def _cuda(monkeypatch, available: bool, native: bool = False, emulated: bool = True) -> None:
    """``torch.cuda.is_bf16_supported`` answers True by default wherever bf16 can be emulated (T4, V100, P100) and
    only tells native support apart with ``including_emulation=False``."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        return native or (including_emulation and emulated)

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "expected"),
    # AVX512-BF16 without AMX: bf16 convolutions measured slower than fp32 there, so fp32.
    [(True, True, "bf16-mixed"), (True, False, "bf16-mixed"), (False, True, "32-true"), (False, False, "32-true")],
)
def test_cpu_precision_follows_amx(monkeypatch, amx, avx512_bf16, expected):
    _cuda(monkeypatch, available=False)
    _cpu(monkeypatch, amx=amx, avx512_bf16=avx512_bf16)
    assert precision.resolve_precision(None, "auto") == expected
    assert precision.resolve_precision(None, "cpu") == expected
    assert precision.resolve_precision("auto", "cpu") == expected


@pytest.mark.parametrize(
    ("native", "expected"),
    [(True, "bf16-mixed"), (False, "16-mixed")],  # A100/H100 vs T4/V100/P100 (emulated bf16 only)
)
def test_cuda_precision_ignores_emulated_bf16(monkeypatch, native, expected):
    _cpu(monkeypatch, amx=True)
    _cuda(monkeypatch, available=True, native=native, emulated=True)
    assert torch.cuda.is_bf16_supported()  # what a plain call says on both kinds of GPU
    assert precision.resolve_precision(None, "auto") == expected
    assert precision.resolve_precision(None, "gpu") == expected
    # The CPU rule still applies when the CPU is asked for on a GPU machine.
    assert precision.resolve_precision(None, "cpu") == "bf16-mixed"


def test_explicit_precision_is_kept(monkeypatch):
    _cpu(monkeypatch, amx=True)
    assert precision.resolve_precision("32-true", "cpu") == "32-true"
    assert precision.resolve_precision("16-mixed", "cpu") == "16-mixed"


@pytest.mark.parametrize(("amx", "expected"), [(True, torch.bfloat16), (False, None)])
def test_predict_auto_precision_on_cpu(monkeypatch, amx, expected):
    _cuda(monkeypatch, available=False)
    _cpu(monkeypatch, amx=amx, avx512_bf16=True)
    assert autocast_dtype("auto", torch.device("cpu")) is expected
    assert autocast_dtype("32", torch.device("cpu")) is None
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, torch.float16)])
def test_predict_auto_precision_on_cuda(monkeypatch, native, expected):
    _cuda(monkeypatch, available=True, native=native)
    assert autocast_dtype("auto", torch.device("cuda")) is expected
