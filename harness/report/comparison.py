"""The comparison table: methods × tasks like the paper's, the teacher, the chance row and published rows.

A (method, task) cell is the best *grid* trial (confirmation re-runs left out), shown with every metric
GLUE reports for the task at that trial's reported epoch (MNLI matched/mismatched, MRPC and QQP
F1/accuracy, STS-B Pearson/Spearman). A task's score is the mean of those metrics (the GLUE
leaderboard's convention for multi-metric tasks) and the Average is the mean of the task scores.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from harness.report import honest, statistics
from harness.report.frame import Snapshot, best_trials, grid_done
from harness.spec.methods import METHODS
from harness.spec.tasks import TASKS, TaskSpec

_SHORT = {
    "accuracy": "acc",
    "f1": "F1",
    "mcc": "MCC",
    "pearson": "Pearson",
    "spearman": "Spearman",
    "dev_matched": "m",
    "dev_mismatched": "mm",
}


# --------------------------------------------------------------------------- task metrics
def task_header(spec: TaskSpec) -> str:
    parts = [_SHORT.get(s, s) if len(spec.eval_splits) > 1 else _SHORT.get(m, m) for s, m in spec.components]
    metric = f" {_SHORT.get(spec.metrics[0], spec.metrics[0])}" if len(spec.eval_splits) > 1 else ""
    return f"{spec.name} ({'/'.join(parts)}{metric})"


@dataclass(frozen=True)
class Cell:
    """One task's score of one row: GLUE's metrics as fractions (``None`` where unknown)."""

    values: tuple[float | None, ...]
    mark: str = ""
    trial_id: int | None = None  # the trial a student cell shows (its stored predictions)

    @property
    def score(self) -> float | None:
        """Mean of the task's metrics; ``None`` unless all are known."""
        if not self.values or any(v is None for v in self.values):
            return None
        return float(np.mean(self.values))

    def text(self) -> str:
        return "/".join("–" if v is None else f"{100 * v:.2f}" for v in self.values) + self.mark


def _known(value) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def trial_cell(spec: TaskSpec, row: pd.Series) -> Cell:
    values = [_known(row.get(f"{split}.{metric}")) for split, metric in spec.components]
    if values[0] is None:  # no epoch record: the trial value is the primary metric
        values[0] = _known(row["value"])
    return Cell(tuple(values))


def teacher_cell(spec: TaskSpec, teacher: dict) -> Cell:
    metrics = teacher.get("metrics") or {}
    values = [_known((metrics.get(split) or {}).get(metric)) for split, metric in spec.components]
    if values[0] is None:
        values[0] = _known(teacher.get("value"))
    return Cell(tuple(values))


# --------------------------------------------------------------------------- comparison table
@dataclass
class Row:
    label: str
    cells: dict[str, Cell]
    student: bool


def comparison_rows(snapshot: Snapshot, tasks: list[str], reference: list[dict]) -> tuple[list[Row], list[str]]:
    """Teacher, then each method (registry order), then published rows; plus footnotes."""
    frame, notes = snapshot.frame, []
    teacher = Row("teacher", {}, student=False)
    for task in tasks:
        found = {
            name: attrs["teacher"]
            for name, attrs in snapshot.studies.items()
            if attrs["task"] == task and "teacher" in attrs
        }
        if found:
            teacher.cells[task] = teacher_cell(TASKS[task], found[min(found)])
            if len({str(t.get("key")) for t in found.values()}) > 1:
                notes.append(f"‡ {task}: the studies used different teachers; the teacher of {min(found)} is shown.")
    rows = [teacher] if teacher.cells else []
    chance = Row("chance (majority class of dev)", {}, student=False)
    for task in tasks:
        values = honest.chance_values(TASKS[task], honest.task_labels(snapshot, task))
        if values is not None:
            chance.cells[task] = Cell(values)
    rows += [chance] if chance.cells else []
    best = best_trials(frame, ["task", "method"])
    files = grid_done(frame).groupby(["task", "method"])["study_file"].unique()
    flagged = set()
    for method in METHODS:
        row = Row(method, {}, student=True)
        for task in tasks:
            if (task, method) in best.index:
                picked = best.loc[(task, method)]
                several = len(files[(task, method)]) > 1
                mark = "‡" * several + honest.shared_mark(method, (picked["lr"], picked["eta"], picked["lambda"]))
                if honest.near_chance(snapshot, TASKS[task], picked["trial_id"]):
                    mark += " ≈ chance"
                    flagged.add(f"{method} on {task}")
                row.cells[task] = replace(trial_cell(TASKS[task], picked), mark=mark, trial_id=picked["trial_id"])
                if several:
                    names = ", ".join(sorted(files[(task, method)]))
                    notes.append(
                        f"‡ {method} on {task}: best over the study files {names} "
                        "(pass --name to compare one study file)."
                    )
        if row.cells:
            rows.append(row)
    if flagged:
        notes.append(
            "≈ chance: the paired bootstrap (BCa, 95 %) did not reject equality with always predicting the majority "
            "class; not evidence of equivalence, only that the difference is not shown: "
            f"{', '.join(sorted(flagged))}."
        )
    if any(" ≡ " in cell.mark for row in rows for cell in row.cells.values()):
        notes.append(
            "≡ KD / ≡ NKD: the method's best grid point has λ = 0 (η = 0 for KD), the same computation "
            "as KD's (NKD's) point; it is a shared trial: its gain over KD is zero (≡ KD) or NKD's (≡ NKD)."
        )
    sources = sorted({e["source"] for e in reference})
    for method in ["teacher", *METHODS]:
        for number, source in enumerate(sources, 1):
            mine = [e for e in reference if e["method"] == method and e["source"] == source]
            if not mine:
                continue
            row = Row(f"{method} (published) [{number}]", {}, student=False)
            for task in tasks:
                given = {e["metric"]: e["value"] / 100 for e in mine if e["task"] == task}
                if given:
                    row.cells[task] = Cell(tuple(given.get(k) for k in TASKS[task].component_keys))
            rows.append(row)
    notes += [f"[{number}] {source}" for number, source in enumerate(sources, 1)]
    outside = sorted({e["task"] for e in reference} - set(tasks))
    if outside:
        notes.append(f"Published scores for tasks without studies here are not shown: {', '.join(outside)}.")
    return rows, notes


