"""``runs.md``: how the sweep ran, beside the report of what it found.

The report's main document (``README.md``) is a function of the results alone: the COMPLETE trials' points,
seeds, values, per-epoch scores and predictions, the real failures, the studies' configuration and teacher.
Two runs of the same study files, on one local worker or on a cluster whose workers were preempted and
requeued, give the same ``README.md`` byte for byte (but for the storage URL in its commands). Everything
that depends on how the sweep ran is here instead: trial numbers, the interrupted trials (Ctrl-C, SIGTERM, a
SLURM preemption or time limit, a worker that died: their point went back and another trial ran it), workers,
CPU/GPU hours, time to best and the optimisation history against cumulative compute. ``trials.csv`` is the
raw record of both: every trial of this run, one row each.
"""

from __future__ import annotations

import pandas as pd

from harness.report.frame import Snapshot, best_per_study, interrupted, number_cell, sections
from harness.spec.methods import METHODS

LINK = (
    "How this sweep ran (trial numbers, interrupted trials, workers, CPU/GPU hours, time to best, the optimisation "
    "history) is in [runs.md](runs.md); this document depends on the results alone."
)
STATES = (("COMPLETE", "complete"), ("FAIL", "failed"), ("PRUNED", "pruned"), ("RUNNING", "running"))


def state_counts(frame: pd.DataFrame, stopped: int | None = None) -> str:
    """``3 complete, 1 failed, 0 pruned, 0 running`` of ``frame``'s trials; with ``stopped``, that many
    ``interrupted`` after the failed ones (``frame`` then holds no interrupted trial)."""
    counts = frame["state"].value_counts()
    parts = [f"{int(counts.get(state, 0))} {word}" for state, word in STATES]
    if stopped is not None:
        parts.insert(2, f"{stopped} interrupted")
    return ", ".join(parts)


def runs_report(snapshot: Snapshot, command: str, figures: dict | None = None) -> str:
    """The text of ``runs.md``; ``figures`` as :func:`harness.report.figures.draw_all` returns them (its
    ``("runs", file, task)`` entries)."""
    frame, figures = snapshot.frame, figures or {}
    lines = ["# How the sweep ran", "", "The run behind [README.md](README.md). " + _ABOUT, ""]
    if frame.empty:
        return "\n".join(lines + ["No trials in this database yet.", ""])
    stopped = interrupted(frame)
    lines += [
        f"{len(snapshot.studies)} studies, {len(frame)} trials: "
        + state_counts(frame[~stopped], int(stopped.sum()))
        + ".",
        "",
        "Per study: the best grid trial's number in this run and its point (the point README.md reports; ties in "
        "grid order), the trial counts (failed: real failures, as in README.md; interrupted: trials stopped by "
        'Ctrl-C, SIGTERM, a SLURM preemption or time limit ("interrupted") or whose worker died ("worker '
        'died …"), grid or seed, each of whose points another trial ran, resuming from its epoch checkpoint), '
        "the distinct workers, compute (CPU/GPU hours from each trial's wall time and device, interrupted "
        "trials included) and time to best (cumulative trial time, in trial-number order, up to and including "
        "the best trial).",
        "",
    ]
    summary = best_per_study(frame)
    workers = frame.groupby("study", sort=True)["worker"].nunique()
    order = {m: i for i, m in enumerate(METHODS)}
    for (study_file, task), rows in sections(frame):  # the same sections as README.md's, in its order
        section = summary[summary["study"].isin(set(rows["study"]))]
        lines += [
            f"### {study_file} / {task}",
            "",
            "| method | best trial | its point | complete | failed | interrupted | pruned | running | seeds | "
            "workers | CPU h | GPU h | time to best (h) |",
            "|---|---:|---|" + "---:|" * 10,
        ]
        for row in sorted(section.itertuples(), key=lambda r: order[r.method]):
            point = row.point if isinstance(row.point, str) else "–"
            lines.append(
                f"| {row.method} | {number_cell(row.number, '.0f')} | {point} | "
                f"{row.complete} | {row.failed} | {row.interrupted} | {row.pruned} | {row.running} | {row.seeds} | "
                f"{int(workers.get(row.study, 0))} | {row.cpu_hours:.3f} | {row.gpu_hours:.3f} | "
                f"{number_cell(row.time_to_best, '.3f', 1 / 3600)} |"
            )
        lines += ["", f"Reproduce: `{command}`", ""]
        lines += [f"![{title}]({path})" for title, path in figures.get(("runs", study_file, task), [])] + [""]
    return "\n".join(lines)


_ABOUT = (
    "README.md is a function of the sweep's results alone; this file holds what depends on how the sweep ran "
    "(which worker ran which trial when, interruptions, wall times), so it differs between two runs of the same "
    "sweep where README.md does not. `trials.csv` has every trial of this run, one row each."
)
