"""Command line: ``python run_study.py COMMAND ...`` (the same as ``alp-kd COMMAND ...``).

=============  ==================================================================================
``run``        run the study files' sweeps (``--workers K`` processes; resumes what was interrupted)
``prepare``    fine-tune every teacher and write every teacher-output cache the study files need
``slurm``      submit a prepare job and a worker array to SLURM (``--dry-run`` prints them)
``plan``       grid sizes, trainings after sharing, time and disk of a sweep, before anything runs
``report``     the markdown report and figures, from the database alone
``status``     per study: grid size, complete, running (worker, age), failed, pruned, left, ETA
``confirm``    re-run the best configurations with fresh seeds
``reproduce``  re-run one stored trial from its stored config alone and compare
``export``     a trial's student as a Hugging Face folder (and GLUE submission files)
``db``         ``db start|stop|url DIR``: a PostgreSQL server of one's own in DIR, for ``--storage``
=============  ==================================================================================

Every user error (a :class:`~harness.util.errors.HarnessError`) is printed as one line,
``error: <message>``, and the process exits with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from harness.util.errors import HarnessError
from harness.util.quiet import quiet_libraries
from harness.util.signals import (
    EXIT_TERMINATED,
    Terminated,
    cooperative,
    requeue_requested,
    terminate_like_interrupt,
)

if TYPE_CHECKING:
    from harness.sweep.driver import RunOptions

REPO_ROOT = Path(__file__).resolve().parents[1]


def _default_cache() -> Path:
    return Path(os.environ.get("HARNESS_CACHE", REPO_ROOT / ".cache"))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _storage_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage",
        metavar="URL",
        default=None,
        help="SQLAlchemy URL of the study database (default: sqlite:///studies/harness.db in the "
        "repo; postgresql://user:pass@host/db for workers on many machines)",
    )


def build_parser(prog: str = "run_study.py") -> argparse.ArgumentParser:
    from harness import __version__

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Optuna sweeps of knowledge-distillation methods (ALP-KD and its baselines) on GLUE.",
    )
    parser.add_argument("--version", action="version", version=f"alp-kd {__version__}")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="{run,prepare,plan,slurm,report,status,confirm,reproduce,export,db}"
    )

    _sweep_parsers(commands)
    _result_parsers(commands)
    _db_parsers(commands)
    return parser


def _sweep_parsers(commands) -> None:
    """``run``, ``prepare``, ``slurm``, ``plan``: the commands that start (or size) a sweep."""
    run = commands.add_parser(
        "run",
        help="run (or continue) the studies of a study file",
        description="Fine-tune the teacher once (cached), then run one trial per valid grid "
        "point for every method of the study file. Re-running the same command "
        "continues where it stopped: finished trials are kept.",
    )
    _study_files_arg(
        run,
        "YAML study file(s), e.g. studies/demo.yaml; with several, a worker takes its points from the first "
        "file that has a free one and exits when every file is done",
    )
    _storage_arg(run)
    _data_arg(run)
    run.add_argument("--n-trials", type=int, default=None, help="run at most N trials per method in this call")
    _cache_arg(run)
    _tensorboard_arg(run)
    run.add_argument("--max-attempts", type=int, default=3, help="attempts per grid point before giving up on it")
    run.add_argument(
        "--retry-failed",
        action="store_true",
        help="give the grid points that were given up on (see status) a fresh set of attempts",
    )
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes on this machine, placed round-robin over the visible GPUs (several may share "
        "one); the same command on other machines with the same --storage joins the sweep",
    )
    run.add_argument(
        "--devices",
        default=None,
        metavar="0,1,...",
        help="the GPUs the workers use (indices as CUDA shows them, i.e. after CUDA_VISIBLE_DEVICES); default: all",
    )

    prepare = commands.add_parser(
        "prepare",
        help="fine-tune every teacher and write every teacher-output cache the study files need; no student",
        description="Fine-tune the teacher of every study file and cache its outputs, up to --workers at once "
        "(one per GPU); trains no student and creates no database. Idempotent: a run after it starts training "
        "at once.",
    )
    _study_files_arg(prepare)
    _data_arg(prepare)
    _cache_arg(prepare)
    prepare.add_argument("--workers", type=int, default=1, help="teachers fine-tuned at once (one process each)")
    prepare.add_argument("--devices", default=None, metavar="0,1,...", help="the GPUs to use (default: all)")
    prepare.add_argument(
        "--storage",
        metavar="URL",
        default=None,
        help="also check first that this database is reachable from here (the slurm launcher's prepare job does)",
    )
    prepare.add_argument(
        "--time-limit",
        metavar="TIME",
        default=None,
        help="the workers' SLURM --time: refuse, before any fine-tuning, when one epoch of a study file does not fit "
        "in it less the stop signal's lead, by plan's estimate on this node (the slurm launcher's prepare job does)",
    )

    slurm = commands.add_parser(
        "slurm",
        help="run the study files on a SLURM cluster: a prepare job, then a worker job array after it",
        description="Submit a prepare job (database check, every teacher and teacher-output cache) and a job array "
        "of --workers tasks that starts after it succeeds; each task runs 'run' over all the study files on its own "
        "GPU(s), against the shared --storage and --cache-dir. Preempted or timed-out workers give their point back "
        "and are requeued; the requeued worker resumes from the epoch checkpoint.",
    )
    _study_files_arg(slurm)
    # every flag's default is None: a flag given overrides the study files' slurm: block, which overrides the default
    slurm.add_argument("--workers", type=_positive_int, default=None, help="array tasks, one worker each")
    slurm.add_argument("--gpus-per-worker", type=int, default=None, help="GPUs per worker (0: CPU workers; default 1)")
    slurm.add_argument("--cpus-per-worker", type=int, default=None, help="default 4")
    slurm.add_argument("--mem", default=None, help="sbatch --mem per worker, e.g. 32G")
    for flag in ("partition", "time", "account", "qos", "constraint", "nodelist"):
        slurm.add_argument(f"--{flag}", default=None, help=f"sbatch --{flag} of both jobs")
    slurm.add_argument(
        "--sbatch",
        action="append",
        default=[],
        metavar="OPTION",
        help="an extra sbatch option for both jobs, e.g. --sbatch=--exclusive (repeatable)",
    )
    _storage_arg(slurm)
    _data_arg(slurm, "GLUE folder every node sees (default: $GLUE_DIR, the hub)")
    _cache_arg(slurm, "a folder every node mounts (not /tmp)")
    slurm.add_argument("--log-dir", type=Path, default=None, help="job scripts and logs (default: CACHE/slurm/)")
    slurm.add_argument(
        "--confirm",
        nargs=2,
        type=_positive_int,
        default=None,
        metavar=("TOP", "SEEDS"),
        help="then 'confirm --top TOP --seeds SEEDS' on the cluster: a worker array after the sweep's",
    )
    slurm.add_argument("--dry-run", action="store_true", help="print the batch scripts; submit nothing")


def _result_parsers(commands) -> None:
    """``report``, ``status``, ``confirm``, ``reproduce``, ``export``: the commands on a sweep's results."""
    report = commands.add_parser(
        "report",
        help="write the markdown report of a database",
        description="Write README.md (tables), figures/*.png and trials.csv built from the database alone.",
    )
    _storage_arg(report)
    report.add_argument("--out", type=Path, default=REPO_ROOT / "reports" / "latest", help="output folder")
    report.add_argument("--name", default=None, help="only the studies of this study file (its 'name')")
    report.add_argument(
        "--budget",
        type=_positive_int,
        default=None,
        metavar="N",
        help="the equal budget n of the 'Equal budget' section (default: the smallest grid)",
    )
    report.add_argument(
        "--focus",
        nargs="+",
        default=None,
        metavar="METHOD",
        help="the methods the paired comparisons pit against every other method (default: the ALP family)",
    )
    report.add_argument(
        "--family",
        default=None,
        metavar="task|report",
        help="the correction family of the paired tests: one per task, or the whole report (default: report)",
    )
    report.add_argument(
        "--reference",
        type=Path,
        default=None,
        metavar="FILE",
        help="YAML list of published scores {method, task, metric, value (percent), source}; "
        "shown as extra '(published)' rows",
    )

    status = commands.add_parser(
        "status",
        help="list the studies of a database and their trial counts",
        description="List every study with its grid size and trial counts.",
    )
    _storage_arg(status)

    confirm = commands.add_parser(
        "confirm",
        help="re-run the best configurations with fresh seeds",
        description="For every study in the database (or those of --name), re-run the "
        "K best grid configurations with S fresh seeds each, stored as "
        "confirmation trials; the report then shows mean ± std over seeds "
        "and a test of ALP against each baseline.",
    )
    confirm.add_argument("--top", type=int, default=1, metavar="K")
    confirm.add_argument("--seeds", type=int, default=3, metavar="S")
    confirm.add_argument("--name", default=None, help="only the studies of this study file (its 'name')")
    _storage_arg(confirm)
    _data_arg(confirm)
    _cache_arg(confirm)
    _tensorboard_arg(confirm)

    again = commands.add_parser(
        "reproduce",
        help="re-run one stored trial from its stored config alone",
        description="Re-run one trial (by Optuna trial_id, as shown by status) from the "
        "config, grid point and seed stored in the database, and compare.",
    )
    again.add_argument("trial_id", type=int)
    _storage_arg(again)
    _data_arg(again)
    _cache_arg(again)

    planned = commands.add_parser(
        "plan",
        help="what a sweep will cost (trainings, time measured here, disk) before it runs; creates no database",
        description="Per method the grid size and the trainings after sharing equivalent points, examples per "
        "trial, the time estimated from a short micro-run on this machine, and the disk the teacher, its "
        "output cache and the kept students take. Creates no database.",
    )
    _study_files_arg(planned)
    planned.add_argument(
        "--gpus", type=_positive_int, default=1, help="with several files: the wall time on this many devices"
    )
    _data_arg(planned)
    _cache_arg(planned)
    planned.add_argument("--no-measure", action="store_true", help="skip the timed micro-run")

    export = commands.add_parser(
        "export",
        help="write a trial's student (at its reported epoch) as a Hugging Face folder with a model card",
        description="Write one trial's student, at its reported epoch, as a Hugging Face folder "
        "(config.json with label names, model.safetensors, tokenizer) with a model card README.md. Kept "
        "weights are copied; otherwise the trial is re-trained deterministically from its stored config. "
        "The folder is re-scored on dev and compared with the database.",
    )
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("trial_id", type=int, nargs="?", help="the trial's trial_id (see: status, trials.csv)")
    which.add_argument("--best", action="store_true", help="the best trial of the matching studies")
    export.add_argument("--name", default=None, help="with --best: only the studies of this study file")
    export.add_argument("--task", default=None, help="with --best: only this task's studies")
    export.add_argument("--method", default=None, help="with --best: only this method's study")
    export.add_argument("--out", type=Path, required=True, help="a new folder for the student")
    export.add_argument(
        "--predict",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write GLUE leaderboard files (<TASK>.tsv) for DIR/<TASK>/test.tsv (or DIR/test.tsv)",
    )
    _storage_arg(export)
    _data_arg(export)
    _cache_arg(export)


