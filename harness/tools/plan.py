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


def _step_seconds(model, data, batch_size: int, pad_token_id: int, device) -> tuple[float, float]:
    """Seconds per training step (forward, backward, AdamW) and per evaluation batch, on real batches."""
    import torch

    from harness.distill.train import to_batch, token_lengths, train_batches

    batches = train_batches(token_lengths(data), batch_size, 0, 0)
    batches = (batches * (MICRO_STEPS + 2))[: MICRO_STEPS + 2]  # a small training set is cycled
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    timed = []
    for number, index in enumerate(batches):
        started = time.perf_counter()
        batch = to_batch(data, index, pad_token_id, device)
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if number >= 2:
            timed.append(time.perf_counter() - started)
    model.eval()
    evals = []
    with torch.no_grad():
        for number, index in enumerate(batches[:3]):
            started = time.perf_counter()
            batch = to_batch(data, index, pad_token_id, device)
            batch.pop("labels")
            model(**batch)
            if number:
                evals.append(time.perf_counter() - started)
    return sum(timed) / len(timed), sum(evals) / len(evals)


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def plan_lines(config: StudyConfig, data_dir: Path | None, cache_dir: Path, measure: bool = True) -> list[str]:
    """The plan, as the lines ``run_study.py plan`` prints."""
    lines = [f"plan for {config.name}/{config.task}: teacher {config.teacher}, {config.student_layers}-layer student"]
    lines += describe_grids(config)
    counts = plan(config)
    trainings = sum(own for _, own in counts.values())
    try:
        from harness.distill.experiment import Experiment
        from harness.distill.teacher import TEACHER_INFO, output_cache_bytes

        experiment = Experiment(config, data_dir, cache_dir, progress=False)
    except HarnessError as error:
        lines.append(
            f"  cannot measure or size the rest here: {error} (the teacher's shape and speed and the data's size "
            "are unknown offline; run plan where the teacher and the data can be loaded)"
        )
        return lines
    fixed = config.fixed
    n_train, evaluated = len(experiment.train), sum(len(d) for d in experiment.evals.values())
    teacher_n = min(
        fixed.teacher.max_train_samples or len(experiment.teacher.full_train), len(experiment.teacher.full_train)
    )
    steps = math.ceil(n_train / fixed.batch_size) * fixed.epochs
    eval_batches = sum(math.ceil(len(d) / fixed.eval_batch_size) for d in experiment.evals.values()) * fixed.epochs
    lines.append(
        f"  per trial: {n_train} training examples × {fixed.epochs} epoch(s) = {steps} steps of {fixed.batch_size}; "
        f"{evaluated} examples scored after every epoch ({', '.join(experiment.evals)})"
    )
    # a teacher used as it is (finetune: false) costs no fine-tuning, like a cached one
    teacher_cached = not fixed.teacher.finetune or (experiment.teacher.folder() / TEACHER_INFO).is_file()
    needs_outputs = any(get_method(m).searches_eta for m in config.methods)

    from harness.distill.models import build_student, load_config

    teacher_config = load_config(experiment.pretrained)
    student = build_student(
        experiment.student_source, config.student_layers, experiment.task.num_labels, fixed.student_init, fixed.seed
    )
    student_bytes = _params(student) * 4
    cache_bytes = 0
    if needs_outputs:
        layers = (teacher_config.num_hidden_layers, teacher_config.hidden_size)
        cache_bytes = output_cache_bytes(n_train, experiment.task.num_labels, layers, fixed.teacher_cache_dtype)
    teacher = None
    if not teacher_cached:  # the teacher's own shape: a classifier of its full depth
        teacher = build_student(
            experiment.pretrained, teacher_config.num_hidden_layers, experiment.task.num_labels, "bottom", fixed.seed
        )
    teacher_bytes = 0 if teacher is None else _params(teacher) * 4
    kept = {"best": len(config.methods), "all": sum(size for size, _ in counts.values()), "none": 0}
    students_bytes = kept[fixed.keep_students] * student_bytes
    if measure:
        busy = cpu_busy()
        started = time.perf_counter()
        step, forward = _step_seconds(
            student, experiment.train, fixed.batch_size, experiment.pad_token_id, experiment.device
        )
        trial_seconds = steps * step + eval_batches * forward * fixed.eval_batch_size / fixed.batch_size
        teacher_seconds = 0.0
        if teacher is not None:
            teacher_step, teacher_forward = _step_seconds(
                teacher, experiment.train, fixed.teacher.batch_size, experiment.pad_token_id, experiment.device
            )
            teacher_seconds = math.ceil(teacher_n / fixed.teacher.batch_size) * fixed.teacher.epochs * teacher_step
            if needs_outputs:
                teacher_seconds += math.ceil(n_train / fixed.batch_size) * teacher_forward
        took = time.perf_counter() - started
        total = trainings * trial_seconds + teacher_seconds
        lines.append(
            f"  measured here in {took:.0f} s ({MICRO_STEPS} timed steps of the student"
            + ("" if teacher_cached else " and of the teacher")
            + f", on {experiment.device}): {step * 1000:.0f} ms per student step → about {_duration(trial_seconds)} "
            f"per trial, {trainings} trainings ≈ {_duration(trainings * trial_seconds)}"
            + ("" if teacher_cached else f", teacher fine-tuning ≈ {_duration(teacher_seconds)}")
            + f"; in all ≈ {_duration(total)} with one worker (seed confirmations not included)"
        )
        if busy is not None and busy > BUSY_LIMIT:
            lines.append(
                f"  note: other work used {100 * busy:.0f}% of this machine's CPUs just before the micro-run; "
                "the steps were timed on a busy machine and the estimate is longer than an idle run would take"
            )
    else:
        lines.append("  time not measured (--no-measure)")
    needed = cache_bytes + teacher_bytes + students_bytes
    lines.append(
        f"  disk in {cache_dir}: teacher {'cached already' if teacher_cached else gigabytes(teacher_bytes)}, "
        f"teacher-output cache {gigabytes(cache_bytes)}, "
        f"kept students ({fixed.keep_students}) {gigabytes(students_bytes)}"
        f" ({gigabytes(student_bytes)} each), plus one epoch checkpoint per running trial"
    )
    folder = next((p for p in (cache_dir, *cache_dir.parents) if p.exists()), Path("/"))
    free = shutil.disk_usage(folder).free
    if free < needed:
        lines.append(
            f"  warning: only {gigabytes(free)} free in {folder}, {gigabytes(needed)} needed: use another --cache-dir"
        )
    return lines
