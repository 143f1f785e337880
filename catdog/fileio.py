"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from catdog.errors import CatdogError


class OutputExistsError(CatdogError, FileExistsError):
    """Refusing to overwrite an existing output file."""


class OutputWriteError(CatdogError, OSError):
    """Writing an output failed (disk full, no permission); the previous file, if any, is untouched."""


def check_writable(path: str | os.PathLike, overwrite: bool, key: str = "output") -> Path:
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; choose another {key}= or pass overwrite=true")
    if path.is_dir():
        raise OutputExistsError(f"{key}={path} is a folder, not a file")
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def new_file_mode(path: Path) -> int:
    """The mode a plain open() would give ``path``: its current mode if it exists, else 0666 less the umask."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator:
    """Write to a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file private (0600); give it the mode a plain open() would: the replaced file's, or the
        # umask's.
        os.chmod(fd, new_file_mode(path))
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, CatdogError):
            kept = "the previous file is kept" if path.exists() else "nothing was written"
            raise OutputWriteError(f"could not write {path}: {exc.strerror or exc}; {kept}") from exc
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """UTF-8; file names that are not valid UTF-8 (kept by Python as surrogates) are written back as their bytes."""
    with atomic_open(path, "w", encoding="utf-8", errors="surrogateescape", newline="") as f:
        f.write(text)
