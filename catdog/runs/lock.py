"""One process per run folder: a lock file (``.lock``) that a run, prediction, export or sweep takes in its folder
before writing anything there, and removes when it ends.

- Taking it is one step: the lock file is written beside its name and hard-linked to it, which fails if the name
  exists (``O_EXCL`` creation where the file system has no hard links). A link that reports a failure although it
  was made (NFS, when the server's reply is lost) is told by the written file's link count, 2 once linked. The lock
  records the process (pid, PID namespace, host, boot, process start time, the command).
- A process that finds the folder locked by a live process stops with :class:`FolderInUseError`, naming the folder
  and that process, and writes nothing there.
- A lock left by a process that no longer runs (killed with SIGKILL, a crash, a reboot) on this host is stale: the
  next process takes it over and says so. A pid reused by another program is told apart by the process start time.
  A lock written on another host, or on this one from another PID namespace (another container sharing the host's
  name and kernel, where its pid means nothing here), cannot be checked from here: the message says which file to
  delete once that run is known to have stopped. A lock that records no PID namespace is checked by its pid.
- The lock is re-entrant within a process (the CLI and :func:`catdog.training.train` both take it for the same
  folder). Processes of rank > 0 of a distributed run (:func:`catdog.distributed.secondary_rank`) work
  in the folder that rank 0 holds and take no lock.
- :func:`owns` tells whether this process holds a folder: the run log (:mod:`catdog.cli.run_log`) opens
  ``train.log`` / ``predict.log`` only then, so a refused process leaves no line there.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import logging
import os
import secrets
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from catdog.distributed import secondary_rank
from catdog.errors import CatdogError
from catdog.fileio import OutputWriteError, link_new
from catdog.runs.layout import LOCK_NAME

log = logging.getLogger(__name__)

# A lock file without a readable record is taken as being written (by a file system without hard links, where the
# record follows the creation) for this long, then as stale.
UNREADABLE_GRACE_S = 10.0


class FolderInUseError(CatdogError):
    """Another live process holds the run folder's lock."""


_stamps: set[str] = set()  # the names this process has given out


def run_stamp() -> str:
    """The name of a new run or sweep folder: local time to the millisecond and six random hex digits, e.g.
    ``2026-11-25_14-47-12-483_5e0c2a``. Names sort by start time; one process never gives out a name twice, two
    processes started in the same millisecond (on one host or several) get different names, and the lock refuses the
    one-in-16-million collision."""
    while True:
        now = datetime.now()
        stamp = f"{now:%Y-%m-%d_%H-%M-%S}-{now.microsecond // 1000:03d}_{secrets.token_hex(3)}"
        if stamp not in _stamps:
            _stamps.add(stamp)
            return stamp


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _pid_namespace() -> str | None:
    """This process's PID namespace, e.g. ``pid:[4026531836]`` (Linux); None where it cannot be read."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except (OSError, AttributeError):
        return None


def _boot_time() -> float | None:
    """When this machine booted (seconds since the epoch), from /proc/stat (Linux)."""
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of process ``pid`` from /proc (Linux), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], fields[19]


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _command() -> str:
    args = [Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python", *sys.argv[1:]]
    return _shorten(" ".join(shlex.quote(a) for a in args), 2000)


def _record(token: str) -> dict:
    stat = _proc_stat(os.getpid())
    return {
        "pid": os.getpid(),
        "pid_ns": _pid_namespace(),
        "host": socket.gethostname(),
        "boot_id": _boot_id(),
        "process_start": stat[1] if stat else None,
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "time": time.time(),
        "command": _command(),
        "token": token,
    }


def _read(path: Path) -> dict | None:
    """The lock's record; None when there is no lock file, {} when it cannot be read as one."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        record = json.loads(text)
    except ValueError:
        return {}
    return record if isinstance(record, dict) and isinstance(record.get("pid"), int) else {}


def _other_namespace(record: dict) -> bool:
    """Whether ``record`` was written from a PID namespace other than this process's (another container): its pid
    cannot be looked up here. A record without one (written before catdog recorded it) is taken as from this one."""
    written = record.get("pid_ns")
    return bool(written) and written != _pid_namespace()


