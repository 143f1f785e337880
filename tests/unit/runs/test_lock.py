"""catdog/runs/lock.py: run folder names, and the lock of a run folder (held, re-entered, taken over, refused)."""

import errno
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from catdog.fileio import OutputWriteError
from catdog.runs import lock as run_lock
from catdog.runs.layout import LOCK_NAME
from catdog.runs.lock import FolderInUseError, hold_folder, run_stamp

STAMP = re.compile(r"^\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d-\d{3}_[0-9a-f]{6}$")


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under ``folder``."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def _lock_of(folder: Path, pid: int, **fields) -> Path:
    """Write ``folder``'s lock file as process ``pid`` of this host would (``fields`` replace its record's)."""
    folder.mkdir(parents=True, exist_ok=True)
    stat = run_lock._proc_stat(pid)
    record = {
        "pid": pid, "pid_ns": run_lock._pid_namespace(), "host": socket.gethostname(), "boot_id": run_lock._boot_id(),
        "process_start": stat[1] if stat else None, "since": "2026-01-01 12:00:00", "time": time.time(),
        "command": "train.py seed=1", "token": "0123456789abcdef", **fields,
    }  # fmt: skip
    path = folder / LOCK_NAME
    path.write_text(json.dumps(record) + "\n")
    return path


def test_folder_names_sort_by_start_time_and_never_repeat():
    names = [run_stamp() for _ in range(3000)]
    assert all(STAMP.match(n) for n in names), names[0]
    assert len(set(names)) == len(names)
    times = [n.rsplit("_", 1)[0] for n in names]
    assert times == sorted(times)
    assert "2026-11-25_14-47-12" < "2026-11-25_14-47-12-001_000000" < "2026-11-25_14-47-13"  # with the old names


def test_lock_is_reentrant_in_a_process_and_removed_by_the_last_release(tmp_path):
    folder = tmp_path / "run"
    with hold_folder(folder):
        record = json.loads((folder / LOCK_NAME).read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        with hold_folder(folder):
            pass
        assert (folder / LOCK_NAME).is_file()
    assert not folder.exists()  # made for the lock, left empty: removed with it


def test_lock_of_a_dead_process_or_a_reused_pid_is_taken_over(tmp_path, caplog, other_process):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    cases = {
        "dead": {"pid": dead.pid},
        # a live pid whose start time is not the one the lock recorded: the pid now belongs to another process
        "reused": {"pid": other_process.pid, "process_start": "1"},
        # written before this machine booted
        "rebooted": {"pid": other_process.pid, "boot_id": "another boot", "time": 0.0},
    }
    for name, fields in cases.items():
        folder = tmp_path / name
        _lock_of(folder, **fields)
        with caplog.at_level(logging.WARNING, logger="catdog.runs.lock"), hold_folder(folder):
            assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
        assert f"took over the lock left by pid {fields['pid']}" in caplog.text
        assert not (folder / LOCK_NAME).exists()


def test_lock_from_another_host_is_refused_naming_the_file_to_delete(tmp_path, other_process):
    path = _lock_of(tmp_path / "run", other_process.pid, host="gpu-node-7")
    message = rf"locked by a process on another host .*gpu-node-7.*delete {path}$"
    with pytest.raises(FolderInUseError, match=message), hold_folder(tmp_path / "run"):
        pass
    assert path.is_file()
    # Another machine of the same name (another boot, since this one booted) cannot be checked either.
    path = _lock_of(tmp_path / "twin", other_process.pid, boot_id="another machine")
    message = rf"locked by a process \(pid .* delete {path}$"
    with pytest.raises(FolderInUseError, match=message), hold_folder(path.parent):
        pass


def test_lock_from_another_pid_namespace_is_refused_naming_the_file_to_delete(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    # Another container on this host and kernel: its pid (not running here) says nothing about that process.
    path = _lock_of(tmp_path / "container", dead.pid, pid_ns="pid:[4026532999]")
    before = path.read_bytes()
    message = (
        rf"locked by a process in another PID namespace \(pid:\[4026532999\]: another container on this host\) "
        rf"\(pid {dead.pid} .*cannot be checked from this PID namespace .*delete {path}$"
    )
    with pytest.raises(FolderInUseError, match=message), hold_folder(path.parent):
        pass
    assert path.read_bytes() == before
    # This process's own namespace, or a record written before namespaces were recorded: checked by its pid.
    own = _lock_of(tmp_path / "own", dead.pid)
    old = _lock_of(tmp_path / "old", dead.pid)
    record = json.loads(old.read_text())
    del record["pid_ns"]
    old.write_text(json.dumps(record) + "\n")
    for path in (own, old):
        with caplog.at_level(logging.WARNING, logger="catdog.runs.lock"), hold_folder(path.parent):
            record = json.loads(path.read_text())
            assert record["pid"] == os.getpid() and record["pid_ns"] == run_lock._pid_namespace()
        assert not path.exists()
    assert caplog.text.count(f"took over the lock left by pid {dead.pid}") == 2


@pytest.mark.parametrize("error", [FileExistsError(errno.EEXIST, "File exists"), OSError(errno.EIO, "I/O error")])
def test_lock_linked_although_the_link_failed_is_taken(tmp_path, monkeypatch, error):
    """On NFS a link whose reply was lost fails when sent again, though the server made it."""
    link = os.link

    def reply_lost(src, dst):
        link(src, dst)
        raise error

    folder = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(run_lock.os, "link", reply_lost)
        run_lock.claim(folder)
    try:
        record = json.loads((folder / LOCK_NAME).read_text())
        assert record["pid"] == os.getpid() and record["token"] == run_lock._held[run_lock._key(folder)].token
        assert sorted(p.name for p in folder.iterdir()) == [LOCK_NAME]  # no temp file left
    finally:
        run_lock.release(folder)
    assert not folder.exists()


def test_failed_link_with_one_link_is_a_lock_taken_by_another_process(tmp_path, monkeypatch, other_process):
    folder = tmp_path / "run"
    folder.mkdir()

    def taken_meanwhile(src, dst):
        _lock_of(folder, other_process.pid)
        raise FileExistsError(errno.EEXIST, "File exists")

    with monkeypatch.context() as patch:
        patch.setattr(run_lock.os, "link", taken_meanwhile)
        with pytest.raises(FolderInUseError, match=rf"in use by another process \(pid {other_process.pid} "):
            run_lock.claim(folder)
    assert json.loads((folder / LOCK_NAME).read_text())["pid"] == other_process.pid
    assert sorted(p.name for p in folder.iterdir()) == [LOCK_NAME]


def test_folder_that_cannot_be_locked_is_named(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    with monkeypatch.context() as patch:
        patch.setattr(run_lock.os, "open", read_only)
        with pytest.raises(OutputWriteError, match=rf"cannot lock {tmp_path} \(its \.lock file\): Read-only"):
            run_lock.claim(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_unreadable_lock_file_is_new_for_a_moment_then_stale(tmp_path, caplog):
    path = tmp_path / LOCK_NAME
    path.write_text("")
    with pytest.raises(FolderInUseError, match="is being claimed by another process"), hold_folder(tmp_path):
        pass
    os.utime(path, (0, 0))
    with caplog.at_level(logging.WARNING, logger="catdog.runs.lock"), hold_folder(tmp_path):
        pass
    assert "held no readable record" in caplog.text and not path.exists()


def test_rank_above_zero_works_in_the_folder_rank_zero_holds(tmp_path, other_process, monkeypatch):
    path = _lock_of(tmp_path, other_process.pid)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with hold_folder(tmp_path):
        assert run_lock.owns(tmp_path)
    assert path.is_file()
