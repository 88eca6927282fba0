"""``run_study.py plan STUDY.yaml``: what a sweep will cost before it runs, from the study file and a short
measured micro-run on this machine. No database is created and nothing is trained to completion.

Per method: the grid size and the trainings left after sharing equivalent points (:func:`harness.sweep.sharing.plan`),
examples per trial; the estimated time: a few timed training steps of each method's student, through the sweep's
own step (:class:`harness.distill.train.Stepper`: autocast, fused AdamW, the KD and inter-layer loss terms,
synchronised on CUDA), of the teacher (when it must be fine-tuned) and a few timed evaluation batches, extrapolated
to every trial's steps and evaluations (the α probe's small per-epoch cost is left out); and the disk the teacher,
its output cache and the kept students take, with a warning when the cache folder's filesystem has less free space.

The micro-run is only as good as the machine is quiet: on 2 cores shared with another sweep, torch's
threads wait for each other and a step measured ~3× slower than idle (2026-12-01). So ``plan`` first looks
how busy the CPUs are (Linux ``/proc/stat`` over :data:`BUSY_WINDOW` s) and says so when other work used more
than :data:`BUSY_LIMIT` of them.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from harness.spec.config import StudyConfig
from harness.spec.methods import get_method
from harness.sweep.sharing import describe_grids, plan
from harness.util.errors import HarnessError
from harness.util.files import gigabytes

MICRO_STEPS = 6  # timed steps per model, after two untimed warm-up steps
BUSY_WINDOW = 0.5  # seconds of watching the CPUs before the micro-run
BUSY_LIMIT = 0.25  # more of the CPUs than this used by other work: the estimate is said to be pessimistic


def cpu_busy(window: float = BUSY_WINDOW) -> float | None:
    """The fraction of all CPU time used during ``window`` seconds while this process sleeps, so by
    other work (``/proc/stat``; ``None`` where there is none)."""
    stat = Path("/proc/stat")

    def read() -> tuple[int, int]:
        values = [int(v) for v in stat.read_text().split("\n", 1)[0].split()[1:]]
        return sum(values), values[3] + values[4]  # all, idle + iowait

    try:
        total, idle = read()
        time.sleep(window)
        total2, idle2 = read()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (idle2 - idle) / max(total2 - total, 1)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _eval_seconds(model, data, batch_size: int, pad_token_id: int, device, precision: str = "auto") -> float:
    """Seconds per evaluation batch of ``batch_size`` on real batches (under the sweep's autocast, synchronised on
    CUDA), after one untimed batch."""
    import torch

    from harness.distill.batches import to_batch, token_lengths, train_batches
    from harness.distill.device import autocast_for, synchronize

    autocast, _ = autocast_for(torch.device(device), precision)
    batches = train_batches(token_lengths(data), batch_size, 0, 0)
    batches = (batches * 3)[:3]
    model.to(device).eval()
    timed = []
    with torch.no_grad():
        for number, index in enumerate(batches):
            synchronize(device)
            started = time.perf_counter()
            batch = to_batch(data, index, pad_token_id, device)
            batch.pop("labels")
            with autocast:
                model(**batch)
            synchronize(device)
            if number:
                timed.append(time.perf_counter() - started)
    return sum(timed) / len(timed)


def _method_steps(experiment, config: StudyConfig, student, teacher_shape, teacher_config) -> dict[str, float]:
    """Seconds per training step of each method's student, timed through the sweep's own step
    (:class:`harness.distill.train.Stepper`: autocast as ``precision`` says, fused AdamW, the method's KD and
    inter-layer loss terms, synchronised on CUDA). A cached-output method reads stand-in teacher outputs of the cached
    arrays' shape and dtype (zeros, no memory: reading them costs what reading the memory-mapped cache costs once it
    is in the page cache); a live-teacher method runs ``teacher_shape``, a model of the teacher's shape. Methods whose
    step is the same computation (NKD; KD and every method without a term of its own) are timed once."""
    import numpy as np

    from harness.distill.train import Stepper, TeacherSignal
    from harness.spec.config import grid_points, uses_live_teacher

    fixed, n = config.fixed, len(experiment.train)
    labels = experiment.task.num_labels
    layers = (teacher_config.num_hidden_layers, teacher_config.hidden_size)
    cached = TeacherSignal(
        logits=np.broadcast_to(np.zeros((1, labels), np.float32), (n, labels)),
        cls=np.broadcast_to(np.zeros((1, *layers), np.dtype(fixed.teacher_cache_dtype)), (n, *layers)),
    )
    seconds: dict[str, float] = {}
    timed: dict[tuple, float] = {}
    # a method that reads attention maps switches the student to eager attention for good: time those last
    for method in sorted(config.methods, key=lambda m: "attentions" in get_method(m).states):
        spec = get_method(method)
        point = grid_points(config, method)[0]
        inter = experiment.method_loss(method, point, teacher_config, student.config.hidden_size)
        live = spec.searches_eta and uses_live_teacher(config, method)
        kind = (spec.searches_eta, method if inter is not None else None, live)
        if kind not in timed:
            signal = None
            if spec.searches_eta:
                signal = TeacherSignal(live=teacher_shape) if live else cached
            hyper = experiment.hyper(point, fixed.seed)
            step = Stepper(student, experiment.task, hyper, inter, signal, experiment.device, 10 * MICRO_STEPS)
            timed[kind] = step.timed(experiment.train, experiment.pad_token_id, MICRO_STEPS)
        seconds[method] = timed[kind]
    return seconds


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class Sizes:
    """What one study file's sweep costs, as numbers (:func:`size_plan`); :func:`plan_lines` writes them out.

    Times are ``None`` without the micro-run (``--no-measure``); ``busy`` is the share of the CPUs other work
    used just before it (``None`` where ``/proc/stat`` is missing). ``trainings`` is per method (after sharing)."""

    trainings: dict[str, int]
    n_train: int
    evaluated: int
    eval_splits: list[str]
    steps: int
    epochs: int
    teacher_key: str
    teacher_cached: bool
    device: str
    student_bytes: int
    cache_bytes: int
    teacher_bytes: int
    students_bytes: int
    step: dict[str, float] | None = None  # seconds per student step, per method
    trial_seconds: dict[str, float] | None = None  # per method
    teacher_seconds: float | None = None
    took: float | None = None
    busy: float | None = None

    @property
    def disk_bytes(self) -> int:
        return self.cache_bytes + self.teacher_bytes + self.students_bytes

    @property
    def trainings_seconds(self) -> float | None:
        """Every training's estimated seconds, added up."""
        if self.trial_seconds is None:
            return None
        return sum(own * self.trial_seconds[method] for method, own in self.trainings.items())

    @property
    def total_seconds(self) -> float | None:
        if self.trial_seconds is None:
            return None
        return self.trainings_seconds + (self.teacher_seconds or 0.0)

    @property
    def epoch_seconds(self) -> float | None:
        """The longest epoch of any method's trial (its training steps and its evaluation): the least a worker's
        time limit must leave it for a trial to reach its first checkpoint."""
        if self.trial_seconds is None:
            return None
        return max(self.trial_seconds.values()) / self.epochs


