"""Reports: a pure function of the database.

:func:`load` reads every study's trials once and flattens them into one pandas DataFrame (one row
per trial, the best epoch's per-split metrics as ``<split>.<metric>`` columns); every table and
figure is built from that frame and the studies' user attributes alone, so re-running the report
on the same database gives identical files. A database still being written is fine: RUNNING
trials are counted, never scored.

Scores. A trial's value is its best epoch's primary metric. A (method, task) cell of the
comparison is the best *grid* trial (confirmation re-runs are left out), shown with every metric
GLUE reports for the task at that trial's reported epoch (MNLI matched/mismatched, MRPC and QQP
F1/accuracy, STS-B Pearson/Spearman). A task's score is the mean of those metrics (the GLUE
leaderboard's convention for multi-metric tasks) and the Average is the mean of the task scores.

Seeds. Confirmation trials (``confirmation=True``) give mean ± std, a t-interval and Welch's t-test
of ALP against each baseline (:mod:`harness.seeds`). Reference numbers
(:func:`harness.reference.load_reference`) add "(published)" rows.
The figures are drawn by :mod:`harness.plots`.
"""

from __future__ import annotations

import contextlib
import gc
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import optuna
import pandas as pd

from harness import fair_report, plots
from harness.files import atomic_write
from harness.glue import TASKS, TaskSpec
from harness.methods import METHODS
from harness.reference import load_reference
from harness.seeds import confirmations, seed_groups, seeds_tables
from harness.storage import Storage

COLUMNS = ["study", "study_file", "task", "method", "number", "state", "value", "point", "lr", "eta", "lambda",
           "seed", "confirmation", "device", "worker", "seconds", "best_epoch", "n_epochs", "fail_reason",
           "datetime_start", "datetime_complete", "trial_id", "selection", "reported_epoch", "score",
           "equivalent_of", "alpha_entropy"]
_SHORT = {"accuracy": "acc", "f1": "F1", "mcc": "MCC", "pearson": "Pearson", "spearman": "Spearman",
          "dev_matched": "m", "dev_mismatched": "mm"}


@dataclass(frozen=True)
class Snapshot:
    """What the report knows: study user attributes by study name, one row per trial, the stored
    eval labels (study → split → labels) and the stored eval logits of the best grid trial of every
    (task, method) (trial_id → split → (epoch, logits))."""

    studies: dict[str, dict]
    frame: pd.DataFrame
    labels: dict = field(default_factory=dict)
    predictions: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- loading
def load(storage: Storage, name: str | None = None) -> Snapshot:
    """Read the harness studies (``<file>/<TASK>/<method>``; optionally only study file ``name``)."""
    studies, rows = {}, []
    for frozen in sorted(storage.optuna.get_all_studies(), key=lambda s: s.study_name):
        parts = frozen.study_name.split("/")
        if len(parts) != 3 or (name is not None and parts[0] != name):
            continue
        attrs = dict(frozen.user_attrs)
        attrs.setdefault("task", parts[1])
        attrs.setdefault("method", parts[2])
        if attrs["task"] not in TASKS or attrs["method"] not in METHODS:
            continue  # not a harness study
        attrs["study_file"] = parts[0]
        studies[frozen.study_name] = attrs
        for trial in storage.optuna.get_all_trials(frozen._study_id, deepcopy=False):
            if "duplicate_of" in trial.user_attrs:
                continue  # a TPE proposal of an evaluated point: told the earlier value, never trained
            rows.append(_trial_row(frozen.study_name, attrs, trial))
    frame = pd.DataFrame(rows)
    extra = sorted(set(frame.columns) - set(COLUMNS) - {"epochs", "alpha"})
    frame = frame.reindex(columns=[*COLUMNS, *extra, "alpha", "epochs"])
    frame = frame.sort_values(["study", "number"], kind="stable").reset_index(drop=True)
    frame["confirmation"] = frame["confirmation"].astype(bool)
    for column in ("value", "lr", "eta", "lambda", "seconds", "score", "alpha_entropy"):
        frame[column] = pd.to_numeric(frame[column]).astype(float)
    for column in ("number", "seed", "best_epoch", "n_epochs", "trial_id", "reported_epoch", "equivalent_of"):
        frame[column] = frame[column].astype("Int64")
    if frame.empty:
        return Snapshot(studies, frame)
    picked = best_trials(frame, ["task", "method"])["trial_id"].dropna()
    return Snapshot(studies, frame, storage.labels(), storage.predictions(int(t) for t in picked))


