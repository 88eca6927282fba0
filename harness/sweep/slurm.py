"""``slurm``: one command that runs the study files on a SLURM cluster, every GPU busy, nothing lost to preemption.

It submits two jobs with plain ``sbatch`` (no Python client on the login node):

1. a **prepare job** (``run_study.py prepare``): first checks that the database is reachable from a compute node
   and, with ``--time``, that one epoch of every study file fits in it before the stop signal by ``plan``'s
   micro-run on that node's device (both before any training; a failed prepare job cancels the worker array), then
   fine-tunes every teacher and writes every teacher-output cache, up to one per GPU;
2. a **worker job array** of ``--workers N`` tasks, ``--dependency=afterok`` on the prepare job: each task is one
   ``run_study.py run A.yaml B.yaml …`` on its own GPU(s), against the shared database and ``--cache-dir``. The
   claims (``harness_grid_points``) keep the N workers from ever training a point twice.

**Signals, the choice made here.** The workers are submitted with ``--requeue --signal=B:USR1@LEAD`` and the
batch script ``exec``s Python, so Python is the batch shell and gets the signal itself. SIGTERM (preemption,
``scancel``, ``scontrol requeue``) and USR1 (the time limit is ``LEAD`` seconds away; with
``SlurmctldParameters=preempt_send_user_signal`` also a preemption) are both handled like Ctrl-C: the point in
flight is given back (trial FAIL "interrupted", no attempt used, epoch checkpoint kept). After USR1 the worker
also runs ``scontrol requeue`` on its own array task, since SLURM does not requeue a job whose time runs out; a
preempted job SLURM requeues itself (``PreemptMode=REQUEUE``). The requeued task resumes the trial from its epoch
checkpoint (``resumed_from_epoch``). A job killed without warning is the SIGKILL case: its claim goes stale
(heartbeat older than 120 s) and another worker takes the point over. submitit was not used: it handles USR2
through its own ``checkpoint()`` protocol and ignores SIGTERM, where our workers already give their point back on
SIGTERM, and without ``sacct`` it cannot see the state of a killed job.

Before anything is submitted the launcher checks: ``sbatch``/``sinfo`` on PATH, the partition known to ``sinfo``,
SQLite only when every task runs on one node (``--nodelist NODE``) and never on a network filesystem, a cache
folder that every node sees (not tmpfs or /tmp, unless one node), the study files themselves. If the worker
array cannot be submitted, the prepare job is cancelled: nothing is left half-submitted.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, ValidationError

from harness.spec.config import SlurmBlock
from harness.store.claims import slurm_job
from harness.store.urls import NODE_LOCAL_FILESYSTEMS, filesystem_type, mask_url, parse_url
from harness.util.errors import HarnessError

SIGNAL_LEAD_SECONDS = 120  # USR1 this long before the time limit: enough to give the point back and requeue
REQUEUE_ENV = "HARNESS_SLURM_REQUEUE"  # set in the worker jobs: USR1 there means "requeue me" (harness.cli)


class SlurmOptions(SlurmBlock):
    """What the launcher submits: a study file's ``slurm:`` block's keys, each decided (:func:`options_from`), and
    the seed confirmations to run after the sweep."""

    workers: int = Field(ge=1)
    gpus_per_worker: int = Field(1, ge=0)
    cpus_per_worker: int = Field(4, ge=1)
    confirm: tuple[int, int] | None = None  # (top K, seeds S): a confirmation array after the workers


@dataclass
class Submission:
    """The two scripts to submit and where their logs go."""

    folder: Path
    prepare: str
    workers: str
    confirm: str | None = None


def options_from(blocks: list[tuple[str, SlurmBlock | None]], flags: dict) -> SlurmOptions:
    """The launcher's options: each command-line flag given (not ``None``, or a non-empty ``sbatch`` list), else
    the value the study files' ``slurm:`` blocks set (``blocks``: each file's name and block), else the default.
    Two files that set one key differently are refused in one line naming both, unless the flag decides it; a
    value the launcher cannot use (``--gpus-per-worker -1``) is refused in one line too."""
    chosen: dict = {}
    for field in SlurmBlock.model_fields:
        given = flags.get(field)
        if given is not None and given != [] and given != ():
            chosen[field] = tuple(given) if field == "sbatch" else given
            continue
        found = {}
        for source, block in blocks:
            value = None if block is None else getattr(block, field)
            if value is not None and value != ():
                found.setdefault(value, source)
        if len(found) > 1:
            (a, first), (b, second) = list(found.items())[:2]
            raise HarnessError(
                f"slurm.{field}: {first} sets {a!r}, {second} sets {b!r}; make them agree or give "
                f"--{field.replace('_', '-')} on the command line"
            )
        if found:
            chosen[field] = next(iter(found))
    if chosen.get("workers") is None:
        raise HarnessError("--workers: not given, and no study file's slurm: block sets workers (allowed: N ≥ 1)")
    try:
        return SlurmOptions(**chosen, confirm=flags.get("confirm"))
    except ValidationError as error:
        first = error.errors()[0]
        flag = "--" + str(first["loc"][0]).replace("_", "-")
        raise HarnessError(f"{flag} {first.get('input')!r}: {first['msg']}") from None


def parse_time(text: str) -> int:
    """SLURM's ``--time`` (minutes, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``) in seconds."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not match:
        raise HarnessError(f"--time {text!r}: expected minutes, MM:SS, HH:MM:SS or D-HH:MM:SS")
    days, a, b, c = match.groups()
    a, b, c = int(a), int(b or 0), int(c or 0)
    if days is not None:  # D-HH[:MM[:SS]]
        return int(days) * 86400 + a * 3600 + b * 60 + c
    if match.group(4) is not None:  # HH:MM:SS
        return a * 3600 + b * 60 + c
    if match.group(3) is not None:  # MM:SS
        return a * 60 + b
    return a * 60  # minutes