def _db_parsers(commands) -> None:
    """``db start|stop|url DIR``: a user-space PostgreSQL server for people who have no database server."""
    db = commands.add_parser(
        "db",
        help="a PostgreSQL server of your own in a folder (start, stop, url), for --storage",
        description="Run a PostgreSQL server as yourself, its cluster in DIR (initdb and pg_ctl of the PostgreSQL "
        "server package): password authentication (scram-sha-256) over TCP, the generated password only in "
        "DIR/password (mode 0600), one database 'sweeps'. 'start' makes the cluster on first use and prints the "
        "URL with the password masked; 'db url DIR' prints it whole, for --storage.",
    )
    actions = db.add_subparsers(dest="db_command", required=True, metavar="{start,stop,url}")
    start = actions.add_parser(
        "start",
        help="make (first time) and start the server in DIR; already running: print its URL again",
        description="Make the cluster in DIR (a new or empty folder) and start it, or start the cluster DIR holds; "
        "if it runs already, only print its URL. --host and --port are remembered for the next start.",
    )
    start.add_argument("folder", type=Path, metavar="DIR")
    start.add_argument(
        "--host",
        default=None,
        metavar="ADDR",
        help="the name or address it listens on and the URL names (default: this machine's hostname, so that "
        "compute nodes reach it; 127.0.0.1 for this machine only)",
    )
    start.add_argument("--port", type=_positive_int, default=None, help="TCP port (default: a free one, remembered)")
    start.add_argument(
        "--wait",
        action="store_true",
        help="then stay in the foreground until SIGTERM or Ctrl-C and stop the server (a SLURM job of its own)",
    )
    stop = actions.add_parser("stop", help="stop the server in DIR (pg_ctl stop -m fast)")
    stop.add_argument("folder", type=Path, metavar="DIR")
    url = actions.add_parser("url", help='print the server\'s URL, password included: --storage "$(... db url DIR)"')
    url.add_argument("folder", type=Path, metavar="DIR")