def _trial_row(study: str, attrs: dict, trial: optuna.trial.FrozenTrial) -> dict:
    """One trial; its metrics are those of its *reported* epoch (the selected one; a confirmation under
    ``selection: dev`` reports its last), ``score`` the primary metric on dev there."""
    user = trial.user_attrs
    epochs = list(user.get("epochs") or [])
    best = _best_epoch(epochs, user.get("reported_epoch", user.get("best_epoch")))
    spec = TASKS[attrs["task"]]
    score = ((best.get("metrics") or {}).get(spec.eval_splits[0]) or {}).get(spec.primary_metric)
    seconds = user.get("seconds")
    if seconds is None and epochs:  # failed or still running: the epochs it finished
        seconds = sum(float(e.get("seconds") or 0.0) for e in epochs)
    row = {
        "study": study, "study_file": attrs["study_file"], "task": attrs["task"], "method": attrs["method"],
        "number": trial.number, "state": trial.state.name, "value": trial.value, "point": user.get("point"),
        "lr": user.get("lr"), "eta": user.get("eta"), "lambda": user.get("lambda"), "seed": user.get("seed"),
        "confirmation": bool(user.get("confirmation", False)), "device": user.get("device"),
        "worker": user.get("worker"), "seconds": seconds, "best_epoch": best.get("epoch"), "n_epochs": len(epochs),
        "fail_reason": user.get("fail_reason"),
        "datetime_start": trial.datetime_start.isoformat() if trial.datetime_start else None,
        "datetime_complete": trial.datetime_complete.isoformat() if trial.datetime_complete else None,
        "trial_id": trial._trial_id, "selection": ((attrs.get("config") or {}).get("fixed") or {}).get(
            "selection", "dev"), "reported_epoch": best.get("epoch"), "score": score,
        "equivalent_of": user.get("equivalent_of"), "alpha_entropy": best.get("alpha_entropy"),
        "alpha": best.get("alpha"), "epochs": epochs,
    }
    for split, metrics in (best.get("metrics") or {}).items():
        for metric, value in metrics.items():
            row[f"{split}.{metric}"] = value
    for term, value in (best.get("losses") or {}).items():
        row[f"loss.{term}"] = value
    return row


def _best_epoch(epochs: list[dict], number: int | None) -> dict:
    """The recorded best epoch; for a trial without one (pruned, running) its best so far."""
    if number is not None:
        return next((e for e in epochs if e.get("epoch") == number), {})
    scored = [e for e in epochs if e.get("value") is not None]
    return max(scored, key=lambda e: e["value"]) if scored else {}


def trials_frame(storage: Storage, name: str | None = None) -> pd.DataFrame:
    """One row per trial of every harness study (optionally only those of study file ``name``)."""
    return load(storage, name).frame


# --------------------------------------------------------------------------- per study
def _done(frame: pd.DataFrame) -> pd.DataFrame:
    """COMPLETE grid trials (confirmation re-runs left out)."""
    return frame[(frame["state"] == "COMPLETE") & ~frame["confirmation"]]


