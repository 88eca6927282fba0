"""``run_study.py status``: per study, grid size, trial states, running trials, given-up points.

Reads the database only (Optuna and our tables): no torch, no transformers, so it answers at once.
"""

from __future__ import annotations

import time

import optuna
from optuna.trial import TrialState

from harness.storage import Storage


def study_status(storage: Storage) -> list[str]:
    """One block per study: grid size, complete, running (worker and age), failed, pruned, left, given up."""
    now = time.time()
    lines = []
    for summary in sorted(
        optuna.get_all_study_summaries(storage.optuna, include_best_trial=False), key=lambda s: s.study_name
    ):
        trials = storage.optuna.get_all_trials(summary._study_id, deepcopy=False)
        count = {state: sum(t.state == state for t in trials) for state in TrialState}
        points = storage.points(summary.study_name)
        grid = summary.user_attrs.get("grid_size", len(points))
        finished = count[TrialState.COMPLETE] + count[TrialState.PRUNED]
        left = sum(p["state"] != "done" for p in points) if points else max(0, grid - finished)
        shared = sum("equivalent_of" in t.user_attrs for t in trials)
        lines.append(
            f"{summary.study_name}: grid {grid}, complete {count[TrialState.COMPLETE]}, "
            f"running {count[TrialState.RUNNING]}, failed {count[TrialState.FAIL]}, "
            f"pruned {count[TrialState.PRUNED]}, left {left}"
            + (f", shared {shared} (copied from equivalent trials, not trained)" if shared else "")
        )
        for trial in trials:
            if trial.state == TrialState.RUNNING:
                age = now - trial.datetime_start.timestamp() if trial.datetime_start else 0.0
                lines.append(
                    f"    running: trial_id {trial._trial_id} {trial.user_attrs.get('point', '?')} on "
                    f"{trial.user_attrs.get('worker', '?')}, {age:.0f} s"
                )
        lines += [
            f"    given up: {p['point_key']} after {p['attempts']} attempt(s): {p['last_error']} "
            "(run --retry-failed to try again)"
            for p in points
            if p["state"] == "failed"
        ]
    return lines
