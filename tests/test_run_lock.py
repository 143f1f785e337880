"""Runs started together never share a folder: unique folder names, one process per folder (a lock taken before
anything is written, stale locks of dead processes taken over), and no-clobber writes that are checked and done in
one step."""

import errno
import json
import logging
import multiprocessing
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from catdog.cli.callbacks import SweepFolderLock
from catdog.cli.resolvers import register_resolvers
from catdog.cli.run_log import RunLogHandler
from catdog.fileio import OutputExistsError, OutputWriteError, atomic_open, atomic_write_text
from catdog.runs import lock as run_lock
from catdog.runs.layout import LOCK_NAME
from catdog.runs.lock import FolderInUseError, hold_folder, run_stamp
from catdog.training import train
from tests.conftest import CONF_DIR, TINY, make_flat, run_script, start_script, tiny_train_cfg

STAMP = re.compile(r"^\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d-\d{3}_[0-9a-f]{6}$")


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under ``folder``."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


@pytest.fixture
def other_process():
    """A live process of this host that is not this one (it holds locks written for it)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield proc
    proc.kill()
    proc.wait()


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


def test_run_and_sweep_folders_resolve_to_one_name_per_config():
    register_resolvers()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        a = compose(config_name="train", return_hydra_config=True)
        b = compose(config_name="train", return_hydra_config=True)
    run = a.hydra.run.dir
    assert run == a.hydra.run.dir  # resolved once, then cached
    assert run.startswith("outputs/train/") and STAMP.match(Path(run).name)
    assert Path(a.hydra.sweep.dir).name == Path(run).name
    assert b.hydra.run.dir != run  # another config (another process): another folder


def test_two_runs_started_together_get_their_own_complete_folders(tmp_path):
    data = make_flat(tmp_path / "data", per_class=4, test=0)
    outputs = tmp_path / "outputs"
    args = [*TINY, f"data.dir={data}", f"paths.log_dir={outputs}"]
    procs = [start_script("train.py", [*args, f"seed={seed}"], tmp_path) for seed in (1, 2)]
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
    runs = sorted((outputs / "train").iterdir())
    assert len(runs) == 2 and all(STAMP.match(r.name) for r in runs)
    seeds = set()
    for run in runs:
        seed = OmegaConf.load(run / ".hydra" / "config.yaml").seed
        seeds.add(seed)
        assert f"seed={seed}" in OmegaConf.load(run / ".hydra" / "overrides.yaml")
        result = json.loads((run / "result.json").read_text())
        assert (run / result["best_checkpoint"]).is_file() and (run / "checkpoints" / "last.ckpt").is_file()
        assert (run / "split.csv").is_file() and (run / "oof.csv").is_file()
        assert f"best checkpoint {run}/checkpoints/best.ckpt" in (run / "train.log").read_text()
        assert not (run / LOCK_NAME).exists()  # released at the end
    assert seeds == {1, 2}


@pytest.mark.parametrize("script", ["train.py", "predict.py"])
def test_process_aimed_at_a_folder_in_use_is_refused_and_writes_nothing_there(script, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"an interrupted run's checkpoint")
    (run / "train.log").write_text("its log\n")
    args = [*TINY, f"data.dir={tmp_path}"] if script == "train.py" else [f"ckpt={run}"]
    with hold_folder(run):
        before = _snapshot(run)
        refused = run_script(script, [*args, f"hydra.run.dir={run}"], tmp_path)
        assert _snapshot(run) == before  # no log line, no .hydra/, nothing else
    assert refused.returncode == 2, refused.stderr[-2000:]
    lines = [line for line in (refused.stdout + refused.stderr).splitlines() if "in use" in line]
    assert len(lines) == 1
    assert (
        f"{run} is in use by another process (pid {os.getpid()} on host {socket.gethostname()}, running since "
        in lines[0]
    )
    assert lines[0].endswith("wait for it to finish or choose another folder")
    assert not (run / LOCK_NAME).exists()  # the holder released it


def test_lock_is_reentrant_in_a_process_and_removed_by_the_last_release(tmp_path):
    folder = tmp_path / "run"
    with hold_folder(folder):
        record = json.loads((folder / LOCK_NAME).read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        with hold_folder(folder):
            pass
        assert (folder / LOCK_NAME).is_file()
    assert not folder.exists()  # made for the lock, left empty: removed with it


def test_training_refuses_a_folder_another_process_holds(tmp_path, other_process):
    run = tmp_path / "run"
    _lock_of(run, other_process.pid)
    before = _snapshot(run)
    with pytest.raises(FolderInUseError, match=rf"{run} is in use by another process \(pid {other_process.pid} "):
        train(tiny_train_cfg(make_flat(tmp_path / "data", per_class=2, test=0), run))
    assert _snapshot(run) == before


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


def test_sweep_folder_in_use_stops_the_multirun_before_it_writes(tmp_path, other_process):
    sweep = tmp_path / "sweep"
    _lock_of(sweep, other_process.pid)
    before = _snapshot(sweep)
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    with pytest.raises(SystemExit) as exit_info:
        SweepFolderLock().on_multirun_start(cfg)
    assert exit_info.value.code == 2 and _snapshot(sweep) == before
    other_process.kill()
    other_process.wait()
    SweepFolderLock().on_multirun_start(cfg)  # its holder is gone: taken over
    assert json.loads((sweep / LOCK_NAME).read_text())["pid"] == os.getpid()
    SweepFolderLock().on_multirun_end(cfg)
    assert not (sweep / LOCK_NAME).exists()


def test_run_log_is_written_only_by_the_folders_holder(tmp_path):
    record = logging.LogRecord("catdog", logging.INFO, __file__, 1, "line %d", (1,), None)
    refused = RunLogHandler(str(tmp_path / "refused" / "train.log"))
    (tmp_path / "refused").mkdir()
    refused.emit(record)
    refused.close()
    assert not (tmp_path / "refused" / "train.log").exists()

    handler = RunLogHandler(str(tmp_path / "run" / "train.log"))
    handler.emit(record)  # before the lock: held back
    assert not (tmp_path / "run" / "train.log").exists()
    with hold_folder(tmp_path / "run"):
        handler.emit(logging.LogRecord("catdog", logging.INFO, __file__, 1, "line %d", (2,), None))
    handler.close()
    assert (tmp_path / "run" / "train.log").read_text() == "line 1\nline 2\n"


def _race(path: str, text: str, barrier, results) -> None:
    barrier.wait()
    try:
        atomic_write_text(path, text, overwrite=False)
    except OutputExistsError as exc:
        results.put((text, str(exc)))
    else:
        results.put((text, "won"))


def test_no_clobber_writers_to_one_path_exactly_one_wins(tmp_path):
    ctx = multiprocessing.get_context("fork")
    writers = 4
    for round_ in range(10):
        path = tmp_path / f"submission_{round_}.csv"
        barrier, results = ctx.Barrier(writers), ctx.Queue()
        procs = [ctx.Process(target=_race, args=(str(path), f"writer {i}\n", barrier, results)) for i in range(writers)]
        for proc in procs:
            proc.start()
        outcomes = dict(results.get(timeout=60) for _ in procs)
        for proc in procs:
            proc.join()
        winners = [text for text, outcome in outcomes.items() if outcome == "won"]
        assert len(winners) == 1, outcomes
        assert path.read_text() == winners[0]
        message = f"{path} already exists; choose another output= or pass overwrite=true"
        assert sorted(o for o in outcomes.values() if o != "won") == [message] * (writers - 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"submission_{i}.csv" for i in range(10)]  # no temp files


@pytest.mark.parametrize("hard_links", [True, False])
def test_no_clobber_write_keeps_a_file_created_while_it_wrote(tmp_path, monkeypatch, hard_links):
    if not hard_links:

        def no_links(src, dst):
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "submission.csv"
    message = r"submission\.csv already exists; choose another output="
    with pytest.raises(OutputExistsError, match=message), atomic_open(path, overwrite=False) as f:
        f.write("mine\n")
        path.write_text("theirs\n")  # another process created it after this one's check
    assert path.read_text() == "theirs\n"
    atomic_write_text(tmp_path / "new.csv", "new\n", overwrite=False)
    assert (tmp_path / "new.csv").read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.csv", "submission.csv"]