def size_plan(
    config: StudyConfig, data_dir: Path | None, cache_dir: Path, measure: bool = True, experiment=None
) -> Sizes:
    """The sizes of one study file's sweep: its data and teacher are loaded (not fine-tuned), a student and, if
    the teacher is not cached yet or a method reads the live teacher, a model of the teacher's shape are built and,
    with ``measure``, timed for a few steps (:func:`_method_steps`). :class:`HarnessError` where the teacher or the
    data cannot be loaded here. ``experiment``: the study file's :class:`~harness.distill.experiment.Experiment`, if
    it is loaded already."""
    from harness.distill.experiment import Experiment
    from harness.distill.models import build_student, load_config
    from harness.distill.teacher import TEACHER_INFO, output_cache_bytes
    from harness.spec.config import uses_live_teacher

    experiment = experiment or Experiment(config, data_dir, cache_dir, progress=False)
    fixed = config.fixed
    counts = plan(config)
    n_train = len(experiment.train)
    full_train = len(experiment.teacher.full_train)
    teacher_n = min(fixed.teacher.max_train_samples or full_train, full_train)
    steps = math.ceil(n_train / fixed.batch_size) * fixed.epochs
    eval_batches = sum(math.ceil(len(d) / fixed.eval_batch_size) for d in experiment.evals.values()) * fixed.epochs
    # a teacher used as it is (finetune: false) costs no fine-tuning, like a cached one
    teacher_cached = not fixed.teacher.finetune or (experiment.teacher.folder() / TEACHER_INFO).is_file()
    needs_outputs = any(get_method(m).searches_eta for m in config.methods)
    teacher_config = load_config(experiment.pretrained)
    student = build_student(
        experiment.student_source, config.student_layers, experiment.task.num_labels, fixed.student_init, fixed.seed
    )
    cache_bytes = 0
    if needs_outputs:
        layers = (teacher_config.num_hidden_layers, teacher_config.hidden_size)
        cache_bytes = output_cache_bytes(n_train, experiment.task.num_labels, layers, fixed.teacher_cache_dtype)
    live = any(get_method(m).searches_eta and uses_live_teacher(config, m) for m in config.methods)
    teacher = None
    if not teacher_cached or (live and measure):  # the teacher's own shape: a classifier of its full depth
        teacher = build_student(
            experiment.pretrained, teacher_config.num_hidden_layers, experiment.task.num_labels, "bottom", fixed.seed
        )
    kept = {"best": len(config.methods), "all": sum(size for size, _ in counts.values()), "none": 0}
    sizes = Sizes(
        trainings={method: own for method, (_, own) in counts.items()},
        n_train=n_train,
        evaluated=sum(len(d) for d in experiment.evals.values()),
        eval_splits=list(experiment.evals),
        steps=steps,
        epochs=fixed.epochs,
        teacher_key=experiment.teacher.key(),
        teacher_cached=teacher_cached,
        device=str(experiment.device),
        student_bytes=_params(student) * 4,
        cache_bytes=cache_bytes,
        teacher_bytes=0 if teacher_cached else _params(teacher) * 4,
        students_bytes=kept[fixed.keep_students] * _params(student) * 4,
    )
    if not measure:
        return sizes
    sizes.busy = cpu_busy()
    started = time.perf_counter()
    forward = _eval_seconds(
        student, experiment.train, fixed.batch_size, experiment.pad_token_id, experiment.device, fixed.precision
    )
    sizes.step = _method_steps(experiment, config, student, teacher, teacher_config)
    evaluation = eval_batches * forward * fixed.eval_batch_size / fixed.batch_size
    sizes.trial_seconds = {method: steps * step + evaluation for method, step in sizes.step.items()}
    sizes.teacher_seconds = 0.0
    if not teacher_cached:
        from harness.distill.train import Hyper, Stepper

        recipe = fixed.teacher
        hyper = Hyper(lr=recipe.lr, batch_size=recipe.batch_size, precision="auto")
        teacher_step = Stepper(teacher, experiment.task, hyper, None, None, experiment.device, 10 * MICRO_STEPS)
        teacher_step = teacher_step.timed(experiment.train, experiment.pad_token_id, MICRO_STEPS)
        sizes.teacher_seconds = math.ceil(teacher_n / recipe.batch_size) * recipe.epochs * teacher_step
        if needs_outputs:
            teacher_forward = _eval_seconds(
                teacher, experiment.train, fixed.batch_size, experiment.pad_token_id, experiment.device
            )
            sizes.teacher_seconds += math.ceil(n_train / fixed.batch_size) * teacher_forward
    sizes.took = time.perf_counter() - started
    return sizes


