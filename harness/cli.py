"""Command line: ``python run_study.py {run,report,status} ...``.

Every user error (a :class:`~harness.util.errors.HarnessError`) is printed as one line,
``error: <message>``, and the process exits with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from harness.util.errors import HarnessError
from harness.util.quiet import quiet_libraries
from harness.util.signals import EXIT_TERMINATED, Terminated, cooperative, terminate_like_interrupt

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
        dest="command", required=True, metavar="{run,plan,report,status,confirm,reproduce,export}"
    )

    run = commands.add_parser(
        "run",
        help="run (or continue) the studies of a study file",
        description="Fine-tune the teacher once (cached), then run one trial per valid grid "
        "point for every method of the study file. Re-running the same command "
        "continues where it stopped: finished trials are kept.",
    )
    run.add_argument("study_file", type=Path, help="YAML study file, e.g. studies/demo.yaml")
    _storage_arg(run)
    run.add_argument(
        "--data-dir",
        default=None,
        help="folder with GLUE in the official layout (<DIR>/<TASK>/train.tsv); default: $GLUE_DIR, "
        "then the study file's data_dir, then the Hugging Face hub",
    )
    run.add_argument("--n-trials", type=int, default=None, help="run at most N trials per method in this call")
    run.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where fine-tuned teachers, teacher outputs and epoch checkpoints live "
        "(default: $HARNESS_CACHE or .cache in the repo)",
    )
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
    confirm.add_argument("--data-dir", default=None, help="GLUE folder (default: $GLUE_DIR, then the hub)")
    confirm.add_argument("--cache-dir", type=Path, default=None)
    _tensorboard_arg(confirm)

    again = commands.add_parser(
        "reproduce",
        help="re-run one stored trial from its stored config alone",
        description="Re-run one trial (by Optuna trial_id, as shown by status) from the "
        "config, grid point and seed stored in the database, and compare.",
    )
    again.add_argument("trial_id", type=int)
    _storage_arg(again)
    again.add_argument("--data-dir", default=None, help="GLUE folder (default: $GLUE_DIR, then the hub)")
    again.add_argument("--cache-dir", type=Path, default=None)

    planned = commands.add_parser(
        "plan",
        help="what a sweep will cost (trainings, time measured here, disk) before it runs; creates no database",
        description="Per method the grid size and the trainings after sharing equivalent points, examples per "
        "trial, the time estimated from a short micro-run on this machine, and the disk the teacher, its "
        "output cache and the kept students take. Creates no database.",
    )
    planned.add_argument("study_file", type=Path)
    planned.add_argument("--data-dir", default=None, help="GLUE folder (default: $GLUE_DIR, then the hub)")
    planned.add_argument("--cache-dir", type=Path, default=None)
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
    export.add_argument("--data-dir", default=None, help="GLUE folder (default: $GLUE_DIR, then the hub)")
    export.add_argument("--cache-dir", type=Path, default=None)
    return parser


def _open_storage(url: str | None, create: bool = False, with_optuna: bool = True):
    """The study database; only ``run`` creates one (a mistyped SQLite path elsewhere is an error)."""
    from harness.store.storage import Storage
    from harness.store.urls import default_storage

    if url is None:
        if create:
            (REPO_ROOT / "studies").mkdir(exist_ok=True)
        url = default_storage(REPO_ROOT)
    return Storage(url, create=create, with_optuna=with_optuna)


def _data_dir(args: argparse.Namespace, config=None) -> Path | None:
    """The GLUE folder: ``--data-dir``, then ``$GLUE_DIR``, then the study file's ``data_dir`` (relative to
    the study file; commands without a study file have none), else ``None`` for the hub."""
    from harness.data.loading import resolve_data_dir

    study_dir = None
    if config is not None and config.data_dir is not None:
        study_dir = str((args.study_file.parent / config.data_dir).resolve())
    return resolve_data_dir(args.data_dir, os.environ.get("GLUE_DIR"), study_dir)


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


def cmd_run(args: argparse.Namespace) -> int:
    from harness.distill.experiment import Experiment
    from harness.spec.config import load_study
    from harness.store.urls import parse_url
    from harness.sweep.driver import Runner
    from harness.sweep.sharing import describe_grids
    from harness.sweep.workers import assign_devices, parse_devices, run_workers

    quiet_libraries(transformers=True)
    import torch

    if args.n_trials is not None and args.n_trials < 1:
        raise HarnessError(f"--n-trials must be at least 1, got {args.n_trials}")
    if args.workers < 1:
        raise HarnessError(f"--workers must be at least 1, got {args.workers}")
    if args.max_attempts < 1:
        raise HarnessError(f"--max-attempts must be at least 1, got {args.max_attempts}")
    devices = parse_devices(args.devices)
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    first = assign_devices(1, visible, devices)[0]  # a bad --devices fails now
    config = load_study(args.study_file)
    if args.storage is not None:
        parse_url(args.storage)  # a bad URL fails now, before the data are read
    data_dir = _data_dir(args, config)
    options = _run_options(args, max_attempts=args.max_attempts, n_trials=args.n_trials)
    cache_dir = options.cache_dir
    # data and teacher checked before the database is touched
    experiment = Experiment(config, data_dir, cache_dir, device=torch.device(first))
    experiment.check_methods()  # a plug-in's loss run once on two examples, before the database exists
    storage = _open_storage(args.storage, create=True)
    print(
        f"study file {args.study_file}: task {config.task}, teacher {config.teacher}, "
        f"{config.student_layers}-layer student, sampler {config.search.sampler}"
    )
    print("\n".join(describe_grids(config)))
    print(f"storage {storage.masked}; data {data_dir or 'Hugging Face hub (nyu-mll/glue)'}")
    if args.retry_failed:  # once, before any worker starts
        freed = sum(storage.retry_failed(config.study_name(method)) for method in config.methods)
        print(f"--retry-failed: {freed} failed grid point(s) get a fresh set of attempts")
    if args.workers == 1:
        Runner(config, storage, experiment, options).run()
    else:
        experiment.prepare_shared()  # fine-tune the teacher and cache its outputs once, before the workers start
        code = run_workers(args.workers, config, storage.url, data_dir, options, devices)
        if code != 0:
            return code
    print(
        f"done. Report: python run_study.py report --name {config.name}"
        + ("" if args.storage is None else f" --storage '{storage.masked}'")
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from harness.report.document import write_report

    quiet_libraries()  # Optuna, now that the report imported it

    storage = _open_storage(args.storage)
    command = (
        "python run_study.py report"
        + (f" --name {args.name}" if args.name else "")
        + (f" --storage {shlex.quote(storage.masked)}" if args.storage else "")
        + (f" --reference {shlex.quote(str(args.reference))}" if args.reference else "")
        + (f" --budget {args.budget}" if args.budget else "")
    )
    path = write_report(storage, args.out, args.name, command, reference=args.reference, budget=args.budget)
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


def console() -> None:
    """The ``alp-kd`` command (``pip install -e .``): the same sub-commands as ``run_study.py``."""
    sys.exit(main(prog="alp-kd"))


def cmd_plan(args: argparse.Namespace) -> int:
    from harness.spec.config import load_study
    from harness.tools.plan import plan_lines

    quiet_libraries(transformers=True)
    config = load_study(args.study_file)
    data_dir = _data_dir(args, config)
    print("\n".join(plan_lines(config, data_dir, args.cache_dir or _default_cache(), measure=not args.no_measure)))
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
    stops = cooperative() if args.command in ("run", "confirm", "reproduce", "export") else contextlib.nullcontext()
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
        print(
            f"{'terminated (SIGTERM)' if terminated else 'interrupted'}; run the same command again to continue",
            file=sys.stderr,
        )
        return EXIT_TERMINATED if terminated else 130
