"""Reports: a pure function of the database.

:func:`trials_frame` flattens every trial of the selected studies into one pandas DataFrame;
the markdown tables are built from that frame alone, so re-running the report on the same
database gives identical files.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState

from harness.glue import get_task
from harness.storage import Storage

COLUMNS = ["study", "study_file", "task", "method", "number", "state", "value", "lr", "eta", "lambda",
           "seconds", "best_epoch", "fail_reason"]


def trials_frame(storage: Storage, name: str | None = None) -> pd.DataFrame:
    """One row per trial of every study (optionally only those of study file ``name``)."""
    rows = []
    for summary in optuna.get_all_study_summaries(storage.optuna, include_best_trial=False):
        study_file = summary.study_name.split("/")[0]
        if name is not None and study_file != name:
            continue
        attrs = summary.user_attrs
        for trial in storage.optuna.get_all_trials(summary._study_id, deepcopy=False):
            rows.append({
                "study": summary.study_name,
                "study_file": study_file,
                "task": attrs.get("task"),
                "method": attrs.get("method"),
                "number": trial.number,
                "state": trial.state.name,
                "value": trial.value,
                "lr": trial.user_attrs.get("lr"),
                "eta": trial.user_attrs.get("eta"),
                "lambda": trial.user_attrs.get("lambda"),
                "seconds": trial.user_attrs.get("seconds"),
                "best_epoch": trial.user_attrs.get("best_epoch"),
                "fail_reason": trial.user_attrs.get("fail_reason"),
            })
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.sort_values(["study", "number"], kind="stable").reset_index(drop=True)


def teachers(storage: Storage, name: str | None = None) -> dict[str, dict]:
    """The teacher's dev result per study (as recorded by the workers)."""
    out = {}
    for summary in optuna.get_all_study_summaries(storage.optuna, include_best_trial=False):
        if name is not None and summary.study_name.split("/")[0] != name:
            continue
        if "teacher" in summary.user_attrs:
            out[summary.study_name] = summary.user_attrs["teacher"]
    return out


def best_per_study(frame: pd.DataFrame) -> pd.DataFrame:
    """Per study: the best COMPLETE trial (ties: the earliest), trial counts and total time."""
    rows = []
    for study, group in frame.groupby("study", sort=True):
        complete = group[group["state"] == TrialState.COMPLETE.name]
        best = complete.sort_values(["value", "number"], ascending=[False, True]).head(1)
        row = {
            "study": study, "task": group["task"].iloc[0], "method": group["method"].iloc[0],
            "complete": len(complete), "failed": int((group["state"] == "FAIL").sum()),
            "pruned": int((group["state"] == "PRUNED").sum()),
            "hours": group["seconds"].fillna(0).sum() / 3600,
        }
        if len(best):
            best = best.iloc[0]
            row.update(value=best["value"], lr=best["lr"], eta=best["eta"], lam=best["lambda"], number=best["number"])
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None or pd.isna(value) else f"{100 * value:.{digits}f}"


def markdown_report(frame: pd.DataFrame, teacher_rows: dict[str, dict], command: str) -> str:
    best = best_per_study(frame)
    lines = ["# Sweep report", ""]
    if best.empty:
        return "\n".join(lines + ["No trials in this database yet.", ""])
    for task, group in best.groupby("task", sort=True):
        metric = get_task(task).primary_metric
        lines += [f"## {task} (dev, {metric} × 100)", "",
                  "| method | best dev | lr | η | λ | trial | complete | failed | pruned | time (h) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        teacher = next((teacher_rows[s] for s in group["study"] if s in teacher_rows), None)
        if teacher is not None:
            lines.append(f"| teacher | {_fmt(teacher['value'])} | | | | | | | | |")
        for row in group.itertuples():
            has_best = "value" in group.columns and not pd.isna(getattr(row, "value", None))
            lines.append(
                f"| {row.method} | {_fmt(row.value) if has_best else '–'} | "
                f"{f'{row.lr:g}' if has_best else '–'} | {f'{row.eta:g}' if has_best else '–'} | "
                f"{f'{row.lam:g}' if has_best else '–'} | {int(row.number) if has_best else '–'} | "
                f"{row.complete} | {row.failed} | {row.pruned} | {row.hours:.3f} |")
        lines += ["", f"Reproduce: `{command}`", ""]
    return "\n".join(lines)


def write_report(storage: Storage, out: Path, name: str | None, command: str) -> Path:
    """Write ``README.md`` and ``trials.csv`` into ``out``; returns the README path."""
    frame = trials_frame(storage, name)
    text = markdown_report(frame, teachers(storage, name), command)
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "trials.csv", index=False)
    (out / "README.md").write_text(text)
    return out / "README.md"