def check_time_limit(study_file: Path, config: StudyConfig, data_dir: Path | None, experiment, time: str) -> str:
    """Refuse a SLURM ``--time`` in which a worker cannot finish one epoch of ``study_file``'s longest trial before
    its stop signal (:data:`~harness.sweep.slurm.SIGNAL_LEAD_SECONDS` before the limit), by :func:`size_plan`'s
    micro-run here; such a worker would be stopped before its first epoch checkpoint and requeued without end.
    Run by the launcher's prepare job, on the node kind the workers get, before any fine-tuning. The line to print
    when it fits."""
    from harness.sweep.slurm import SIGNAL_LEAD_SECONDS, parse_time

    budget = parse_time(time) - SIGNAL_LEAD_SECONDS
    sizes = size_plan(config, data_dir, experiment.cache_dir, experiment=experiment)
    epoch = sizes.epoch_seconds
    if epoch > budget:
        raise HarnessError(
            f"--time {time}: a worker has {budget} s before its stop signal, but one epoch of {study_file} takes "
            f"≈ {_duration(epoch)} on {sizes.device} by plan's estimate here; it would be stopped before its first "
            "checkpoint every time: give a longer --time (or fewer training examples per epoch)"
        )
    return (
        f"{study_file}: one epoch ≈ {_duration(epoch)} on {sizes.device} by plan's estimate, within --time {time} "
        f"less the {SIGNAL_LEAD_SECONDS} s stop signal lead"
    )


