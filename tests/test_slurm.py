"""Sweeps over several study files, ``prepare``, the checks for many machines sharing one sweep, and the SLURM
launcher (``slurm``): its ``--dry-run``, its refusals and, where ``sbatch`` is on PATH, a real job array."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from harness.cli import main
from harness.store import urls

from conftest import sweep_args, write_study

ONE_POINT = {
    "methods": ["nkd", "kd"],
    "fixed": {
        "epochs": 2,
        "max_seq_length": 32,
        "max_train_samples": 64,
        "eval_batch_size": 256,
        "teacher": {"epochs": 1, "lr": 1e-4, "max_train_samples": 64},
    },
    "search": {"lr": [1e-4], "eta": [0.5], "lambda": [0.2]},
}


def two_files(tmp_path: Path, tiny_bert: Path) -> list[Path]:
    """Two study files (SST-2 and MRPC), two trainings each (NKD and KD at one lr)."""
    return [
        write_study(tmp_path / "a.yaml", tiny_bert, name="multi", **ONE_POINT),
        write_study(tmp_path / "b.yaml", tiny_bert, name="multi", task="MRPC", **ONE_POINT),
    ]


def complete_points(storage: str) -> dict[str, list[str]]:
    """Per study, the points of its COMPLETE trials; asserts that nothing is RUNNING."""
    found = {}
    for summary in optuna.get_all_study_summaries(storage):
        trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()
        assert not [t for t in trials if t.state == TrialState.RUNNING], summary.study_name
        found[summary.study_name] = sorted(t.user_attrs["point"] for t in trials if t.state == TrialState.COMPLETE)
    return found


def test_one_run_takes_several_study_files_and_prepare_is_idempotent(tmp_path, tiny_bert, glue_dir, capsys):
    files = two_files(tmp_path, tiny_bert)
    storage = f"sqlite:///{tmp_path / 'multi.db'}"
    where = sweep_args(storage, glue_dir, tmp_path / "cache")
    assert main(["prepare", *map(str, files), *where[2:]]) == 0
    first = capsys.readouterr().out
    teachers = sorted((tmp_path / "cache" / "teachers").glob("*/harness_teacher.json"))
    assert len(teachers) == 2 and "no student was trained" in first
    stamps = [path.stat().st_mtime_ns for path in teachers]
    assert main(["prepare", *map(str, files), *where[2:]]) == 0  # again: nothing is fine-tuned twice
    assert [path.stat().st_mtime_ns for path in teachers] == stamps
    assert not (tmp_path / "multi.db").exists()  # prepare creates no database
    assert main(["run", *map(str, files), *where]) == 0
    points = complete_points(storage)
    assert sorted(points) == ["multi/MRPC/kd", "multi/MRPC/nkd", "multi/SST-2/kd", "multi/SST-2/nkd"]
    assert all(len(found) == 1 for found in points.values()), points


def test_a_worker_whose_fine_tuned_teacher_differs_is_refused(tmp_path, tiny_bert, glue_dir, capsys):
    """Two nodes that each fine-tuned the teacher (another GPU, another library version) must not mix."""
    import shutil

    from safetensors.torch import load_file, save_file

    study_file = write_study(tmp_path / "t.yaml", tiny_bert, name="hash", **{**ONE_POINT, "methods": ["nkd"]})
    storage = f"sqlite:///{tmp_path / 'hash.db'}"
    assert main(["run", str(study_file), *sweep_args(storage, glue_dir, tmp_path / "cache")]) == 0
    shutil.copytree(tmp_path / "cache" / "teachers", tmp_path / "other" / "teachers")
    (weights,) = (tmp_path / "other" / "teachers").glob("*/model.safetensors")
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1e-3  # the same recipe, fine-tuned elsewhere: other bytes
    save_file(tensors, weights, metadata={"format": "pt"})
    capsys.readouterr()
    assert main(["run", str(study_file), *sweep_args(storage, glue_dir, tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: study 'hash/SST-2/nkd' was run with teacher weights sha256") and err.count("\n") == 1
    assert str(weights.parent) in err


def test_sqlite_on_a_network_filesystem_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(urls, "filesystem_type", lambda path: "nfs4")
    assert main(["status", "--storage", f"sqlite:///{tmp_path / 'x.db'}"]) == 2
    err = capsys.readouterr().err
    assert "network filesystem (nfs4)" in err and "postgresql://" in err and err.count("\n") == 1


def test_filesystem_type_reads_the_longest_mount_point(tmp_path):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n"
        "23 22 0:40 / /shared rw - nfs4 server:/export rw\n"
        "24 23 0:41 / /shared/scratch rw - lustre mds@tcp:/fs rw\n"
    )
    assert urls.filesystem_type(Path("/shared/a/b"), mountinfo) == "nfs4"
    assert urls.filesystem_type(Path("/shared/scratch/x"), mountinfo) == "lustre"
    assert urls.filesystem_type(Path("/sharedx"), mountinfo) == "ext4"
    assert urls.filesystem_type(Path("/x"), tmp_path / "missing") == "unknown"
