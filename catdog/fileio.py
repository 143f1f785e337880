"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of one; a write that must not
replace an existing file (``overwrite=False``) checks and claims the name in one step, so of two processes writing
the same new file exactly one succeeds."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from catdog.errors import CatdogError


class OutputExistsError(CatdogError, FileExistsError):
    """Refusing to overwrite an existing output file."""


class OutputWriteError(CatdogError, OSError):
    """Writing an output failed (disk full, no permission); the previous file, if any, is untouched."""


def output_exists(path: Path, key: str = "output") -> OutputExistsError:
    return OutputExistsError(f"{path} already exists; choose another {key}= or pass overwrite=true")


def check_writable(path: str | os.PathLike, overwrite: bool, key: str = "output") -> Path:
    """Fail early (before any work) on an output that may not be written. The write itself checks again, in the same
    step as it creates the file (:func:`atomic_open` with ``overwrite=False``): another process may create the file
    meanwhile."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise output_exists(path, key)
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


def link_new(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Hard-link ``src`` (a file only this process knows) as ``dst``, raising as :func:`os.link` does unless the link
    was made: on NFS a link whose reply is lost is sent again and fails (the name exists, or an I/O error) though the
    server made it. ``src`` then has two links, the check ``open(2)`` gives for NFS-safe lock files."""
    try:
        os.link(src, dst)
    except OSError:
        try:
            linked = os.stat(src).st_nlink == 2
        except OSError:
            linked = False
        if not linked:
            raise


# What os.link raises on a file system without hard links (some network and FUSE file systems, FAT).
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV, errno.EMLINK}


def _publish_new(tmp: str, path: Path, key: str) -> None:
    """Give the finished file ``tmp`` the name ``path`` only if nothing has it: a hard link fails on an existing name,
    so the check and the write are one step. Without hard links, the name is claimed with ``O_EXCL`` (an empty file
    for an instant) and the finished file is then moved onto it."""
    try:
        link_new(tmp, path)
    except FileExistsError:
        raise output_exists(path, key) from None
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            raise output_exists(path, key) from None
        os.replace(tmp, path)
    else:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike, mode: str = "w", *, overwrite: bool = True, key: str = "output", **kwargs
) -> Iterator:
    """Write to a temporary file beside ``path``, fsync it, then rename it over ``path``. ``overwrite=False``: an
    existing ``path`` (even one created by another process while this one wrote) is left alone and
    :class:`OutputExistsError` (naming ``key=``) is raised."""
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
        if overwrite:
            os.replace(tmp, path)
        else:
            _publish_new(tmp, path, key)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, CatdogError):
            kept = "the previous file is kept" if path.exists() else "nothing was written"
            raise OutputWriteError(f"could not write {path}: {exc.strerror or exc}; {kept}") from exc
        raise


def atomic_write_text(path: str | os.PathLike, text: str, *, overwrite: bool = True, key: str = "output") -> None:
    """UTF-8; file names that are not valid UTF-8 (kept by Python as surrogates) are written back as their bytes.
    ``overwrite``, ``key``: as for :func:`atomic_open`."""
    opts = {"encoding": "utf-8", "errors": "surrogateescape", "newline": ""}
    with atomic_open(path, "w", overwrite=overwrite, key=key, **opts) as f:
        f.write(text)
