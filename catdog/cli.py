"""Shared entry-point behaviour: catdog's own errors end the program with a one-line message, not a traceback."""

from __future__ import annotations

import logging
import sys

from catdog.errors import CatdogError

log = logging.getLogger("catdog")


def _catdog_cause(exc: BaseException) -> CatdogError | None:
    """The CatdogError behind ``exc`` (Hydra wraps errors raised while it instantiates objects)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, CatdogError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def run_cli(fn, cfg):
    try:
        return fn(cfg)
    except Exception as exc:
        cause = _catdog_cause(exc)
        if cause is None:
            raise
        log.error("%s", cause)  # Hydra's console handler shows it; its run log keeps it
        sys.exit(2)
