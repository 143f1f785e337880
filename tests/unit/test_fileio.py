"""catdog/fileio.py: atomic writes keep the previous file on a full disk, get the umask's mode, and never replace a
file another writer made."""

import errno
import multiprocessing
import os
import stat

import pytest

from catdog.fileio import OutputExistsError, OutputWriteError, atomic_open, atomic_write_text


def test_text_write_disk_full_keeps_previous(tmp_path, monkeypatch):
    target = tmp_path / "submission.csv"
    atomic_write_text(target, "id,label\n1,0.5\n")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputWriteError, match="previous file is kept"):
        atomic_write_text(target, "id,label\n1,0.9\n")
    assert target.read_text() == "id,label\n1,0.5\n"
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]


def test_written_files_get_the_umask_mode_or_keep_their_own(tmp_path, umask_022):
    new = tmp_path / "submission.csv"
    atomic_write_text(new, "id,label\n")
    assert stat.S_IMODE(new.stat().st_mode) == 0o644
    private = tmp_path / "private.csv"
    private.write_text("x")
    private.chmod(0o600)
    atomic_write_text(private, "y")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600 and private.read_text() == "y"


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