def single_node(nodelist: str | None) -> bool:
    """Whether ``--nodelist`` names exactly one node (no comma, no range)."""
    return bool(nodelist) and not re.search(r"[,\[\]]", nodelist)


def check_setup(url: str, cache_dir: Path, options: SlurmOptions, dry_run: bool) -> None:
    """Every check that needs no compute node; a one-line :class:`HarnessError` for the first that fails."""
    if options.time is not None and parse_time(options.time) <= SIGNAL_LEAD_SECONDS:
        raise HarnessError(
            f"--time {options.time}: the workers are told to stop {SIGNAL_LEAD_SECONDS} s before their time "
            "limit, so give them more than that"
        )
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite" and not single_node(options.nodelist):
        raise HarnessError(
            f"storage {mask_url(url)!r}: SQLite is only safe when every task runs on one node; give --nodelist NODE, "
            "or use a PostgreSQL database every node can reach (postgresql://user:pass@host/db; README, "
            "'Running on a SLURM cluster', shows how to start one in user space)"
        )
    if not single_node(options.nodelist):
        resolved = cache_dir.resolve()
        kind = filesystem_type(resolved)
        if kind in NODE_LOCAL_FILESYSTEMS or resolved == Path("/tmp") or Path("/tmp") in resolved.parents:
            raise HarnessError(
                f"--cache-dir {str(cache_dir)!r} is node-local ({kind if kind in NODE_LOCAL_FILESYSTEMS else '/tmp'}): "
                "the workers on other nodes would not see the prepared teachers; give a folder on a filesystem every "
                "node mounts (or --nodelist NODE for one node)"
            )
    if dry_run:
        return
    for tool in ("sbatch", "sinfo", "scancel"):
        if shutil.which(tool) is None:
            raise HarnessError(f"{tool!r} is not on PATH: run 'slurm' on a SLURM login node (or use --dry-run)")
    if options.partition is not None:
        known = _partitions()
        if options.partition not in known:
            raise HarnessError(
                f"unknown partition {options.partition!r}; this cluster has: {', '.join(sorted(known)) or 'none'}"
            )


def _partitions() -> set[str]:
    listed = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, timeout=60)
    if listed.returncode != 0:
        raise HarnessError(f"sinfo failed: {(listed.stderr or listed.stdout).strip().splitlines()[-1:]}")
    return {line.strip() for line in listed.stdout.splitlines() if line.strip()}


def _directives(options: SlurmOptions, name: str, log: str) -> list[str]:
    lines = [f"--job-name={name}", f"--output={log}", "--open-mode=append", "--nodes=1", "--ntasks=1"]
    lines.append(f"--cpus-per-task={options.cpus_per_worker}")
    if options.gpus_per_worker:
        lines.append(f"--gres=gpu:{options.gpus_per_worker}")
    for flag, value in (
        ("partition", options.partition),
        ("time", options.time),
        ("account", options.account),
        ("qos", options.qos),
        ("constraint", options.constraint),
        ("nodelist", options.nodelist),
        ("mem", options.mem),
    ):
        if value is not None:
            lines.append(f"--{flag}={value}")
    lines.extend(options.sbatch)
    return lines