def best_trials(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """The best COMPLETE grid trial per group of ``by`` (ties: the first study, then the earliest trial),
    indexed by ``by``."""
    ranked = _done(frame).sort_values(["value", "study", "number"], ascending=[False, True, True], kind="stable")
    return ranked.drop_duplicates(by).set_index(by, drop=False).sort_index()


def best_per_study(frame: pd.DataFrame) -> pd.DataFrame:
    """Per study: the best grid trial, trial counts, CPU/GPU hours and time to best.

    Counts are of grid trials (``seeds``: COMPLETE confirmation trials). Hours come from each trial's
    wall time (``seconds``, or its finished epochs while it runs) on a ``cuda:`` device (GPU) or any
    other (CPU). Time to best: the seconds of every trial numbered up to the best one.
    """
    state, grid = frame["state"], ~frame["confirmation"]
    seconds = frame["seconds"].fillna(0.0).astype(float)
    gpu = frame["device"].fillna("").astype(str).str.startswith("cuda")
    flags = pd.DataFrame({
        "study": frame["study"], "complete": grid & (state == "COMPLETE"), "failed": grid & (state == "FAIL"),
        "pruned": grid & (state == "PRUNED"), "running": grid & state.isin(["RUNNING", "WAITING"]),
        "seeds": ~grid & (state == "COMPLETE"), "cpu_hours": seconds.where(~gpu, 0.0) / 3600,
        "gpu_hours": seconds.where(gpu, 0.0) / 3600, "hours": seconds / 3600})
    summary = flags.groupby("study", sort=True).sum()
    counts = ["complete", "failed", "pruned", "running", "seeds"]
    summary[counts] = summary[counts].astype(int)
    best = best_trials(frame, ["study"]).set_index("study")
    limit = frame["study"].map(best["number"])
    summary["time_to_best"] = seconds.where(frame["number"] <= limit, 0.0).groupby(frame["study"]).sum()
    summary.loc[~summary.index.isin(best.index), "time_to_best"] = math.nan
    first = frame.groupby("study", sort=True)[["study_file", "task", "method"]].first()
    picked = best[["value", "lr", "eta", "lambda", "number"]].rename(columns={"lambda": "lam"})
    return first.join(summary).join(picked).reset_index()


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
        found = {name: attrs["teacher"] for name, attrs in snapshot.studies.items()
                 if attrs["task"] == task and "teacher" in attrs}
        if found:
            teacher.cells[task] = teacher_cell(TASKS[task], found[min(found)])
            if len({str(t.get("key")) for t in found.values()}) > 1:
                notes.append(f"‡ {task}: the studies used different teachers; the teacher of {min(found)} is shown.")
    rows = [teacher] if teacher.cells else []
    chance = Row("chance (majority class of dev)", {}, student=False)
    for task in tasks:
        values = fair_report.chance_values(TASKS[task], fair_report.task_labels(snapshot, task))
        if values is not None:
            chance.cells[task] = Cell(values)
    rows += [chance] if chance.cells else []
    best = best_trials(frame, ["task", "method"])
    files = _done(frame).groupby(["task", "method"])["study_file"].unique()
    flagged = set()
    for method in METHODS:
        row = Row(method, {}, student=True)
        for task in tasks:
            if (task, method) in best.index:
                picked = best.loc[(task, method)]
                several = len(files[(task, method)]) > 1
                mark = "‡" * several + fair_report.shared_mark(method, (picked["lr"], picked["eta"], picked["lambda"]))
                if fair_report.near_chance(snapshot, TASKS[task], picked["trial_id"]):
                    mark += " ≈ chance"
                    flagged.add(f"{method} on {task}")
                row.cells[task] = replace(trial_cell(TASKS[task], picked), mark=mark)
                if several:
                    names = ", ".join(sorted(files[(task, method)]))
                    notes.append(f"‡ {method} on {task}: best over the study files {names} "
                                 "(pass --name to compare one study file).")
        if row.cells:
            rows.append(row)
    if flagged:
        notes.append("≈ chance: within noise of always predicting the majority class (the paired bootstrap's 95 % "
                     f"interval of the difference reaches 0): {', '.join(sorted(flagged))}.")
    if any(" ≡ " in cell.mark for row in rows for cell in row.cells.values()):
        notes.append("≡ KD / ≡ NKD: the method's best grid point has λ = 0 (η = 0 for KD), the same computation "
                     "as KD's (NKD's) point; it is a shared trial, and the gain over KD (NKD) is zero.")
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


def comparison_table(snapshot: Snapshot, reference: list[dict]) -> list[str]:
    tasks = [t for t in TASKS if (snapshot.frame["task"] == t).any()]
    rows, notes = comparison_rows(snapshot, tasks, reference)
    best = {t: max((r.cells[t].score for r in rows if r.student and t in r.cells
                    and r.cells[t].score is not None), default=None) for t in tasks}
    full = [_average(r, tasks)[0] for r in rows if r.student and _average(r, tasks)[1] == len(tasks)]
    best_avg = max(full, default=None)
    lines = ["| method | " + " | ".join(task_header(TASKS[t]) for t in tasks) + " | Average |",
             "|---|" + "---:|" * (len(tasks) + 1)]
    partial = []
    for row in rows:
        cells = []
        for task in tasks:
            cell = row.cells.get(task)
            text = "–" if cell is None else cell.text()
            bold = row.student and cell is not None and cell.score is not None and cell.score == best[task]
            cells.append(f"**{text}**" if bold else text)
        average, count = _average(row, tasks)
        if average is None:
            cells.append("–")
        elif count == len(tasks):
            cells.append(f"**{100 * average:.2f}**" if row.student and average == best_avg else f"{100 * average:.2f}")
        else:
            cells.append(f"{100 * average:.2f} (avg over {count}/{len(tasks)} tasks)†")
            missing = [t for t in tasks if t not in row.cells or row.cells[t].score is None]
            partial.append(f"{row.label}: {', '.join(missing)}")
        lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    lines.append("")
    if partial:
        lines += [f"† Average over the tasks this row has, not comparable with complete rows; missing: "
                  f"{'; '.join(partial)}.", ""]
    return lines + [note + "  " for note in notes] + ([""] if notes else [])


# --------------------------------------------------------------------------- document
def _num(value, fmt: str, scale: float = 1.0) -> str:
    return "–" if value is None or pd.isna(value) else format(scale * value, fmt)


def study_table(snapshot: Snapshot, section: pd.DataFrame, summary: pd.DataFrame) -> list[str]:
    lines = ["| method | best dev | lr | η | λ | trial | complete | failed | pruned | running | seeds | CPU h "
             "| GPU h | time to best (h) |", "|---|" + "---:|" * 13]
    teacher = next((snapshot.studies[s]["teacher"] for s in sorted(set(section["study"]))
                    if "teacher" in snapshot.studies[s]), None)
    if teacher is not None:
        lines.append(f"| teacher | {_num(teacher.get('value'), '.2f', 100)} |" + " |" * 12)
    order = {m: i for i, m in enumerate(METHODS)}
    for row in sorted(summary.itertuples(), key=lambda r: order[r.method]):
        lines.append(
            f"| {row.method} | {_num(row.value, '.2f', 100)} | {_num(row.lr, 'g')} | {_num(row.eta, 'g')} | "
            f"{_num(row.lam, 'g')} | {_num(row.number, '.0f')} | {row.complete} | {row.failed} | {row.pruned} | "
            f"{row.running} | {row.seeds} | {row.cpu_hours:.3f} | {row.gpu_hours:.3f} | "
            f"{_num(row.time_to_best, '.3f', 1 / 3600)} |")
    return lines


def markdown_report(snapshot: Snapshot, command: str, reference: list[dict] | None = None,
                    figures: dict | None = None, budget: int | None = None, equal: tuple | None = None) -> str:
    """The README text; ``reference`` as :func:`~harness.reference.load_reference` returns it, ``figures`` as
    :func:`harness.plots.draw_all` does, ``budget`` the equal budget n (default: the smallest grid), ``equal``
    the equal-budget section if already computed (:func:`harness.fair_report.equal_budget`)."""
    frame, reference, figures = snapshot.frame, reference or [], figures or {}
    lines = ["# Sweep report", ""]
    if frame.empty:
        return "\n".join(lines + ["No trials in this database yet.", ""])
    counts = frame["state"].value_counts()
    lines += [f"{len(snapshot.studies)} studies, {len(frame)} trials: " + ", ".join(
        f"{int(counts.get(state, 0))} {word}" for state, word in
        (("COMPLETE", "complete"), ("FAIL", "failed"), ("PRUNED", "pruned"), ("RUNNING", "running"))) + "."
        + _shared_note(frame), ""]
    lines += fair_report.protocol_lines(snapshot)
    lines += ["## Comparison (dev, best of grid)", "",
        "Each cell: the method's best grid trial on the task (chosen by the primary metric; confirmation re-runs "
        "left out), every metric GLUE reports for the task at that trial's reported epoch (the selected one), × 100. **Average**: mean "
        "over tasks of each task's score, a multi-metric task scoring the mean of its metrics (GLUE leaderboard "
        "convention). **Bold**: best student per column (Average: among students with every task). "
        "Rows marked (published) are reference numbers, not runs of this harness.", ""]
    lines += comparison_table(snapshot, reference) + [f"Reproduce: `{command}`", ""]
    lines += [f"![{title}]({path})" for title, path in figures.get("", [])] + [""]
    budget_lines, _ = equal or fair_report.equal_budget(snapshot, budget, command)
    lines += budget_lines + [f"![{title}]({path})" for title, path in figures.get("budget", [])] + [""]
    found = confirmations(frame, best_trials(frame, ["task", "method"]))
    if found:
        lines += seeds_tables(found, command)
    lines += fair_report.paired_tests(snapshot, seed_groups(found), command)
    lines += fair_report.alpha_section(fair_report.alpha_panels(frame), figures, command)
    lines += ["## Studies", "", "Per study: the best grid point, trial counts, compute (CPU/GPU hours from each "
              "trial's wall time and device) and time to best (cumulative trial time, in trial-number order, up "
              "to and including the best trial).", ""]
    summary = best_per_study(frame)
    for (study_file, task), section in _sections(frame):
        lines += [f"### {study_file} / {task} (dev, {TASKS[task].primary_metric} × 100)", ""]
        lines += study_table(snapshot, section, summary[summary["study"].isin(set(section["study"]))])
        lines += ["", f"Reproduce: `{command}`", ""]
        lines += [f"![{title}]({path})" for title, path in figures.get((study_file, task), [])] + [""]
    return "\n".join(lines)


def _shared_note(frame: pd.DataFrame) -> str:
    shared = int(frame["equivalent_of"].notna().sum())
    if not shared:
        return ""
    return (f" {shared} of them are shared: the same computation as another method's trial (λ = 0 ≡ KD, "
            "η = λ = 0 ≡ NKD), trained once and copied (`equivalent_of`).")


def _sections(frame: pd.DataFrame):
    order = {t: i for i, t in enumerate(TASKS)}
    keys = sorted({(f, t) for f, t in zip(frame["study_file"], frame["task"])}, key=lambda k: (k[0], order[k[1]]))
    return [(key, frame[(frame["study_file"] == key[0]) & (frame["task"] == key[1])]) for key in keys]


@contextlib.contextmanager
def _long_lived_objects_frozen():
    """Keep the objects alive on entry (imported libraries: a million of them) out of garbage collection.

    Loading and drawing make many short-lived containers, and each full collection would scan the
    whole heap again: 0.4 s of a 4.5 s report of 1,000 trials, and half of a re-render that draws
    nothing (``python -m bench.report``). :func:`gc.freeze` moves them to the permanent
    generation; processes forked to draw figures inherit that.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def write_report(storage: Storage, out: Path, name: str | None, command: str,
                 reference: Path | None = None, workers: int | None = None, budget: int | None = None) -> Path:
    """Write ``README.md``, ``trials.csv`` and ``figures/*.png`` into ``out``; returns the README path.

    ``workers``: processes drawing the figures (see :func:`harness.plots.render`); ``budget``: the equal
    budget n (default: the smallest grid).
    """
    with _long_lived_objects_frozen():
        return _write_report(storage, out, name, command, reference, workers, budget)


def _write_report(storage: Storage, out: Path, name: str | None, command: str, reference: Path | None,
                  workers: int | None, budget: int | None) -> Path:
    published = load_reference(reference) if reference is not None else []
    snapshot = load(storage, name)
    out.mkdir(parents=True, exist_ok=True)
    groups = seed_groups(confirmations(snapshot.frame, best_trials(snapshot.frame, ["task", "method"])))
    figures, equal = {}, None
    if not snapshot.frame.empty:
        equal = fair_report.equal_budget(snapshot, budget, command)
        extra = fair_report.figure_jobs(equal[1], fair_report.alpha_panels(snapshot.frame))
        figures = plots.draw_all(snapshot, _sections(snapshot.frame), groups, out, workers, extra)
    csv = snapshot.frame.drop(columns=["epochs", "alpha"]).to_csv(index=False).encode()
    atomic_write(out / "trials.csv", lambda stream: stream.write(csv), durable=False)
    text = markdown_report(snapshot, command, published, figures, budget, equal).encode()
    atomic_write(out / "README.md", lambda stream: stream.write(text), durable=False)
    return out / "README.md"
