"""``run_study.py plan STUDY.yaml``: what a sweep will cost before it runs, from the study file and a short
measured micro-run on this machine. No database is created and nothing is trained to completion.

Per method: the grid size and the trainings left after sharing equivalent points (:func:`harness.sweep.sharing.plan`),
examples per trial; the estimated time: a few timed optimizer steps of the student and of the teacher on
real batches (forward, backward, AdamW) and a few timed evaluation batches, extrapolated to every trial's
steps and evaluations (an inter-layer method's step costs about an NKD step on CPU: the bench's
alp_step/nkd_step ratio is ≈ 1); and the disk the teacher, its output cache and the kept students take,
with a warning when the cache folder's filesystem has less free space.

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


def _step_seconds(
    model, data, batch_size: int, pad_token_id: int, device, precision: str = "auto"
) -> tuple[float, float]:
    """Seconds per training step (forward, backward, AdamW) and per evaluation batch, on real batches: under the
    autocast ``precision`` gives, with the fused AdamW the sweep uses, synchronised on CUDA. (The inter-layer
    loss is not in it: on the student's [CLS] vectors it is small beside the forward and backward.)"""
    import torch

    from harness.distill.batches import to_batch, token_lengths, train_batches
    from harness.distill.device import autocast_for

    autocast, _ = autocast_for(torch.device(device), precision)

    def sync() -> None:
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)

    batches = train_batches(token_lengths(data), batch_size, 0, 0)
    batches = (batches * (MICRO_STEPS + 2))[: MICRO_STEPS + 2]  # a small training set is cycled
    model.to(device).train()
    fused = torch.device(device).type in ("cpu", "cuda")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=fused)
    timed = []
    for number, index in enumerate(batches):
        sync()
        started = time.perf_counter()
        batch = to_batch(data, index, pad_token_id, device)
        with autocast:
            loss = model(**batch).loss
        loss.float().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        if number >= 2:
            timed.append(time.perf_counter() - started)
    model.eval()
    evals = []
    with torch.no_grad():
        for number, index in enumerate(batches[:3]):
            sync()
            started = time.perf_counter()
            batch = to_batch(data, index, pad_token_id, device)
            batch.pop("labels")
            with autocast:
                model(**batch)
            sync()
            if number:
                evals.append(time.perf_counter() - started)
    return sum(timed) / len(timed), sum(evals) / len(evals)


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class Sizes:
    """What one study file's sweep costs, as numbers (:func:`size_plan`); :func:`plan_lines` writes them out.

    Times are ``None`` without the micro-run (``--no-measure``); ``busy`` is the share of the CPUs other work
    used just before it (``None`` where ``/proc/stat`` is missing)."""

    trainings: int
    n_train: int
    evaluated: int
    eval_splits: list[str]
    steps: int
    teacher_key: str
    teacher_cached: bool
    device: str
    student_bytes: int
    cache_bytes: int
    teacher_bytes: int
    students_bytes: int
    step: float | None = None
    trial_seconds: float | None = None
    teacher_seconds: float | None = None
    took: float | None = None
    busy: float | None = None

    @property
    def disk_bytes(self) -> int:
        return self.cache_bytes + self.teacher_bytes + self.students_bytes

    @property
    def total_seconds(self) -> float | None:
        if self.trial_seconds is None:
            return None
        return self.trainings * self.trial_seconds + (self.teacher_seconds or 0.0)


def size_plan(config: StudyConfig, data_dir: Path | None, cache_dir: Path, measure: bool = True) -> Sizes:
    """The sizes of one study file's sweep: its data and teacher are loaded (not fine-tuned), a student and, if
    the teacher is not cached yet, a teacher of its shape are built and, with ``measure``, timed for a few steps.
    :class:`HarnessError` where the teacher or the data cannot be loaded here."""
    from harness.distill.experiment import Experiment
    from harness.distill.models import build_student, load_config
    from harness.distill.teacher import TEACHER_INFO, output_cache_bytes

    experiment = Experiment(config, data_dir, cache_dir, progress=False)
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
    teacher = None
    if not teacher_cached:  # the teacher's own shape: a classifier of its full depth
        teacher = build_student(
            experiment.pretrained, teacher_config.num_hidden_layers, experiment.task.num_labels, "bottom", fixed.seed
        )
    kept = {"best": len(config.methods), "all": sum(size for size, _ in counts.values()), "none": 0}
    sizes = Sizes(
        trainings=sum(own for _, own in counts.values()),
        n_train=n_train,
        evaluated=sum(len(d) for d in experiment.evals.values()),
        eval_splits=list(experiment.evals),
        steps=steps,
        teacher_key=experiment.teacher.key(),
        teacher_cached=teacher_cached,
        device=str(experiment.device),
        student_bytes=_params(student) * 4,
        cache_bytes=cache_bytes,
        teacher_bytes=0 if teacher is None else _params(teacher) * 4,
        students_bytes=kept[fixed.keep_students] * _params(student) * 4,
    )
    if not measure:
        return sizes
    sizes.busy = cpu_busy()
    started = time.perf_counter()
    sizes.step, forward = _step_seconds(
        student, experiment.train, fixed.batch_size, experiment.pad_token_id, experiment.device, fixed.precision
    )
    sizes.trial_seconds = steps * sizes.step + eval_batches * forward * fixed.eval_batch_size / fixed.batch_size
    sizes.teacher_seconds = 0.0
    if teacher is not None:
        teacher_step, teacher_forward = _step_seconds(
            teacher, experiment.train, fixed.teacher.batch_size, experiment.pad_token_id, experiment.device
        )
        sizes.teacher_seconds = math.ceil(teacher_n / fixed.teacher.batch_size) * fixed.teacher.epochs * teacher_step
        if needs_outputs:
            sizes.teacher_seconds += math.ceil(n_train / fixed.batch_size) * teacher_forward
    sizes.took = time.perf_counter() - started
    return sizes


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
        totals["trial_seconds"] = totals.get("trial_seconds", 0.0) + trainings * sizes.trial_seconds
        totals["longest_trial"] = max(totals.get("longest_trial", 0.0), sizes.trial_seconds)
        totals.setdefault("teacher_seconds", {})[sizes.teacher_key] = sizes.teacher_seconds
        lines.append(
            f"  measured here in {sizes.took:.0f} s ({MICRO_STEPS} timed steps of the student"
            + ("" if sizes.teacher_cached else " and of the teacher")
            + f", on {sizes.device}): {sizes.step * 1000:.0f} ms per student step → about "
            f"{_duration(sizes.trial_seconds)} per trial, {trainings} trainings ≈ "
            f"{_duration(trainings * sizes.trial_seconds)}"
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