def _script(directives: list[str], command: list[str], env: dict[str, str]) -> str:
    head = ["#!/bin/bash", *(f"#SBATCH {d}" for d in directives)]
    exports = [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    # exec: Python becomes the batch shell, so the --signal=B:… and SIGTERM reach it, not an untrapped bash
    body = [f"cd {shlex.quote(str(Path.cwd()))}", *exports, "exec " + shlex.join(command)]
    return "\n".join([*head, "set -euo pipefail", *body]) + "\n"


def build(
    study_files: list[Path],
    url: str,
    cache_dir: Path,
    data_dir: str | None,
    options: SlurmOptions,
    folder: Path,
    python: str = sys.executable,
    name: str | None = None,
) -> Submission:
    """The prepare job's and the worker array's batch scripts (their logs go to ``folder``), and with
    ``options.confirm`` the seed confirmations of study file name ``name``: an array of as many workers, after the
    worker array succeeded, sharing the confirmation points through the same claims."""
    run_study = str(Path(__file__).resolve().parents[2] / "run_study.py")
    files = [str(path.resolve()) for path in study_files]
    common = ["--cache-dir", str(cache_dir.resolve())]
    if data_dir is not None:
        common += ["--data-dir", str(Path(data_dir).resolve())]
    env = {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0"), "PYTHONUNBUFFERED": "1"}
    prepare_workers = str(max(1, options.gpus_per_worker))
    prepare = [python, run_study, "prepare", *files, "--storage", url, *common, "--workers", prepare_workers]
    if options.time is not None:  # the prepare job refuses a --time in which an epoch cannot finish
        prepare += ["--time-limit", options.time]
    prepare_lines = _directives(options, "alp-kd-prepare", str(folder / "prepare-%j.out"))
    worker_lines = _directives(options, "alp-kd-workers", str(folder / "worker-%A_%a.out"))
    worker_lines = [
        f"--array=0-{options.workers - 1}",
        "--requeue",
        f"--signal=B:USR1@{SIGNAL_LEAD_SECONDS}",
        *worker_lines,
    ]
    run = [python, run_study, "run", *files, "--storage", url, *common]
    confirm = None
    if options.confirm is not None:
        top, seeds = options.confirm
        confirm_lines = [
            f"--array=0-{options.workers - 1}",
            "--requeue",
            f"--signal=B:USR1@{SIGNAL_LEAD_SECONDS}",
            *_directives(options, "alp-kd-confirm", str(folder / "confirm-%A_%a.out")),
        ]
        command = [python, run_study, "confirm", "--name", str(name), "--top", str(top), "--seeds", str(seeds)]
        confirm = _script(confirm_lines, [*command, "--storage", url, *common], {**env, REQUEUE_ENV: "1"})
    return Submission(
        folder=folder,
        prepare=_script(prepare_lines, prepare, env),
        workers=_script(worker_lines, run, {**env, REQUEUE_ENV: "1"}),
        confirm=confirm,
    )


def submit(submission: Submission) -> list[str]:
    """Submit the prepare job, then the worker array after it (then the confirmation array after that); the job
    ids. If a later job cannot be submitted the earlier ones are cancelled again (nothing half-submitted)."""
    submission.folder.mkdir(parents=True, exist_ok=True)
    scripts = [("prepare", submission.prepare), ("workers", submission.workers), ("confirm", submission.confirm)]
    submitted: list[str] = []
    for name, text in scripts:
        if text is None:
            continue
        path = submission.folder / f"{name}.sbatch"
        path.write_text(text)
        path.chmod(0o600)  # the database URL (a password) is in it
        after = [f"--dependency=afterok:{submitted[-1]}", "--kill-on-invalid-dep=yes"] if submitted else []
        try:
            submitted.append(_sbatch([*after, str(path)]))
        except HarnessError:
            if submitted:
                subprocess.run(["scancel", *submitted], capture_output=True, timeout=60)
            raise
    return submitted


def _sbatch(arguments: list[str]) -> str:
    done = subprocess.run(["sbatch", "--parsable", *arguments], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()
        raise HarnessError(f"sbatch refused the job: {last[-1] if last else f'exit {done.returncode}'}")
    return done.stdout.strip().split(";")[0]


def masked(text: str, url: str) -> str:
    """A script with the database password replaced by ``***``."""
    return text.replace(url, mask_url(url))


def requeue_self() -> str | None:
    """``scontrol requeue`` this array task (after USR1: its time limit is near); a line saying what happened, or
    ``None`` outside a job launched by :func:`submit`."""
    job = slurm_job()  # ARRAY_TASK: SLURM_JOB_ID of an array's last task is the array's id, i.e. every task
    if os.environ.get(REQUEUE_ENV) != "1" or job is None:
        return None
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"could not requeue SLURM job {job}: {error}"
    if done.returncode != 0:
        return f"could not requeue SLURM job {job}: {(done.stderr or done.stdout).strip()}"
    return f"requeued SLURM job {job}"