def plan_lines(
    config: StudyConfig, data_dir: Path | None, cache_dir: Path, measure: bool = True, totals: dict | None = None
) -> list[str]:
    """The plan, as the lines ``run_study.py plan`` prints; ``totals`` (when given) accumulates what
    :func:`summary_lines` adds up over several study files."""
    totals = {} if totals is None else totals
    lines = [f"plan for {config.name}/{config.task}: teacher {config.teacher}, {config.student_layers}-layer student"]
    lines += describe_grids(config)
    trainings = sum(own for _, own in plan(config).values())
    totals["files"] = totals.get("files", 0) + 1
    totals["trainings"] = totals.get("trainings", 0) + trainings
    try:
        sizes = size_plan(config, data_dir, cache_dir, measure)
    except HarnessError as error:
        lines.append(
            f"  cannot measure or size the rest here: {error} (the teacher's shape and speed and the data's size "
            "are unknown offline; run plan where the teacher and the data can be loaded)"
        )
        return lines
    fixed = config.fixed
    lines.append(
        f"  per trial: {sizes.n_train} training examples × {fixed.epochs} epoch(s) = {sizes.steps} steps of "
        f"{fixed.batch_size}; {sizes.evaluated} examples scored after every epoch ({', '.join(sizes.eval_splits)})"
    )
    if not sizes.teacher_cached:
        totals.setdefault("teachers", set()).add(sizes.teacher_key)
    if sizes.trial_seconds is not None:
        totals["trial_seconds"] = totals.get("trial_seconds", 0.0) + sizes.trainings_seconds
        totals["longest_trial"] = max(totals.get("longest_trial", 0.0), *sizes.trial_seconds.values())
        totals.setdefault("teacher_seconds", {})[sizes.teacher_key] = sizes.teacher_seconds
        totals["longest_epoch"] = max(totals.get("longest_epoch", 0.0), sizes.epoch_seconds)
        steps = ", ".join(f"{method} {1000 * step:.0f} ms" for method, step in sizes.step.items())
        longest = max(sizes.trial_seconds.values())
        lines.append(
            f"  measured here in {sizes.took:.0f} s ({MICRO_STEPS} timed steps of the student"
            + ("" if sizes.teacher_cached else " and of the teacher")
            + f", on {sizes.device}): per student step {steps} (each method's own loss terms) → about "
            f"{_duration(longest)} per trial at most, one epoch ≈ {_duration(sizes.epoch_seconds)}, {trainings} "
            f"trainings ≈ {_duration(sizes.trainings_seconds)}"
            + ("" if sizes.teacher_cached else f", teacher fine-tuning ≈ {_duration(sizes.teacher_seconds)}")
            + f"; in all ≈ {_duration(sizes.total_seconds)} with one worker (seed confirmations not included)"
        )
        if sizes.busy is not None and sizes.busy > BUSY_LIMIT:
            lines.append(
                f"  note: other work used {100 * sizes.busy:.0f}% of this machine's CPUs just before the micro-run; "
                "the steps were timed on a busy machine and the estimate is longer than an idle run would take"
            )
    else:
        lines.append("  time not measured (--no-measure)")
    totals["bytes"] = totals.get("bytes", 0) + sizes.disk_bytes
    teacher_disk = "cached already" if sizes.teacher_cached else gigabytes(sizes.teacher_bytes)
    lines.append(
        f"  disk in {cache_dir}: teacher {teacher_disk}, teacher-output cache {gigabytes(sizes.cache_bytes)}, "
        f"kept students ({fixed.keep_students}) {gigabytes(sizes.students_bytes)}"
        f" ({gigabytes(sizes.student_bytes)} each), plus one epoch checkpoint per running trial"
    )
    folder = next((p for p in (cache_dir, *cache_dir.parents) if p.exists()), Path("/"))
    free = shutil.disk_usage(folder).free
    if free < sizes.disk_bytes:
        lines.append(
            f"  warning: only {gigabytes(free)} free in {folder}, {gigabytes(sizes.disk_bytes)} needed: "
            "use another --cache-dir"
        )
    return lines


def summary_lines(totals: dict, gpus: int, cache_dir: Path) -> list[str]:
    """What several study files cost together (``plan A.yaml B.yaml … --gpus N``): trainings after sharing,
    teachers to fine-tune, device-hours, the wall time on ``gpus`` devices (teachers in parallel first, then the
    trainings spread over the devices) and the disk on the shared cache."""
    lines = [
        f"all {totals.get('files', 0)} study files: {totals.get('trainings', 0)} trainings after sharing, "
        f"{len(totals.get('teachers', ()))} teacher(s) to fine-tune"
    ]
    if "trial_seconds" in totals:
        teacher = sorted(totals.get("teacher_seconds", {}).values(), reverse=True)
        device_seconds = totals["trial_seconds"] + sum(teacher)
        prepare = max(sum(teacher[i::gpus]) for i in range(gpus)) if teacher else 0.0
        wall = prepare + max(totals["trial_seconds"] / gpus, totals.get("longest_trial", 0.0))
        lines.append(
            f"  ≈ {device_seconds / 3600:.2f} device-hours measured here; on {gpus} device(s) ≈ {_duration(wall)} "
            f"wall ({_duration(prepare)} preparing teachers, then the trainings spread over the devices)"
        )
    lines.append(f"  disk in {cache_dir}: ≈ {gigabytes(totals.get('bytes', 0))} in all")
    return lines
