"""Atomic files: a writer that dies leaves the previous file (or none), never a half one."""

from __future__ import annotations

import os
import stat

import pytest

from harness.files import atomic_write


def _write_then_fail(stream):
    stream.write(b"half of the new")
    raise RuntimeError("killed mid-write")


@pytest.mark.parametrize("durable", [True, False])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, durable):
    path = tmp_path / "sub" / "report.md"
    atomic_write(path, lambda stream: stream.write(b"old"), durable=durable)
    with pytest.raises(RuntimeError, match="killed mid-write"):
        atomic_write(path, _write_then_fail, durable=durable)
    assert path.read_bytes() == b"old"
    assert os.listdir(path.parent) == ["report.md"]
    atomic_write(path, lambda stream: stream.write(b"new"), durable=durable)
    assert path.read_bytes() == b"new" and os.listdir(path.parent) == ["report.md"]


def test_the_file_mode_follows_the_umask_like_open(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "a", lambda stream: stream.write(b"x"))
        with open(tmp_path / "b", "wb") as stream:
            stream.write(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o640