def _open_storage(url: str | None, create: bool = False, with_optuna: bool = True):
    """The study database; only ``run`` creates one (a mistyped SQLite path elsewhere is an error)."""
    from harness.store.storage import Storage
    from harness.store.urls import default_storage

    if url is None:
        if create:
            (REPO_ROOT / "studies").mkdir(exist_ok=True)
        url = default_storage(REPO_ROOT)
    return Storage(url, create=create, with_optuna=with_optuna)


def _data_dir(args: argparse.Namespace, config=None, study_file: Path | None = None) -> Path | None:
    """The GLUE folder: ``--data-dir``, then ``$GLUE_DIR``, then the study file's ``data_dir`` (relative to
    the study file; commands without a study file have none), else ``None`` for the hub."""
    from harness.data.loading import resolve_data_dir

    study_dir = None
    if config is not None and config.data_dir is not None:
        study_dir = str(((study_file or args.study_file).parent / config.data_dir).resolve())
    return resolve_data_dir(args.data_dir, os.environ.get("GLUE_DIR"), study_dir)


def _study_files_arg(parser: argparse.ArgumentParser, help: str = "YAML study file(s), e.g. studies/demo.yaml") -> None:
    parser.add_argument("study_files", type=Path, nargs="+", metavar="study_file", help=help)


