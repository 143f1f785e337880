"""Exceptions raised by catdog: each message names the file or config key at fault."""

import os
from collections.abc import Mapping


class CatdogError(Exception):
    """Base class for every error catdog raises on purpose."""


class ConfigError(CatdogError, ValueError):
    """A configuration value is invalid; the message names the key and the allowed values."""


class DatasetError(CatdogError):
    """A dataset folder is missing, empty or laid out in a way catdog cannot read."""


def check_known_keys(value, known, key: str) -> None:
    """Refuse a config mapping ``value`` (None: nothing set) that is not a mapping or holds keys outside ``known``,
    naming ``key`` and the known keys (in ``known``'s order)."""
    if value is None:
        return
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key} must be a mapping with keys {list(known)}, got {value!r}")
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ConfigError(f"{key} has unknown key(s) {unknown}; known: {list(known)}")


def printable_path(path) -> str:
    """A path for messages and logs: undecodable bytes in file names shown as escapes, never an encoding error."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


class BadImageError(CatdogError):
    """An image file could not be decoded; ``path`` is the path as given, the message shows it printably."""

    def __init__(self, path, reason: str):
        self.path = path if isinstance(path, str) else os.fsdecode(path)
        self.reason = reason
        super().__init__(f"{printable_path(self.path)}: {reason}")


class CheckpointError(CatdogError):
    """A checkpoint or weights file is missing, unsafe or does not match what was asked for."""


class WeightsUnavailableError(CheckpointError):
    """Pretrained weights could not be downloaded and are not cached."""
