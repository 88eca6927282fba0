"""``run_study.py status``: per study, grid size, trial states, running trials, shared and given-up points.

Answers at once: it reads Optuna's tables and ours with plain SQL (SQLAlchemy Core), so it imports neither
torch nor transformers nor Optuna itself (setting up Optuna's storage alone costs ~0.9 s: it imports
alembic). The tables and columns read are those of Optuna's RDB schema (``studies``,
``study_user_attributes``, ``trials``, ``trial_user_attributes``); ``tests/test_storage.py`` checks the
lines against Optuna's own API.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict

import sqlalchemy as sa

from harness.store.storage import Storage

_STUDIES = sa.table("studies", sa.column("study_id"), sa.column("study_name"))
_STUDY_ATTRS = sa.table("study_user_attributes", sa.column("study_id"), sa.column("key"), sa.column("value_json"))
_TRIALS = sa.table(
    "trials", sa.column("trial_id"), sa.column("study_id"), sa.column("state"), sa.column("datetime_start", sa.DateTime)
)
_TRIAL_ATTRS = sa.table("trial_user_attributes", sa.column("trial_id"), sa.column("key"), sa.column("value_json"))
_SHOWN = ("point", "worker", "equivalent_of", "slurm_job")  # the trial attributes status reads


def _read(storage: Storage) -> tuple[list, dict, dict, dict]:
    """(studies by name, grid_size by study_id, trials by study_id, shown attributes by trial_id)."""
    if not sa.inspect(storage.engine).has_table("studies"):
        return [], {}, {}, {}  # no Optuna study was ever created in this database
    with storage.engine.connect() as connection:
        studies = connection.execute(sa.select(_STUDIES).order_by(_STUDIES.c.study_name)).all()
        grids = {
            row.study_id: json.loads(row.value_json)
            for row in connection.execute(sa.select(_STUDY_ATTRS).where(_STUDY_ATTRS.c.key == "grid_size"))
        }
        trials = defaultdict(list)
        for row in connection.execute(sa.select(_TRIALS).order_by(_TRIALS.c.trial_id)):
            trials[row.study_id].append(row)
        attrs = defaultdict(dict)
        for row in connection.execute(sa.select(_TRIAL_ATTRS).where(_TRIAL_ATTRS.c.key.in_(_SHOWN))):
            attrs[row.trial_id][row.key] = json.loads(row.value_json)
    return studies, grids, trials, attrs


def study_status(storage: Storage) -> list[str]:
    """One block per study: grid size, complete, running (worker and age), failed, pruned, left, shared, given up."""
    now = time.time()
    lines = []
    studies, grids, all_trials, attrs = _read(storage)
    for study in studies:
        trials = all_trials.get(study.study_id, [])
        count = Counter(t.state for t in trials)
        points = storage.points(study.study_name)
        grid = grids.get(study.study_id, len(points))
        finished = count["COMPLETE"] + count["PRUNED"]
        left = sum(p["state"] != "done" for p in points) if points else max(0, grid - finished)
        shared = sum("equivalent_of" in attrs.get(t.trial_id, {}) for t in trials)
        lines.append(
            f"{study.study_name}: grid {grid}, complete {count['COMPLETE']}, running {count['RUNNING']}, "
            f"failed {count['FAIL']}, pruned {count['PRUNED']}, left {left}"
            + (f", shared {shared} (copied from equivalent trials, not trained)" if shared else "")
            + _eta(storage, study.study_name, points, count["RUNNING"])
        )
        for trial in trials:
            if trial.state == "RUNNING":
                age = now - trial.datetime_start.timestamp() if trial.datetime_start else 0.0
                shown = attrs.get(trial.trial_id, {})
                lines.append(
                    f"    running: trial_id {trial.trial_id} {shown.get('point', '?')} on "
                    f"{shown.get('worker', '?')}"
                    + (f" (SLURM job {shown['slurm_job']})" if "slurm_job" in shown else "")
                    + f", {age:.0f} s"
                )
        lines += [
            f"    given up: {p['point_key']} after {p['attempts']} attempt(s): {p['last_error']} "
            "(run --retry-failed to try again)"
            for p in points
            if p["state"] == "failed"
        ]
    return lines


def _eta(storage: Storage, study_name: str, points: list[dict], running: int) -> str:
    """``, ETA …`` from the study's measured mean training time and the points it still trains itself
    (shared points cost nothing), spread over the trials running now; empty before a trial finished."""
    from harness.store.storage import results_table

    table = results_table.c
    with storage.engine.connect() as connection:
        seconds = connection.execute(
            sa.select(sa.func.avg(table.seconds), sa.func.count()).where(
                table.study_name == study_name, table.state == "COMPLETE", table.seconds > 0
            )
        ).one()
    linked = set(storage.links(study_name)) if points else set()
    to_train = sum(p["state"] != "done" and p["point_key"] not in linked for p in points)
    if not to_train or not seconds[1]:
        return ""
    eta = seconds[0] * to_train / max(1, running)
    shown = f"{eta / 60:.0f} min" if eta >= 90 else f"{eta:.0f} s"
    return (
        f", ETA ~{shown} ({to_train} to train × mean {seconds[0]:.0f} s over {seconds[1]} trained"
        + (f", {running} running at once" if running > 1 else "")
        + ")"
    )