def _data_arg(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    parser.add_argument(
        "--data-dir",
        default=None,
        help=help
        or "folder with GLUE in the official layout (<DIR>/<TASK>/train.tsv); default: $GLUE_DIR, "
        "then the study file's data_dir, then the Hugging Face hub",
    )


def _cache_arg(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help=help
        or "where fine-tuned teachers, teacher outputs and epoch checkpoints live "
        "(default: $HARNESS_CACHE or .cache in the repo)",
    )


def _tensorboard_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tensorboard",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write TensorBoard event files: one run per trial, DIR/<study>/<point> "
        "(step losses, gradient norm, lr, epoch metrics); needs the tensorboard package",
    )


def _run_options(args: argparse.Namespace, **more) -> RunOptions:
    """The options of ``run`` and ``confirm``; ``--tensorboard`` is checked before anything trains."""
    from harness.sweep.driver import RunOptions

    if args.tensorboard is not None:
        from harness.sweep.tensorboard import require

        require()
    return RunOptions(cache_dir=args.cache_dir or _default_cache(), tensorboard=args.tensorboard, **more)


def _check_run_args(args: argparse.Namespace) -> None:
    if getattr(args, "n_trials", None) is not None and args.n_trials < 1:
        raise HarnessError(f"--n-trials must be at least 1, got {args.n_trials}")
    if args.workers < 1:
        raise HarnessError(f"--workers must be at least 1, got {args.workers}")
    if getattr(args, "max_attempts", 1) < 1:
        raise HarnessError(f"--max-attempts must be at least 1, got {args.max_attempts}")


def _experiments(args: argparse.Namespace, device) -> list[tuple[Path, object, Path | None, object]]:
    """(study file, config, data folder, experiment) of every study file, in order; all of them are loaded and
    checked (study file, data, teacher) before anything is created, so a bad second file stops the command
    before the first one trains."""
    from harness.distill.experiment import Experiment
    from harness.spec.config import load_study

    loaded = []
    for study_file in args.study_files:
        config = load_study(study_file)
        data_dir = _data_dir(args, config, study_file)
        experiment = Experiment(config, data_dir, args.cache_dir or _default_cache(), device=device)
        if not config.fixed.teacher.finetune:  # scored on dev, refused at chance, before anything is created
            experiment.teacher.prepare()
        experiment.check_methods()  # a plug-in's loss run once on two examples, before the database exists
        loaded.append((study_file, config, data_dir, experiment))
    names = [config.name + "/" + config.task for _, config, _, _ in loaded]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise HarnessError(f"study {twice[0]} is named by two of the study files; give each file its own name/task")
    return loaded