def _average(row: Row, tasks: list[str]) -> tuple[float | None, int]:
    scores = [row.cells[t].score for t in tasks if t in row.cells and row.cells[t].score is not None]
    return (float(np.mean(scores)) if scores else None), len(scores)


def leaders(snapshot: Snapshot, tasks: list[str], rows: list[Row]) -> tuple[dict[str, str | None], int]:
    """task → the label of the student row that **leads** the column, or None; and the number of tests made.

    The leader is the student with the highest task score; it leads only if a paired BCa bootstrap of its dev
    predictions (primary metric) rejects equality both with the runner-up (the next-highest score of another
    row) and with the majority-class baseline, after Holm over every such test of the table (two per task
    column; B = :func:`~harness.report.statistics.bootstrap_resamples` of their number, seed 0). A tie for the
    top, a missing runner-up or chance row, or predictions that are not stored: no leader.
    """
    plans, tests = {}, []
    for task in tasks:
        spec = TASKS[task]
        scored = sorted(
            (r for r in rows if r.student and task in r.cells and r.cells[task].score is not None),
            key=lambda r: -r.cells[task].score,
        )
        if len(scored) < 2 or scored[0].cells[task].score == scored[1].cells[task].score:
            continue
        found = honest.dev_predictions(snapshot, spec, scored[0].cells[task].trial_id, scored[1].cells[task].trial_id)
        if found is None:
            continue
        gold, (top, second) = found
        base = statistics.majority_predictions(gold, spec.is_regression)
        plans[task] = (scored[0].label, len(tests))
        tests += [(spec.primary_metric, top, second, gold), (spec.primary_metric, top, base, gold)]
    if not tests:
        return {t: None for t in tasks}, 0
    resamples = statistics.bootstrap_resamples(len(tests))
    results = [statistics.paired_bootstrap(*test, resamples, honest.BOOTSTRAP_SEED) for test in tests]
    adjusted = statistics.holm([r.p for r in results])
    out = {}
    for task in tasks:
        if task not in plans:
            out[task] = None
            continue
        label, first = plans[task]
        ahead = all(results[i].delta > 0 and adjusted[i] < statistics.ALPHA for i in (first, first + 1))
        out[task] = label if ahead else None
    return out, len(tests)


def comparison_table(snapshot: Snapshot, reference: list[dict]) -> list[str]:
    tasks = [t for t in TASKS if (snapshot.frame["task"] == t).any()]
    rows, notes = comparison_rows(snapshot, tasks, reference)
    lead, tests = leaders(snapshot, tasks, rows)
    lines = [
        "| method | " + " | ".join(task_header(TASKS[t]) for t in tasks) + " | Average |",
        "|---|" + "---:|" * (len(tasks) + 1),
    ]
    partial = []
    for row in rows:
        cells = []
        for task in tasks:
            cell = row.cells.get(task)
            text = "–" if cell is None else cell.text()
            cells.append(f"**{text}**" if row.student and lead[task] == row.label else text)
        average, count = _average(row, tasks)
        if average is None:
            cells.append("–")
        elif count == len(tasks):
            cells.append(f"{100 * average:.2f}")
        else:
            cells.append(f"{100 * average:.2f} (avg over {count}/{len(tasks)} tasks)†")
            missing = [t for t in tasks if t not in row.cells or row.cells[t].score is None]
            partial.append(f"{row.label}: {', '.join(missing)}")
        lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    lines.append("")
    if partial:
        lines += [
            f"† Average over the tasks this row has, not comparable with complete rows; missing: {'; '.join(partial)}.",
            "",
        ]
    unled = [t for t in tasks if lead[t] is None]
    if unled:
        notes.append(
            f"No method leads on {', '.join(unled)}: the best student ties for the top, has no stored "
            "predictions to test, or is not distinguishable from the runner-up or from chance "
            + (f"(Holm over the {tests} leader tests of this table)." if tests else "(no leader test could be made).")
        )
    return lines + [note + "  " for note in notes] + ([""] if notes else [])
