"""The ``serve`` block of conf/serve.yaml: its keys, their checks and the package it needs."""

from __future__ import annotations

import importlib.util
from typing import Any

from catdog.errors import ConfigError, check_known_keys

INSTALL_HINT = 'pip install -e ".[serve]"'
#: The hosts LitServe binds: loopback by default; 0.0.0.0 / :: expose the server to the network.
HOSTS = ("127.0.0.1", "0.0.0.0", "::")
KEYS = (
    "host", "port", "max_batch_size", "batch_timeout", "workers_per_device", "devices", "timeout", "max_bytes",
    "max_pixels", "gradcam", "threads", "log_level",
)  # fmt: skip
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def _int(value: Any, key: str, lo: int, what: str, hi: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < lo or (hi is not None and value > hi):
        bound = f"from {lo} to {hi}" if hi is not None else f"at least {lo}"
        raise ConfigError(f"{key} must be an integer {bound} ({what}), got {value!r}")
    return value


def _number(value: Any, key: str, what: str, positive: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and (value > 0 if positive else value >= 0)
    if not ok:
        sign = "positive" if positive else "non-negative"
        raise ConfigError(f"{key} must be a {sign} number ({what}), got {value!r}")
    return float(value)


def check_serve_settings(serve: Any) -> dict[str, Any]:
    """Check the ``serve`` block (see conf/serve.yaml) and that LitServe is installed."""
    check_known_keys(serve, KEYS, "serve")
    s = dict(serve or {})
    if s.get("host", "127.0.0.1") not in HOSTS:
        raise ConfigError(f"serve.host must be one of {list(HOSTS)} (LitServe binds these), got {s.get('host')!r}")
    _int(s.get("port", 8000), "serve.port", 1024, "the TCP port", 65535)
    _int(s.get("max_batch_size", 16), "serve.max_batch_size", 1, "requests predicted together; 1 = no batching")
    _number(s.get("batch_timeout", 0.005), "serve.batch_timeout", "seconds a batch waits to fill")
    _int(s.get("workers_per_device", 1), "serve.workers_per_device", 1, "model copies per device")
    devices = s.get("devices", "auto")
    if devices != "auto":
        _int(devices, "serve.devices", 1, "GPUs to serve on, or auto")
    _number(s.get("timeout", 30), "serve.timeout", "seconds a request may wait", positive=True)
    _int(s.get("max_bytes", 20_000_000), "serve.max_bytes", 1, "the largest upload accepted")
    _int(s.get("max_pixels", 40_000_000), "serve.max_pixels", 1, "the largest image accepted, in pixels")
    if not isinstance(s.get("gradcam", False), bool):
        raise ConfigError(f"serve.gradcam must be true or false, got {s.get('gradcam')!r}")
    if s.get("threads") is not None:
        _int(s["threads"], "serve.threads", 1, "torch threads per worker; null = the CPUs shared by the workers")
    if s.get("log_level", "warning") not in LOG_LEVELS:
        raise ConfigError(f"serve.log_level must be one of {list(LOG_LEVELS)}, got {s.get('log_level')!r}")
    missing = [name for name in ("litserve", "fastapi") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"catdog-serve needs {' and '.join(missing)}, not installed: {INSTALL_HINT}")
    return s