def cmd_run(args: argparse.Namespace) -> int:
    from harness.store.urls import parse_url
    from harness.sweep.driver import Runner
    from harness.sweep.sharing import describe_grids
    from harness.sweep.workers import assign_devices, parse_devices, run_workers

    quiet_libraries(transformers=True)
    import torch

    from harness.distill.device import check_gpu_arch

    check_gpu_arch()  # a GPU this torch build has no kernels for stops here, with the fix
    _check_run_args(args)
    devices = parse_devices(args.devices)
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    first = assign_devices(1, visible, devices)[0]  # a bad --devices fails now
    if args.storage is not None:
        parse_url(args.storage)  # a bad URL fails now, before the data are read
    options = _run_options(args, max_attempts=args.max_attempts, n_trials=args.n_trials)
    # every file's data and teacher checked before the database is touched (a teacher used as it is, finetune:
    # false, is also scored on dev and refused at chance here)
    loaded = _experiments(args, torch.device(first))
    storage = _open_storage(args.storage, create=True)
    print(f"storage {storage.masked}")
    if args.retry_failed:  # once, before any worker starts
        freed = sum(
            storage.retry_failed(config.study_name(method)) for _, config, _, _ in loaded for method in config.methods
        )
        print(f"--retry-failed: {freed} failed grid point(s) get a fresh set of attempts")
    for study_file, config, data_dir, experiment in loaded:  # a file is left only when none of its points is free
        print(
            f"study file {study_file}: task {config.task}, teacher {config.teacher}, "
            f"{config.student_layers}-layer student, sampler {config.search.sampler}"
        )
        print("\n".join(describe_grids(config)))
        print(f"data {data_dir or 'Hugging Face hub (nyu-mll/glue)'}")
        if args.workers == 1:
            Runner(config, storage, experiment, options).run()
        else:
            experiment.prepare_shared()  # fine-tune the teacher and cache its outputs once, before the workers start
            code = run_workers(args.workers, config, storage.url, data_dir, options, devices)
            if code != 0:
                return code
    names = sorted({config.name for _, config, _, _ in loaded})
    print(
        "done. Report: "
        + "; ".join(
            f"python run_study.py report --name {name}"
            + ("" if args.storage is None else f" --storage '{storage.masked}'")
            for name in names
        )
    )
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """Fine-tune every teacher and write every teacher-output cache the study files need; trains no student.
    Idempotent: what is cached already is only checked. With ``--workers K`` up to K teachers at once, each
    process on its own GPU (round-robin over the visible ones)."""
    quiet_libraries(transformers=True)
    import torch

    from harness.distill.device import check_gpu_arch
    from harness.sweep.workers import assign_devices, parse_devices, prepare_in_parallel

    check_gpu_arch()  # as in run: a GPU this torch build has no kernels for stops here, with the fix
    _check_run_args(args)
    if args.storage is not None:  # the launcher's prepare job: a database the nodes cannot reach fails now
        storage = _open_storage(args.storage, create=True, with_optuna=False)
        print(f"storage {storage.masked} reachable from {socket.gethostname()}")
    devices = parse_devices(args.devices)
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    placed = assign_devices(max(args.workers, 1), visible, devices)
    loaded = _experiments(args, torch.device(placed[0]))
    if args.time_limit is not None:  # on the workers' kind of node, before any fine-tuning
        from harness.tools.plan import check_time_limit

        for study_file, config, data_dir, experiment in loaded:
            print(check_time_limit(study_file, config, data_dir, experiment, args.time_limit))
    if args.workers == 1 or len(loaded) == 1:
        for study_file, config, _, experiment in loaded:
            experiment.prepare_shared()
            print(f"{study_file}: teacher {config.teacher} on {config.task} ready ({experiment.teacher.key()})")
    else:
        code = prepare_in_parallel(
            [(config, data_dir) for _, config, data_dir, _ in loaded], args.cache_dir or _default_cache(), placed
        )
        if code != 0:
            return code
    print(f"prepared {len(loaded)} study file(s); no student was trained")
    return 0


