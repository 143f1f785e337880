"""Exceptions raised by catdog: each message names the file or config key at fault."""


class CatdogError(Exception):
    """Base class for every error catdog raises on purpose."""


class ConfigError(CatdogError, ValueError):
    """A configuration value is invalid; the message names the key and the allowed values."""


class DatasetError(CatdogError):
    """A dataset folder is missing, empty or laid out in a way catdog cannot read."""


class BadImageError(CatdogError):
    """An image file could not be decoded."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class CheckpointError(CatdogError):
    """A checkpoint or weights file is missing, unsafe or does not match what was asked for."""


class WeightsUnavailableError(CheckpointError):
    """Pretrained weights could not be downloaded and are not cached."""