def _running(record: dict) -> bool | None:
    """Whether the process that wrote ``record`` still runs; None when that cannot be checked from here (another
    host, another PID namespace, or Windows)."""
    if record.get("host") != socket.gethostname() or os.name == "nt":
        return None
    boot = _boot_id()
    if record.get("boot_id") and boot and record["boot_id"] != boot:
        # Written before this machine booted (its process is gone), or by another machine of the same name.
        booted, written = _boot_time(), record.get("time")
        return False if booted is not None and isinstance(written, (int, float)) and written < booted else None
    if _other_namespace(record):
        return None
    pid = record["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process
    except OSError:
        return False
    stat = _proc_stat(pid)
    if stat is None:
        return True
    # a killed process not yet reaped by its parent, or the pid now belongs to another process
    return stat[0] not in ("Z", "X") and record.get("process_start") in (None, stat[1])


def _holder(record: dict) -> str:
    command = _shorten(str(record.get("command")), 160)
    return f"pid {record['pid']} on host {record.get('host')}, running since {record.get('since')}: {command}"


def _create(path: Path, text: str, token: str) -> bool:
    """Create the lock file ``path`` holding ``text`` unless it exists, in one step; whether this call created it."""
    tmp = path.with_name(f"{path.name}.{token}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            link_new(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links here: claim the name, then write the record into it
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            return True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _remove_stale(path: Path, stale: dict, token: str) -> bool:
    """Remove the lock file ``path`` if it still holds the record ``stale``: it is moved aside first (one step), and
    put back if it turns out to be a lock another process took meanwhile."""
    aside = path.with_name(f"{path.name}.{token}.stale")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    if _read(aside) == stale:
        os.unlink(aside)
        return True
    with contextlib.suppress(OSError):
        link_new(aside, path)
    with contextlib.suppress(OSError):
        os.unlink(aside)
    return False


@dataclass
class _Held:
    path: Path
    token: str
    pid: int
    made_folder: bool
    count: int = 0


_held: dict[str, _Held] = {}
_owned: set[str] = set()  # folders this process has held (its run log may be written there)


def _key(folder: str | os.PathLike) -> str:
    return os.path.realpath(folder)


def _acquire(folder: Path) -> _Held:
    try:
        return _try_acquire(folder)
    except OSError as exc:  # no permission, read-only or full disk: say which folder
        if isinstance(exc, CatdogError):
            raise
        raise OutputWriteError(f"cannot lock {folder} (its {LOCK_NAME} file): {exc.strerror or exc}") from exc


def _try_acquire(folder: Path) -> _Held:
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    token = secrets.token_hex(8)
    text = json.dumps(_record(token)) + "\n"
    for _ in range(20):
        record = _read(path)
        if record is None:
            if _create(path, text, token):
                return _Held(path, token, os.getpid(), made)
            continue
        if not record:
            try:
                age = time.time() - path.stat().st_mtime
            except FileNotFoundError:  # released meanwhile: try again
                continue
            if age < UNREADABLE_GRACE_S:
                raise FolderInUseError(f"{folder} is being claimed by another process (its lock file {path} is new)")
            if _remove_stale(path, record, token):
                log.warning("%s: took over its lock file %s, which held no readable record", folder, path)
            continue
        running = _running(record)
        if running:
            raise FolderInUseError(
                f"{folder} is in use by another process ({_holder(record)}); wait for it to finish or choose "
                "another folder"
            )
        if running is None:
            here = socket.gethostname()
            if record.get("host") != here:
                where = "a process on another host"
            elif _other_namespace(record):
                where = f"a process in another PID namespace ({record['pid_ns']}: another container on this host)"
                here = f"this PID namespace ({_pid_namespace()})"
            else:
                where = "a process"
            raise FolderInUseError(
                f"{folder} is locked by {where} ({_holder(record)}), which cannot be checked from {here}; wait for "
                f"it to finish, or once it has stopped, delete {path}"
            )
        if _remove_stale(path, record, token):
            log.warning(
                "%s: took over the lock left by pid %s (%s, since %s), which is no longer running",
                folder, record["pid"], record.get("host"), record.get("since"),
            )  # fmt: skip
    raise FolderInUseError(f"{folder}: could not take its lock {path} (other processes kept taking it)")


def _release(held: _Held) -> None:
    record = _read(held.path)
    if record and record.get("token") == held.token:
        with contextlib.suppress(OSError):
            os.unlink(held.path)
    if held.made_folder:
        with contextlib.suppress(OSError):
            held.path.parent.rmdir()  # only if empty: a folder made for a run that wrote nothing


def claim(folder: str | os.PathLike) -> None:
    """Take (or, held already by this process, take again) the lock of ``folder``, creating the folder; raises
    :class:`FolderInUseError` when another process holds it. Each claim is undone by one :func:`release`."""
    if secondary_rank():
        return
    key = _key(folder)
    held = _held.get(key)
    if held is None:
        held = _held[key] = _acquire(Path(folder))
        _owned.add(key)
    held.count += 1


def release(folder: str | os.PathLike) -> None:
    """Undo one :func:`claim`; the last removes the lock file."""
    key = _key(folder)
    held = _held.get(key)
    if held is None:
        return
    held.count -= 1
    if held.count <= 0:
        del _held[key]
        _release(held)


@contextlib.contextmanager
def hold_folder(folder: str | os.PathLike | None) -> Iterator[None]:
    """Hold the lock of ``folder`` (see :func:`claim`) for the duration of the block; None: no folder, no lock."""
    if folder is None:
        yield
        return
    claim(folder)
    try:
        yield
    finally:
        release(folder)


def holding_output_folder(fn):
    """Decorate ``fn(cfg, ...)`` to run holding the lock of ``cfg.paths.output_dir``."""

    @functools.wraps(fn)
    def held(cfg, *args, **kwargs):
        with hold_folder(cfg.paths.output_dir):
            return fn(cfg, *args, **kwargs)

    return held


def owns(folder: str | os.PathLike) -> bool:
    """Whether this process holds (or held) the lock of ``folder``, or works for the rank 0 that does."""
    return secondary_rank() or _key(folder) in _owned


@atexit.register
def _release_all() -> None:
    """Locks still held when the interpreter exits (an error that skipped the normal release): removed, by the
    process that took them only (not by a forked child)."""
    for key, held in list(_held.items()):
        if held.pid == os.getpid():
            del _held[key]
            _release(held)