def cmd_slurm(args: argparse.Namespace) -> int:
    from harness.spec.config import load_study
    from harness.store.urls import default_storage
    from harness.sweep import slurm

    url = args.storage or default_storage(REPO_ROOT)
    cache_dir = args.cache_dir or _default_cache()
    configs = [load_study(path) for path in args.study_files]  # a bad study file fails before anything is sent
    # each flag has the dest of the slurm: block key it overrides
    flags = {field: getattr(args, field) for field in slurm.SlurmBlock.model_fields}
    flags["confirm"] = None if args.confirm is None else tuple(args.confirm)
    blocks = [(str(path), config.slurm) for path, config in zip(args.study_files, configs)]
    options = slurm.options_from(blocks, flags)
    names = sorted({config.name for config in configs})
    if args.confirm is not None and len(names) > 1:
        raise HarnessError(f"--confirm needs study files of one name (confirm --name N); these have {', '.join(names)}")
    slurm.check_setup(url, cache_dir, options, args.dry_run)
    data_dir = args.data_dir or os.environ.get("GLUE_DIR")
    folder = (args.log_dir or cache_dir / "slurm").resolve()
    submission = slurm.build(args.study_files, url, cache_dir, data_dir, options, folder, name=names[0])
    follow = [f"python run_study.py status --storage {shlex.quote(slurm.mask_url(url))}"] + [
        f"python run_study.py report --name {name} --storage {shlex.quote(slurm.mask_url(url))}" for name in names
    ]
    if args.dry_run:
        print(f"dry run: would submit, in {folder}:")
        print("# prepare.sbatch\n" + slurm.masked(submission.prepare, url))
        print("# workers.sbatch (submitted with --dependency=afterok:<prepare job> --kill-on-invalid-dep=yes)")
        print(slurm.masked(submission.workers, url))
        if submission.confirm is not None:
            print("# confirm.sbatch (submitted with --dependency=afterok:<worker array> --kill-on-invalid-dep=yes)")
            print(slurm.masked(submission.confirm, url))
        print("then follow it with:\n  " + "\n  ".join(follow))
        return 0
    jobs = slurm.submit(submission)
    prepare, workers = jobs[:2]
    print(
        f"submitted prepare job {prepare} and worker array {workers} (0-{options.workers - 1}, after {prepare})"
        + (f", confirmation array {jobs[2]} (after {workers})" if len(jobs) > 2 else "")
    )
    print(f"logs in {folder}; follow the sweep with:\n  squeue -j {','.join(jobs)}\n  " + "\n  ".join(follow))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from harness.report.document import write_report
    from harness.report.paired import check_family, check_focus

    quiet_libraries()  # Optuna, now that the report imported it

    check_focus(args.focus), check_family(args.family)  # before the storage is opened: a bad value writes nothing
    storage = _open_storage(args.storage)
    command = (
        "python run_study.py report"
        + (f" --name {args.name}" if args.name else "")
        + (f" --storage {shlex.quote(storage.masked)}" if args.storage else "")
        + (f" --reference {shlex.quote(str(args.reference))}" if args.reference else "")
        + (f" --budget {args.budget}" if args.budget else "")
        + (" --focus " + " ".join(args.focus) if args.focus else "")
        + (f" --family {args.family}" if args.family else "")
    )
    path = write_report(
        storage,
        args.out,
        args.name,
        command,
        reference=args.reference,
        budget=args.budget,
        focus=args.focus,
        family=args.family,
    )
    print(f"report written to {path}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from harness.tools.status import study_status

    storage = _open_storage(args.storage, with_optuna=False)
    lines = study_status(storage)
    print(f"storage {storage.masked}")
    print("\n".join(lines) if lines else "no studies yet")
    return 0


def cmd_confirm(args: argparse.Namespace) -> int:
    from harness.sweep.confirm import confirm_studies

    quiet_libraries(transformers=True)
    if args.top < 1 or args.seeds < 1:
        raise HarnessError(f"--top and --seeds must be at least 1, got {args.top} and {args.seeds}")
    storage = _open_storage(args.storage)
    data_dir = _data_dir(args)
    options = _run_options(args)
    confirm_studies(storage, args.name, args.top, args.seeds, data_dir, options)
    print("done. Report: python run_study.py report" + (f" --name {args.name}" if args.name else ""))
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from harness.sweep.trial import reproduce

    quiet_libraries(transformers=True)

    storage = _open_storage(args.storage)
    data_dir = _data_dir(args)
    stored, value = reproduce(storage, args.trial_id, data_dir, args.cache_dir or _default_cache())
    print(
        f"trial {args.trial_id}: stored {stored}, reproduced {value:.6f}"
        + ("" if stored is None else f" (difference {value - stored:+.2e})")
    )
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    from harness.store import postgres

    folder = args.folder.absolute()
    if args.db_command == "url":
        print(postgres.load(folder).url())
        return 0
    if args.db_command == "stop":
        stopped = postgres.stop(folder)
        print(f"stopped the server in {folder}" if stopped else f"the server in {folder} was not running")
        return 0
    server, what = postgres.start(folder, args.host, args.port)
    said = {"created": "made and started", "started": "started", "running": "already running:"}[what]
    print(f"{said} PostgreSQL in {folder} on {server.host}:{server.port} (log {server.log})")
    if postgres.loopback_only(server.host):
        print(f"note: {server.host} is only a loopback address: no other machine can connect (--host to change)")
    print(f"storage URL: {server.url(hide_password=True)} (password in {server.password_file}, mode 0600)")
    here = shlex.quote(str(folder))
    print(f'  use: --storage "$(python run_study.py db url {here})"; stop: python run_study.py db stop {here}')
    if args.wait:
        import time

        try:
            while postgres.is_running(server):
                time.sleep(1)
            print(f"the server in {folder} stopped", file=sys.stderr)
            return 1
        finally:
            postgres.stop(folder)
    return 0


def console() -> None:
    """The ``alp-kd`` command (``pip install -e .``): the same sub-commands as ``run_study.py``."""
    sys.exit(main(prog="alp-kd"))


def cmd_plan(args: argparse.Namespace) -> int:
    from harness.distill.device import check_gpu_arch
    from harness.spec.config import load_study
    from harness.tools.plan import plan_lines, summary_lines

    quiet_libraries(transformers=True)
    check_gpu_arch()
    configs = [(path, load_study(path)) for path in args.study_files]  # every file checked before any micro-run
    cache_dir = args.cache_dir or _default_cache()
    totals: dict = {}
    for path, config in configs:
        lines = plan_lines(config, _data_dir(args, config, path), cache_dir, measure=not args.no_measure, totals=totals)
        print("\n".join(lines))
    if len(configs) > 1 or args.gpus > 1:
        print("\n".join(summary_lines(totals, args.gpus, cache_dir)))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from harness.tools.export import choose_trial, export

    quiet_libraries(transformers=True)
    if args.trial_id is not None and (args.name or args.task or args.method):
        raise HarnessError("--name, --task and --method choose among trials for --best; not with a trial_id")
    storage = _open_storage(args.storage)
    chosen = choose_trial(storage, args.trial_id, args.name, args.task, args.method)
    data_dir = _data_dir(args)
    check = export(storage, chosen, args.out, data_dir, args.cache_dir or _default_cache(), predict=args.predict)
    print(
        f"exported trial {chosen.trial._trial_id} ({chosen.study_name}) to {args.out}: {check['split']} "
        f"{check['metric']} {check['exported']:.4f} (database {check['stored']:.4f}); "
        f"model card {args.out / 'README.md'}"
    )
    return 0


def main(argv: list[str] | None = None, prog: str = "run_study.py") -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    terminate_like_interrupt()
    # commands that train stop at their next step on SIGTERM (harness.util.signals); the others at once
    stops = (
        cooperative()
        if args.command in ("run", "prepare", "confirm", "reproduce", "export")
        else contextlib.nullcontext()
    )
    try:
        quiet_libraries()
        with stops:
            return {
                "run": cmd_run,
                "report": cmd_report,
                "status": cmd_status,
                "reproduce": cmd_reproduce,
                "confirm": cmd_confirm,
                "export": cmd_export,
                "plan": cmd_plan,
                "prepare": cmd_prepare,
                "slurm": cmd_slurm,
                "db": cmd_db,
            }[args.command](args)
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # an unwritable cache folder, a full disk, ...
        where = f" {error.filename!r}" if error.filename else ""
        print(f"error: {error.strerror or type(error).__name__}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        terminated = isinstance(interrupt, Terminated)
        why = "terminated (SIGTERM)" if terminated else "interrupted"
        if terminated and requeue_requested():
            why = "stopped by SIGUSR1 (SLURM: the time limit or a preemption is near)"
        print(f"{why}; run the same command again to continue", file=sys.stderr)
        if terminated and requeue_requested():  # SIGUSR1: a SLURM worker whose time limit is near
            from harness.sweep.slurm import requeue_self

            said = requeue_self()
            if said is not None:
                print(said, file=sys.stderr, flush=True)
        return EXIT_TERMINATED if terminated else 130
