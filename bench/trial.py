"""Benchmark: our distillation trials against a reference KD trainer written on HF ``Trainer``.

``python -m bench.trial`` runs, in one process, on the same data and the same student init:

* **reference**: what a user would write: a ``transformers.Trainer`` subclass whose ``compute_loss``
  runs the frozen teacher under ``no_grad`` on every batch and adds the same KD + ALP loss as our ALP
  trial (:func:`~harness.spec.methods.kd_loss`, :class:`~harness.spec.methods.InterLayerLoss`). Same lr, batch
  size, epochs, warm-up steps, weight decay and clipping; otherwise HF's defaults: random sampler,
  ``DataCollatorWithPadding``, ``adamw_torch_fused``, no decay on biases/LayerNorm. It evaluates every
  epoch (on the student alone), saves nothing and reports nowhere.
* **nkd / kd / alp**: our trials (:meth:`Experiment.run_trial`); kd and alp read the memory-mapped
  teacher-output cache (alp also its α probe's dev states, which the teacher's own dev scoring keeps in its
  folder on the CPU), whose first build is timed on its own, as ``prepare`` would build it, and reported with
  and without.

Teacher fine-tuning is excluded from every timing (it is done once and cached, in the usual cache
folder); teacher outputs, checkpoints and the sweep's SQLite database live in a temporary folder, so
every run pays the cache build afresh. Then it measures the **sweep cost to reach the exhaustive
grid's best score** (within ``--tolerance``): the full ALP grid is run for real, and TPE with median
pruning is replayed on it ``--sweep-replays`` times (:mod:`bench.sweep`); the ratio is the
mean share of the grid's compute a replay spends until a trial reaches the best. ``--repeats N`` runs the four
main runs in N rounds, one after another, and reports each run's median (the cache is built once, and
charged to every round's trials); a single run's ratio moves by a few hundredths on a quiet 2-core
machine. ``--profile``
profiles one ALP student step. The last three lines are machine-readable::

    ratio alp_trial/reference = X
    ratio alp_step/nkd_step = Y
    ratio sweep_cost_to_best = Z

Timings are wall-clock and share the machine with whatever else runs: on a busy CPU they are noisy.
A bigger setting on a GPU, e.g.::

    python -m bench.trial --train-samples 20000 --epochs 3 --max-seq-length 128 --student-layers 4 \\
        --teacher-train-samples 0 --teacher-epochs 3 --sweep-samples 20000 --sweep-epochs 3 \\
        --sweep-lr 1e-5 2e-5 5e-5 --sweep-eta 0 0.2 0.5 0.7 --sweep-lambda 0 0.2 0.5 0.7   # the paper's 39 points
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.profile import StudentSteps, profile_step
from bench.runs import RunResult, build_cache, run_ours, run_reference
from bench.sweep import SweepResult, run_sweep
from harness.data.loading import resolve_data_dir
from harness.distill.experiment import Experiment
from harness.spec.config import StudyConfig, parse_study
from harness.spec.methods import get_method
from harness.util.errors import HarnessError
from harness.util.quiet import quiet_libraries

REPO_ROOT = Path(__file__).resolve().parents[1]
TEACHER_LR = 5e-5  # the demo's teacher recipe, so the bench reuses the demo's cached teacher


@dataclass(frozen=True)
class Settings:
    """One benchmark setting; the defaults are the small CPU one."""

    task: str = "SST-2"
    teacher: str = "minilm-l6"
    student_layers: int = 2
    train_samples: int = 2000  # ~126 steps: fewer and a 2-layer MiniLM student stays at the majority class
    epochs: int = 2
    max_seq_length: int = 64
    batch_size: int = 32
    lr: float = 2e-4
    eta: float = 0.5
    lam: float = 0.2
    seed: int = 42
    teacher_train_samples: int = 8000  # 0: the whole training set
    teacher_epochs: int = 1
    sweep_samples: int = 1500  # 27 trials of ~12 s; fewer examples and the student stays at the majority class
    sweep_epochs: int = 2
    sweep_lr: tuple[float, ...] = (2e-4, 5e-4, 1e-3)  # a 27-point grid: the paper's 39 do not fit in 10 minutes
    sweep_eta: tuple[float, ...] = (0.0, 0.2, 0.5)
    sweep_lambda: tuple[float, ...] = (0.0, 0.2, 0.5)
    sweep_replays: int = 20
    tolerance: float = 0.003
    data_dir: Path | None = None
    cache_dir: Path = REPO_ROOT / ".cache"
    skip_sweep: bool = False
    profile: bool = False
    repeats: int = 1  # rounds of the four main runs; the table and the ratios take each run's median

    def point(self, method: str) -> dict[str, float]:
        """The grid point a main run uses: NKD trains on labels only, KD has no inter-layer term."""
        spec = get_method(method)
        return {
            "lr": self.lr,
            "eta": self.eta if spec.searches_eta else 0.0,
            "lambda": self.lam if spec.searches_lambda else 0.0,
        }


def study_config(settings: Settings, name: str, train_samples: int, epochs: int, **search) -> StudyConfig:
    """A validated study config for this setting; ``search`` overrides the sampler, pruner and grids."""
    teacher = {
        "epochs": settings.teacher_epochs,
        "lr": TEACHER_LR,
        "max_train_samples": settings.teacher_train_samples or None,
    }
    return parse_study(
        {
            "name": name,
            "task": settings.task,
            "teacher": settings.teacher,
            "student_layers": settings.student_layers,
            "methods": ["alp"],
            "fixed": {
                "epochs": epochs,
                "batch_size": settings.batch_size,
                "max_seq_length": settings.max_seq_length,
                "max_train_samples": train_samples,
                "seed": settings.seed,
                "teacher": teacher,
            },
            "search": {"lr": [settings.lr], "eta": [settings.eta], "lambda": [settings.lam], **search},
        },
        source="bench.trial",
    )


# ---------------------------------------------------------------------------------------------- main


def format_ratio(value: float) -> str:
    return "inf" if math.isinf(value) else "nan" if math.isnan(value) else f"{value:.3f}"


def result_table(results: list[RunResult], device: torch.device) -> list[str]:
    memory = "peak MiB" if device.type == "cuda" else "peak RSS Δ MiB"
    lines = [
        f"{'run':<18}{'trial s':>9}{'+cache s':>10}{'cpu s':>8}{'train s':>9}{'steps':>7}{'step ms':>9}"
        f"{'samples/s':>11}{memory:>16}{'dev':>8}"
    ]
    for r in results:
        lines.append(
            f"{r.name:<18}{r.seconds:>9.1f}{r.seconds + r.cache_seconds:>10.1f}{r.cpu_seconds:>8.1f}"
            f"{r.train_seconds:>9.1f}{r.steps:>7}{r.step_ms:>9.0f}{r.samples_per_s:>11.1f}{r.peak_mib:>16.0f}"
            f"{r.dev:>8.4f}"
        )
    return lines


def parse_args(argv: list[str] | None) -> Settings:
    d = Settings()
    parser = argparse.ArgumentParser(prog="python -m bench.trial", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default=d.task)
    parser.add_argument("--teacher", default=d.teacher, help="alias, folder or hub id (default: %(default)s)")
    parser.add_argument("--student-layers", type=int, default=d.student_layers)
    parser.add_argument("--train-samples", type=int, default=d.train_samples, help="training examples of the main runs")
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--max-seq-length", type=int, default=d.max_seq_length)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument(
        "--teacher-train-samples",
        type=int,
        default=d.teacher_train_samples,
        help="examples the teacher is fine-tuned on, once (0: all)",
    )
    parser.add_argument("--teacher-epochs", type=int, default=d.teacher_epochs)
    parser.add_argument("--sweep-samples", type=int, default=d.sweep_samples)
    parser.add_argument("--sweep-epochs", type=int, default=d.sweep_epochs)
    parser.add_argument("--sweep-lr", type=float, nargs="+", default=d.sweep_lr)
    parser.add_argument("--sweep-eta", type=float, nargs="+", default=d.sweep_eta)
    parser.add_argument("--sweep-lambda", type=float, nargs="+", default=d.sweep_lambda)
    parser.add_argument(
        "--sweep-replays",
        type=int,
        default=d.sweep_replays,
        help="replays of the TPE search on the evaluated grid (sampler seeds 0..N-1)",
    )
    parser.add_argument("--tolerance", type=float, default=d.tolerance, help="'reached the best' = within this")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="GLUE folder (default: $GLUE_DIR, then ../shared/glue beside the repo if present)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where the fine-tuned teacher is cached (default: $HARNESS_CACHE or .cache in the repo)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=d.repeats,
        help="rounds of the four main runs, one after another; the table and ratios take each run's median, and "
        "each round's alp_trial/reference is printed (default: %(default)s)",
    )
    parser.add_argument("--skip-sweep", action="store_true", help="skip the sweep-cost measurement")
    parser.add_argument("--profile", action="store_true", help="profile one ALP student step (torch.profiler)")
    args = parser.parse_args(argv)
    for name in (
        "student_layers",
        "train_samples",
        "epochs",
        "batch_size",
        "sweep_samples",
        "sweep_epochs",
        "sweep_replays",
        "repeats",
    ):
        if getattr(args, name) < 1:
            raise HarnessError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    shared = REPO_ROOT.parent / "shared" / "glue"
    data_dir = resolve_data_dir(args.data_dir, os.environ.get("GLUE_DIR"), str(shared) if shared.is_dir() else None)
    cache_dir = args.cache_dir or Path(os.environ.get("HARNESS_CACHE", REPO_ROOT / ".cache"))
    return Settings(
        task=args.task,
        teacher=args.teacher,
        student_layers=args.student_layers,
        train_samples=args.train_samples,
        epochs=args.epochs,
        max_seq_length=args.max_seq_length,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        teacher_train_samples=args.teacher_train_samples,
        teacher_epochs=args.teacher_epochs,
        sweep_samples=args.sweep_samples,
        sweep_epochs=args.sweep_epochs,
        sweep_lr=tuple(args.sweep_lr),
        sweep_eta=tuple(args.sweep_eta),
        sweep_lambda=tuple(args.sweep_lambda),
        sweep_replays=args.sweep_replays,
        tolerance=args.tolerance,
        data_dir=data_dir,
        cache_dir=cache_dir.absolute(),
        skip_sweep=args.skip_sweep,
        profile=args.profile,
        repeats=args.repeats,
    )


def _sweep(settings: Settings, work: Path, log) -> SweepResult:
    """The ALP grid of the sweep setting, run for real; then the searches replayed on it."""
    grid_config = study_config(
        settings,
        "bench-grid",
        settings.sweep_samples,
        settings.sweep_epochs,
        sampler="grid",
        pruner="none",
        lr=list(settings.sweep_lr),
        eta=list(settings.sweep_eta),
        **{"lambda": list(settings.sweep_lambda)},
    )
    experiment = Experiment(grid_config, settings.data_dir, work, progress=False)
    experiment.teacher.signal(live=False)  # built here, outside the grid's cost
    return run_sweep(grid_config, experiment, work, settings.tolerance, settings.sweep_replays, log)


def _load() -> str:
    try:
        return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    except OSError:
        return "load average unknown"


def bench(settings: Settings, log=print) -> list[str]:
    """Run the benchmark; return the summary (whose last three lines are the ratios)."""
    started = time.perf_counter()
    config = study_config(settings, "bench", settings.train_samples, settings.epochs)
    with tempfile.TemporaryDirectory(prefix="harness-bench-") as tmp:
        work = Path(tmp)
        teachers = settings.cache_dir / "teachers"
        teachers.mkdir(parents=True, exist_ok=True)
        (work / "teachers").symlink_to(teachers, target_is_directory=True)  # fine-tuned teachers: the shared cache
        experiment = Experiment(config, settings.data_dir, work, progress=False)
        device = experiment.device
        log(
            f"bench: {settings.task}, teacher {settings.teacher}, {settings.student_layers}-layer student, "
            f"{len(experiment.train)} train examples × {settings.epochs} epochs, max_seq_length "
            f"{settings.max_seq_length}, batch {settings.batch_size}, lr {settings.lr:g}, η {settings.eta:g}, "
            f"λ {settings.lam:g}; {device.type}, {torch.get_num_threads()} threads; {_load()}"
        )
        teacher_started = time.perf_counter()
        teacher = experiment.teacher.prepare()
        log(
            f"teacher ready in {time.perf_counter() - teacher_started:.0f} s (excluded from timings): dev "
            f"{teacher.value:.4f}, key {teacher.key}"
        )
        cache = build_cache(experiment)
        outputs_seconds, dev_seconds = cache.outputs_seconds, cache.dev_seconds
        log(cache.describe())
        StudentSteps(experiment, "alp", settings.point("alp")).run(3)  # untimed: one-off kernel and allocator set-up
        rounds = []  # per round: reference, nkd, kd, alp
        for number in range(settings.repeats):
            if settings.repeats > 1:
                log(f"round {number + 1} of {settings.repeats}:")
            runs = []
            for method in ("nkd", "kd", "alp"):
                spec = get_method(method)  # the first build of what the trial reads: outputs (KD), dev states (ALP)
                first_build = (outputs_seconds if spec.searches_eta else 0.0) + (
                    dev_seconds if spec.inter == "alp" else 0
                )
                runs.append(run_ours(experiment, method, settings.point(method), first_build))
                log(f"  {runs[-1].name}: {runs[-1].seconds:.1f} s, dev {runs[-1].dev:.4f}")
            runs.insert(0, run_reference(experiment, settings.point("alp"), work / "hf"))
            log(f"  {runs[0].name}: {runs[0].seconds:.1f} s, dev {runs[0].dev:.4f}")
            rounds.append(runs)
        results = [RunResult.median(list(runs)) for runs in zip(*rounds)]
        reference, nkd, alp = results[0], results[1], results[3]

        sweep = None
        if not settings.skip_sweep:
            log("sweep cost to reach the grid's best:")
            sweep = _sweep(settings, work, log)
        profile_text = profile_step(experiment, settings.point("alp")) if settings.profile else None

    summary = [
        "",
        *result_table(results, device),
        f"(+cache s: with the first build of what the trial reads of the teacher, cached once per teacher: its "
        f"outputs, {outputs_seconds:.1f} s, and for ALP its dev states, {dev_seconds:.1f} s"
        f"{f' (made by {cache.dev_made_by})' if cache.dev_kept else ''}; dev: best "
        f"epoch's {experiment.task.primary_metric}; step ms: training time / steps, evaluation excluded)",
        f"ALP trial / reference: {(alp.seconds + alp.cache_seconds) / reference.seconds:.3f} with the cache "
        f"build, {alp.seconds / reference.seconds:.3f} without; steps {alp.step_ms / reference.step_ms:.3f}; "
        f"process CPU time (without the cache build) {alp.cpu_seconds / reference.cpu_seconds:.3f}",
    ]
    if settings.repeats > 1:
        per_round = ", ".join(f"{(r[3].seconds + r[3].cache_seconds) / r[0].seconds:.3f}" for r in rounds)
        steps = ", ".join(f"{r[3].step_ms / r[1].step_ms:.3f}" for r in rounds)
        summary.append(
            f"medians of {settings.repeats} rounds (the table too); each round's alp_trial/reference with the "
            f"cache build: {per_round}; alp_step/nkd_step: {steps}"
        )
    sweep_ratio = math.nan
    if sweep is not None:
        sweep_ratio = sweep.ratio()
        summary += sweep.lines()
    else:
        summary.append("sweep: skipped (--skip-sweep): ratio nan")
    if profile_text is not None:
        summary += ["", profile_text, ""]
    summary += [
        f"wall time: {time.perf_counter() - started:.0f} s; at the end {_load()} (timings are wall-clock: other "
        f"work on the machine slows every run, unevenly)",
        f"ratio alp_trial/reference = {format_ratio((alp.seconds + alp.cache_seconds) / reference.seconds)}",
        f"ratio alp_step/nkd_step = {format_ratio(alp.step_ms / nkd.step_ms)}",
        f"ratio sweep_cost_to_best = {format_ratio(sweep_ratio)}",
    ]
    return summary


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        settings = parse_args(argv)
        quiet_libraries(transformers=True)
        print("\n".join(bench(settings)), flush=True)
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
