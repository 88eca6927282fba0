"""Sweeps over several study files, ``prepare``, the checks for many machines sharing one sweep, and the SLURM
launcher (``slurm``): its ``--dry-run``, its refusals and, where ``sbatch`` is on PATH, a real job array."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from harness.cli import main
from harness.store import urls

from conftest import REPO, TINY_FIXED, report_readme, sweep_args, write_study

ONE_POINT = {
    "methods": ["nkd", "kd"],
    "fixed": {**TINY_FIXED, "epochs": 2},
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


def test_a_worker_whose_teacher_outputs_differ_is_refused(tmp_path, tiny_bert, glue_dir, capsys):
    """The same fine-tuned teacher, its output cache computed again elsewhere (another GPU's kernels): refused, where
    a copy of the study's own cache is accepted."""
    import json

    import numpy as np

    from harness.util.hashing import sha256_file

    study_file = write_study(tmp_path / "t.yaml", tiny_bert, name="outputs", **{**ONE_POINT, "methods": ["kd"]})
    storage = f"sqlite:///{tmp_path / 'outputs.db'}"
    assert main(["run", str(study_file), *sweep_args(storage, glue_dir, tmp_path / "cache")]) == 0
    shutil.copytree(tmp_path / "cache", tmp_path / "copy")
    assert main(["run", str(study_file), *sweep_args(storage, glue_dir, tmp_path / "copy")]) == 0  # the same bytes
    (folder,) = [p for p in (tmp_path / "copy" / "teacher_outputs").iterdir() if (p / "logits.npy").is_file()
                 and "-dev-" not in p.name]  # fmt: skip
    logits = np.load(folder / "logits.npy")
    np.save(folder / "logits.npy", logits + 1e-4)  # computed again: other bytes, a valid cache all the same
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["logits"]["sha256"] = sha256_file(folder / "logits.npy")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(["run", str(study_file), *sweep_args(storage, glue_dir, tmp_path / "copy")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: study 'outputs/SST-2/kd' was run with teacher outputs (cache) sha256")
    assert err.count("\n") == 1 and str(folder) in err


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


# ---------------------------------------------------------------- the launcher


def launch_args(files: list[Path], storage: str, glue_dir: Path, cache: Path, *extra: str) -> list[str]:
    return ["slurm", *map(str, files), "--workers", "2", "--gpus-per-worker", "0", "--cpus-per-worker", "1",
            *sweep_args(storage, glue_dir, cache), *extra]  # fmt: skip


def test_dry_run_prints_both_jobs_and_submits_nothing(tmp_path, tiny_bert, glue_dir, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch: a dry run needs none
    files = two_files(tmp_path, tiny_bert)
    url = "postgresql://me:secret@db.example:5432/sweeps"
    cache = REPO / ".cache"
    assert main(launch_args(files, url, glue_dir, cache, "--time", "2:00:00", "--partition", "gpu", "--dry-run")) == 0
    out = capsys.readouterr().out
    assert "secret" not in out and "me:***@db.example" in out
    assert "#SBATCH --array=0-1" in out and "#SBATCH --requeue" in out and "#SBATCH --signal=B:USR1@120" in out
    assert "#SBATCH --partition=gpu" in out and "#SBATCH --time=2:00:00" in out and "--gres" not in out
    assert "--dependency=afterok:<prepare job>" in out
    prepare, workers = out.split("# workers.sbatch")
    assert f"prepare {files[0].resolve()} {files[1].resolve()} --storage" in prepare
    assert prepare.rstrip().endswith("--time-limit 2:00:00")  # the prepare job checks an epoch fits in --time
    assert f"exec {sys.executable} {REPO / 'run_study.py'} run {files[0].resolve()} {files[1].resolve()}" in workers
    assert "export HARNESS_SLURM_REQUEUE=1" in workers
    assert "run_study.py status --storage" in out and "report --name multi" in out
    with_gpus = launch_args(files, url, glue_dir, cache, "--dry-run")
    with_gpus[with_gpus.index("--gpus-per-worker") + 1] = "2"
    assert main(with_gpus) == 0
    assert "#SBATCH --gres=gpu:2" in capsys.readouterr().out
    assert main(launch_args(files, url, glue_dir, cache, "--confirm", "1", "5", "--dry-run")) == 0
    confirm = capsys.readouterr().out.split("# confirm.sbatch")[1]
    assert "--dependency=afterok:<worker array>" in confirm and "#SBATCH --requeue" in confirm
    assert "run_study.py confirm --name multi --top 1 --seeds 5 --storage" in confirm


def test_a_slurm_block_in_the_study_files_sets_what_the_flags_do_not(tmp_path, tiny_bert, glue_dir, capsys):
    block = {"workers": 3, "partition": "gpu", "time": "4:00:00", "gpus_per_worker": 2, "sbatch": ["--exclusive"]}
    files = [
        write_study(tmp_path / "a.yaml", tiny_bert, name="multi", slurm=block, **ONE_POINT),
        write_study(tmp_path / "b.yaml", tiny_bert, name="multi", task="MRPC", **ONE_POINT),  # no block: agrees
    ]
    where = sweep_args("postgresql://u@127.0.0.1/db", glue_dir, REPO / ".cache")
    assert main(["slurm", *map(str, files), *where, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --array=0-2" in out and "#SBATCH --partition=gpu" in out and "#SBATCH --time=4:00:00" in out
    assert "#SBATCH --gres=gpu:2" in out and "#SBATCH --exclusive" in out and "#SBATCH --cpus-per-task=4" in out
    assert main(["slurm", *map(str, files), *where, "--workers", "5", "--time", "1:00:00", "--dry-run"]) == 0
    out = capsys.readouterr().out  # a flag given wins over the block
    assert "#SBATCH --array=0-4" in out and "#SBATCH --time=1:00:00" in out and "#SBATCH --partition=gpu" in out
    # where a study's result is computed is not part of it: the block leaves the study's fingerprint alone
    from harness.spec.config import load_study

    with_block, without = load_study(files[0]), load_study(write_study(tmp_path / "c.yaml", tiny_bert, name="multi",
                                                                       **ONE_POINT))  # fmt: skip
    assert with_block.fingerprint("kd") == without.fingerprint("kd")
    other = write_study(tmp_path / "d.yaml", tiny_bert, name="multi", task="MRPC", slurm={"partition": "cpu"},
                        **ONE_POINT)  # fmt: skip
    assert main(["slurm", str(files[0]), str(other), *where, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: slurm.partition: {files[0]} sets 'gpu', {other} sets 'cpu'; make them agree or give "
                   "--partition on the command line\n")  # fmt: skip
    assert main(["slurm", str(files[1]), *where, "--dry-run"]) == 2
    assert "--workers: not given, and no study file's slurm: block sets workers" in capsys.readouterr().err
    bad = write_study(tmp_path / "e.yaml", tiny_bert, slurm={"wokers": 2}, **ONE_POINT)
    assert main(["slurm", str(bad), *where, "--dry-run"]) == 2
    assert capsys.readouterr().err == f"error: {bad}: slurm.wokers: unknown key (got 2)\n"


def test_prepare_refuses_a_time_limit_shorter_than_one_epoch(tmp_path, tiny_bert, glue_dir, capsys, monkeypatch):
    """The launcher's prepare job gets the workers' --time: by plan's micro-run on the node, one epoch must fit in it
    before the stop signal, or nothing is fine-tuned (and the worker array, after it, never starts)."""
    from harness.distill.train import Stepper

    study_file = write_study(tmp_path / "t.yaml", tiny_bert, name="limit", **ONE_POINT)
    where = ["--data-dir", str(glue_dir), "--cache-dir", str(tmp_path / "cache")]
    timed = Stepper.timed
    monkeypatch.setattr(Stepper, "timed", lambda self, *args, **kwargs: 100.0)  # a slow node: 100 s per step
    assert main(["prepare", str(study_file), *where, "--time-limit", "5:00"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --time 5:00: a worker has 180 s before its stop signal, but one epoch of ")
    assert "by plan's estimate here" in err and err.count("\n") == 1, err
    assert not (tmp_path / "cache" / "teachers").exists() or not any((tmp_path / "cache" / "teachers").iterdir())
    monkeypatch.setattr(Stepper, "timed", timed)
    assert main(["prepare", str(study_file), *where, "--time-limit", "5:00"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"one epoch ≈ \d+ s on cpu by plan's estimate, within --time 5:00 less the 120 s", out), out
    assert "prepared 1 study file(s)" in out


@pytest.mark.parametrize(
    ("storage", "cache", "extra", "message"),
    [
        ("sqlite:///{tmp}/x.db", "{repo}/.cache", (), "SQLite is only safe when every task runs on one node"),
        ("postgresql://u@127.0.0.1/db", "/tmp/alp-kd-cache", (), "is node-local (/tmp)"),
        ("postgresql://u@127.0.0.1/db", "/dev/shm/alp-kd-cache", (), "is node-local (tmpfs)"),
        ("postgresql://u@127.0.0.1/db", "{repo}/.cache", ("--time", "1"), "give them more than that"),
        ("postgresql://u@127.0.0.1/db", "{repo}/.cache", ("--time", "soon"), "--time 'soon': expected minutes"),
        ("postgresql://u@127.0.0.1/db", "{repo}/.cache", ("--gpus-per-worker", "-1"), "--gpus-per-worker -1: Input"),
    ],
)
def test_the_launcher_refuses_what_many_nodes_cannot_share(tmp_path, glue_dir, tiny_bert, capsys, storage, cache,
                                                           extra, message):  # fmt: skip
    files = two_files(tmp_path, tiny_bert)
    storage, cache = (text.format(tmp=tmp_path, repo=REPO) for text in (storage, cache))
    assert main(launch_args(files, storage, glue_dir, Path(cache), *extra, "--dry-run")) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ") and err.count("\n") == 1, err


def test_no_sbatch_on_path_is_one_line(tmp_path, glue_dir, tiny_bert, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    files = two_files(tmp_path, tiny_bert)
    assert main(launch_args(files, "postgresql://u@127.0.0.1/db", glue_dir, REPO / ".cache")) == 2
    err = capsys.readouterr().err
    assert err == "error: 'sbatch' is not on PATH: run 'slurm' on a SLURM login node (or use --dry-run)\n"


# ---------------------------------------------------------------- a real SLURM cluster (.ci/slurm-up.sh)

LONG = {  # trials long enough to be signalled between their first checkpoint and their end
    "methods": ["nkd", "kd"],
    "fixed": {
        "epochs": 3,
        "max_seq_length": 32,
        "max_train_samples": 128,
        "eval_batch_size": 256,
        "teacher": {"epochs": 1, "lr": 1e-4, "max_train_samples": 64},
    },
    "search": {"eta": [0.5], "lambda": [0.2]},
}


@pytest.fixture
def slurm_cluster() -> str:
    """This node's name in a running SLURM cluster; skips (fails under CI=true) where there is none."""
    reason = None
    if shutil.which("sbatch") is None:
        reason = "no sbatch on PATH (run .ci/slurm-up.sh as root for a one-node cluster)"
    else:
        listed = subprocess.run(["sinfo", "-h", "-o", "%n %t"], capture_output=True, text=True, timeout=60)
        nodes = [line.split() for line in listed.stdout.splitlines() if line.strip()]
        if listed.returncode != 0 or not nodes:
            reason = f"sinfo finds no SLURM cluster ({listed.stderr.strip() or 'no nodes'}); run .ci/slurm-up.sh"
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return nodes[0][0]


def _running_with_checkpoint(storage: str, cache: Path) -> dict[str, str]:
    """SLURM job → point of the RUNNING trials whose epoch checkpoint exists (mid-trial, resumable)."""
    found = {}
    for summary in optuna.get_all_study_summaries(storage):
        for trial in optuna.load_study(study_name=summary.study_name, storage=storage).get_trials(
            deepcopy=False, states=(TrialState.RUNNING,)
        ):
            point, job = trial.user_attrs.get("point"), trial.user_attrs.get("slurm_job")
            # an epoch recorded by this very trial (not a file of another study's point with the same key)
            if job and trial.user_attrs.get("epochs") and any(cache.glob(f"checkpoints/*/{point}.pt")):
                found[job] = point
    return found


def outcomes(storage: str) -> dict[tuple[str, str], tuple]:
    """(study, point) → (value, per-epoch values) of every COMPLETE trial."""
    return {
        (summary.study_name, trial.user_attrs["point"]): (trial.value, sorted(trial.intermediate_values.items()))
        for summary in optuna.get_all_study_summaries(storage)
        for trial in optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()
        if trial.state == TrialState.COMPLETE
    }


def _sbatch_urgent(node: str, folder: Path) -> str:
    """A one-CPU job in the 'urgent' partition (PriorityTier 10, .ci/slurm-up.sh) on a node the workers fill: SLURM
    preempts one worker (``PreemptMode=REQUEUE``; its ``--signal`` first, then SIGTERM) to run it."""
    command = ["sbatch", "--parsable", "-p", "urgent", "-w", node, "-c", "1", "--mem=64", "-o", str(folder / "u.out")]
    return subprocess.run([*command, "--wrap", "sleep 1"], check=True, capture_output=True, text=True).stdout.strip()


def _restarted(array: str) -> str | None:
    """``ARRAY_TASK`` of a task of ``array`` that SLURM requeued (``Restarts`` > 0), if any."""
    shown = subprocess.run(["scontrol", "-o", "show", "job", array], capture_output=True, text=True, timeout=60)
    for line in shown.stdout.splitlines():
        task = re.search(r"ArrayTaskId=(\d+)", line)
        if task and re.search(r"Restarts=[1-9]", line):
            return f"{array}_{task.group(1)}"
    return None


def _squeue(jobs: str) -> list[str]:
    listed = subprocess.run(["squeue", "-h", "-j", jobs, "-o", "%i %T"], capture_output=True, text=True, timeout=60)
    return [line for line in listed.stdout.splitlines() if line.strip()]


def test_a_sweep_on_slurm_survives_preemption_and_time_limits(tmp_path, tiny_bert, glue_dir, postgres_url,
                                                              slurm_cluster, capsys):  # fmt: skip
    """Two files, a worker array of 2 on PostgreSQL; one worker preempted mid-trial (a job of the higher-tier
    partition; SLURM signals and requeues it), one told its time is up (``--signal=B:USR1``, it requeues itself).
    End state: one COMPLETE trial per point, nothing RUNNING, the interrupted trials resumed from their
    checkpoints, and the same numbers as one local worker's."""
    started = time.monotonic()
    files = [
        write_study(tmp_path / f"{task}.yaml", tiny_bert, name="cluster", task=task, **{**LONG, "search": search})
        for task, search in (("SST-2", {**LONG["search"], "lr": [1e-4]}), ("MRPC", {**LONG["search"], "lr": [2e-4]}))
    ]
    cache = tmp_path / "cache"
    args = launch_args(
        files, postgres_url, glue_dir, cache, "--nodelist", slurm_cluster, "--log-dir", str(tmp_path / "logs")
    )
    assert main(args) == 0
    out = capsys.readouterr().out
    prepare, array = re.search(r"submitted prepare job (\d+) and worker array (\d+)", out).groups()
    signalled: dict[str, str] = {}
    urgent = None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and _squeue(f"{prepare},{array}"):
        mid_trial = _running_with_checkpoint(postgres_url, cache)
        if urgent is None and len(mid_trial) == 2:  # both workers mid-trial: a job of a higher tier preempts one
            urgent = _sbatch_urgent(slurm_cluster, tmp_path)
        if urgent is not None and not signalled:
            preempted = _restarted(array)
            if preempted:
                signalled[preempted] = "preempted"
        if signalled and len(signalled) == 1:
            for job in mid_trial:
                if job not in signalled:  # the time limit is near: the job's --signal, the worker requeues itself
                    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True, timeout=60)
                    signalled[job] = "time limit"
                    break
        time.sleep(0.2)
    logs = "\n".join(
        line
        for path in sorted((tmp_path / "logs").glob("*.out"))
        for line in path.read_text().splitlines()
        if "it/s]" not in line and "s/it]" not in line  # no progress bars
    )
    assert not _squeue(f"{prepare},{array}"), f"the jobs did not finish in time:\n{logs[-3000:]}"
    assert sorted(signalled.values()) == ["preempted", "time limit"], (signalled, logs[-3000:])
    assert "requeued SLURM job" in logs and "Traceback" not in logs, logs[-3000:]
    points = complete_points(postgres_url)
    assert len(points) == 4 and all(len(found) == 1 for found in points.values()), points
    trials = [
        (summary.study_name, trial)
        for summary in optuna.get_all_study_summaries(postgres_url)
        for trial in optuna.load_study(study_name=summary.study_name, storage=postgres_url).get_trials()
    ]
    interrupted = [(s, t) for s, t in trials if t.user_attrs.get("fail_reason") == "interrupted"]
    assert len(interrupted) == 2
    # Each interrupted trial's point is finished by a trial that resumed after the epochs it had checkpointed. (The
    # preemption lands a scheduler cycle after the urgent job is submitted, when that worker may have begun its
    # next trial, with no epoch done yet: then there is nothing to resume and it starts at epoch 0.)
    resumed = {
        (s, t.user_attrs["point"]): t.user_attrs.get("resumed_from_epoch", 0)
        for s, t in trials
        if t.state == TrialState.COMPLETE
    }
    for study, trial in interrupted:
        done = len(trial.user_attrs.get("epochs", []))
        assert resumed[(study, trial.user_attrs["point"])] >= done, (study, trial.user_attrs)
    assert any(trial.user_attrs.get("epochs") for _, trial in interrupted)  # at least one resumed mid-trial
    cluster_time = time.monotonic() - started
    local = f"sqlite:///{tmp_path / 'local.db'}"
    assert main(["run", *map(str, files), *sweep_args(local, glue_dir, tmp_path / "local-cache")]) == 0
    # every point's trial gives the same number, epoch by epoch, as one local worker's
    assert outcomes(postgres_url) == outcomes(local)
    # and the report's main document is the same text, byte for byte but for the storage URL in its commands: it is
    # a function of the results alone (the two interrupted FAIL trials, trial numbers, workers and wall times,
    # which differ between any two runs, are in runs.md)
    assert report_readme(postgres_url, tmp_path / "cluster-report") == report_readme(local, tmp_path / "local-report")
    print(f"slurm sweep {cluster_time:.0f} s, with the local one {time.monotonic() - started:.0f} s")


def test_a_worker_knows_its_slurm_job(monkeypatch):
    from harness.store.claims import slurm_job

    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    assert slurm_job() is None
    monkeypatch.setenv("SLURM_JOB_ID", "12")
    assert slurm_job() == "12"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "12")  # the last task of an array has the array's job id
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert slurm_job() == "12_3"


def test_slurm_time_limits_parse():
    from harness.sweep.slurm import parse_time

    assert [parse_time(t) for t in ("30", "10:00", "1:00:00", "2-0", "1-02:03", "1-02:03:04")] == [
        1800, 600, 3600, 172800, 93780, 93784
    ]  # fmt: skip


def test_an_unknown_partition_is_refused_before_anything_is_submitted(tmp_path, tiny_bert, glue_dir, slurm_cluster,
                                                                       capsys):  # fmt: skip
    files = two_files(tmp_path, tiny_bert)
    before = _squeue_all()
    args = launch_args(files, "postgresql://u@127.0.0.1/db", glue_dir, REPO / ".cache", "--partition", "nope")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown partition 'nope'; this cluster has: ") and err.count("\n") == 1, err
    assert _squeue_all() == before


def _squeue_all() -> list[str]:
    return subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=60).stdout.split()


def test_plan_adds_several_study_files_up_for_n_gpus(tmp_path, tiny_bert, glue_dir, capsys):
    files = two_files(tmp_path, tiny_bert)
    where = ["--data-dir", str(glue_dir), "--cache-dir", str(tmp_path / "cache")]
    assert main(["plan", *map(str, files), *where, "--gpus", "2"]) == 0
    out = capsys.readouterr().out
    assert "plan for multi/SST-2" in out and "plan for multi/MRPC" in out
    assert "all 2 study files: 4 trainings after sharing, 2 teacher(s) to fine-tune" in out
    assert re.search(r"≈ \d+\.\d\d device-hours measured here; on 2 device\(s\) ≈ \d+ (s|min) wall", out), out
    assert not (tmp_path / "cache" / "teachers").exists() or not any((tmp_path / "cache" / "teachers").iterdir())
