"""The resolvers conf/hydra/default.yaml names folders with: ``${catdog.run_stamp:}`` (a new run or sweep folder) and
``${catdog.sweep_subdir:...}`` (a multirun job's folder)."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence

from omegaconf import OmegaConf

from catdog.runs.lock import run_stamp

# A command-line override that Hydra's basic sweeper expands into several jobs: a top-level comma list or a sweep
# function (a comma inside brackets or quotes, as in key=[1,2], is one value).
_SWEEP_FUNCTION = re.compile(r"^(range|choice|interval|glob)\(")


def _is_sweep(value: str) -> bool:
    if _SWEEP_FUNCTION.match(value):
        return True
    depth, quote = 0, None
    for ch in value:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            return True
    return False


def swept_keys(argv: Sequence[str]) -> set[str]:
    """The keys that command-line overrides ``argv`` sweep over (``key=a,b``, ``key=range(0,3)``, ...)."""
    keys = set()
    for arg in argv:
        if "=" not in arg or arg.startswith("-"):
            continue
        key, value = arg.split("=", 1)
        if _is_sweep(value):
            keys.add(key.lstrip("+~"))
    return keys


def sweep_subdir(job_num: int, fold: int | None, argv: Sequence[str] | None = None) -> str:
    """A multirun job's folder: ``fold_<i>`` when the sweep is over ``data.fold`` alone (the folds then assemble into
    one ensemble in the sweep folder), else the job number, which no other job shares (``<n>_fold_<i>`` when the
    job also has a fold)."""
    if fold is None:
        return str(job_num)
    if swept_keys(sys.argv[1:] if argv is None else argv) == {"data.fold"}:
        return f"fold_{fold}"
    return f"{job_num}_fold_{fold}"


def register_resolvers() -> None:
    """``${catdog.sweep_subdir:...}`` for ``hydra.sweep.subdir`` and ``${catdog.run_stamp:}`` for the run and sweep
    folder names (conf/hydra/default.yaml; cached per config, as Hydra's ``${now:...}`` is)."""
    if not OmegaConf.has_resolver("catdog.sweep_subdir"):
        OmegaConf.register_new_resolver("catdog.sweep_subdir", sweep_subdir)
    if not OmegaConf.has_resolver("catdog.run_stamp"):
        OmegaConf.register_new_resolver("catdog.run_stamp", run_stamp, use_cache=True)
