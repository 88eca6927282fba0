"""Atomic files: a writer that dies leaves the previous file (or none), never a half one; a full disk is one line."""

from __future__ import annotations

import errno
import os
import re
import stat

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from harness.cli import main
from harness.util.files import DiskFull, atomic_folder, atomic_write

from conftest import write_study


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


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_is_one_line_naming_the_path_and_the_free_space(tmp_path):
    path = tmp_path / "checkpoints" / "point.pt"
    message = r"no space left on the device writing '.*point\.pt' \(\d+\.\d\d GB free there\)"
    with pytest.raises(DiskFull, match=message):
        atomic_write(path, _no_space)
    assert os.listdir(path.parent) == []  # no partial file to be read later
    with pytest.raises(DiskFull, match="teacher_outputs"):
        with atomic_folder(tmp_path / "teacher_outputs") as folder:
            (folder / "cls.npy").write_bytes(b"half")
            _no_space()
    assert os.listdir(tmp_path) == ["checkpoints"]  # the half-written folder is gone, nothing was published


def test_a_full_disk_fails_the_trial_gives_the_point_back_and_stops_the_worker(
    tmp_path, tiny_bert, glue_dir, capsys, monkeypatch
):
    """ENOSPC while an epoch checkpoint is written: the trial FAILs with the one-line reason, no checkpoint
    or temporary file is left, the point is free again with no attempt used, and no other point is started."""
    from harness.distill import train

    study_file = write_study(tmp_path / "full.yaml", tiny_bert, methods=["nkd"], search={"lr": [1e-4, 5e-5]})
    storage = f"sqlite:///{tmp_path / 'full.db'}"
    cache = tmp_path / "cache"

    def write_then_fill(stream):
        stream.write(b"the first bytes of a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    def atomic_write_on_a_full_disk(path, write, durable=True):  # trials' epoch checkpoints; the teacher's pass
        return atomic_write(path, write_then_fill if path.suffix == ".pt" else write, durable)

    monkeypatch.setattr(train, "atomic_write", atomic_write_on_a_full_disk)
    code = main(["run", str(study_file), "--storage", storage, "--data-dir", str(glue_dir), "--cache-dir", str(cache)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert re.search(r"error: no space left on the device writing '.*\.pt' \(\d+\.\d\d GB free there\)", err), err
    assert not [p for p in (cache / "checkpoints").rglob("*") if p.is_file()]
    trials = optuna.load_study(study_name="tiny/SST-2/nkd", storage=storage).get_trials()
    assert len(trials) == 1 and trials[0].state == TrialState.FAIL
    assert trials[0].user_attrs["fail_reason"].startswith("no space left on the device writing")
    with sa.create_engine(storage).connect() as connection:
        points = connection.execute(sa.text("SELECT state, attempts FROM harness_grid_points")).all()
    assert sorted(points) == [("free", 0), ("free", 0)]


def test_a_teacher_output_cache_that_does_not_fit_is_refused_before_it_is_written(
    tmp_path, tiny_bert, glue_dir, capsys, monkeypatch
):
    from harness.util import files

    study_file = write_study(tmp_path / "full.yaml", tiny_bert, methods=["kd"], search={"lr": [1e-4], "eta": [0.5]})
    cache = tmp_path / "cache"
    usage = files.shutil.disk_usage
    monkeypatch.setattr(files.shutil, "disk_usage", lambda path: usage(path)._replace(free=1000))
    code = main(
        ["run", str(study_file), "--storage", f"sqlite:///{tmp_path / 'full.db'}", "--data-dir", str(glue_dir)]
        + ["--cache-dir", str(cache)]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert re.search(r"no space left on the device writing '.*teacher_outputs' \(0\.00 GB free there, ", err), err
    assert [p.name for p in (cache / "teacher_outputs").iterdir() if p.suffix != ".lock"] == []  # nothing half-written
