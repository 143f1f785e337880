"""catdog/checkpoints.py: an interrupted checkpoint write keeps the previous file."""

import errno

import pytest
import torch

from catdog.checkpoints import SafeCheckpointIO
from catdog.fileio import OutputWriteError


def test_checkpoint_write_interrupted_keeps_previous_file(tmp_path, monkeypatch):
    io = SafeCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": {}}, target)
    good = target.read_bytes()

    def half_then_crash(obj, f, *args, **kwargs):
        f.write(good[: len(good) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then_crash)
    with pytest.raises(OutputWriteError, match=r"last.ckpt: No space left on device; the previous file is kept"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(2)}, "hyper_parameters": {}}, target)
    assert target.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no half-written temp file left
