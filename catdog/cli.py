"""Shared entry-point behaviour: catdog's own errors end the program with a one-line message, not a traceback."""

from __future__ import annotations

import logging
import sys

from catdog.errors import CatdogError

log = logging.getLogger("catdog")


def run_cli(fn, cfg):
    try:
        return fn(cfg)
    except CatdogError as exc:
        log.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
