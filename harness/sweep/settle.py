"""Claim settling: the trials of workers that died, and points whose workers keep dying.

A stale claim's RUNNING trials are failed ("worker died"), a trial the dead worker had in fact finished is
kept (its point is not run twice), and a point whose worker dies ``MAX_SILENT_DEATHS`` times in a row
before finishing an epoch is given up.
"""

from __future__ import annotations

import time

import optuna
from optuna.trial import TrialState

from harness.store.claims import GRACE_SECONDS, worker_is_dead
from harness.store.storage import Storage

MAX_SILENT_DEATHS = 3  # a point whose worker is killed this often in a row, never finishing an epoch, is given up
WORKER_DIED = "worker died"  # how every trial of a killed worker's fail_reason begins


def settle_stale(study: optuna.Study, storage: Storage, claim) -> bool:
    """After taking over a dead worker's claim: mark its RUNNING trials of that point FAIL.

    Returns True if the dead worker had in fact finished the point (a COMPLETE or PRUNED trial of
    this point by that worker), so that it is not run twice.
    """
    finished = False
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        if trial._trial_id != claim.stale_trial_id and (
            attrs.get("claim") != claim.key or attrs.get("worker") != claim.stale_worker
        ):
            continue
        if trial.state == TrialState.RUNNING:
            fail_trial(storage, trial._trial_id, f"{WORKER_DIED} (claim taken over)")
            trial = storage.optuna.get_trial(trial._trial_id)  # it may have finished meanwhile
        done = trial.state in (TrialState.COMPLETE, TrialState.PRUNED)
        finished |= done
        if done and storage.result(trial._trial_id) is not None:
            storage.record_result(trial._trial_id, state=trial.state.name, value=trial.value)
    return finished


def silent_deaths(study: optuna.Study, key: str) -> int:
    """How many of the point's latest trials in a row died (worker killed) before finishing an epoch."""
    count = 0
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: -t.number):
        if trial.user_attrs.get("claim") != key:
            continue
        died = str(trial.user_attrs.get("fail_reason", "")).startswith(WORKER_DIED)
        if not (trial.state == TrialState.FAIL and died and not trial.user_attrs.get("epochs")):
            break
        count += 1
    return count


def fail_trial(storage: Storage, trial_id: int, reason: str) -> None:
    try:
        storage.optuna.set_trial_user_attr(trial_id, "fail_reason", reason)
        storage.optuna.set_trial_state_values(trial_id, TrialState.FAIL)
    except RuntimeError:
        return  # finished meanwhile (optuna raises UpdateFinishedTrialError, a RuntimeError)
    if storage.result(trial_id) is not None:
        storage.record_result(trial_id, state="FAIL")


def fail_orphans(study: optuna.Study, storage: Storage) -> None:
    """Mark RUNNING trials that no live worker owns as FAIL.

    A trial is an orphan when its worker (``host:pid``) ran on this host and is gone, when its claim is
    stale (its heartbeat older than ``GRACE_SECONDS``: a worker on any host that died or lost touch) or held
    for another trial, or when it never got as far as naming its worker and started more than
    ``GRACE_SECONDS`` ago.
    """
    now = time.time()
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    claims = {row["point_key"]: row for row in storage.points(study.study_name)} if running else {}
    for trial in running:
        worker = trial.user_attrs.get("worker")
        started = trial.datetime_start.timestamp() if trial.datetime_start else now
        claim = claims.get(trial.user_attrs.get("claim"))
        lost = claim is not None and started < now - GRACE_SECONDS and _claim_lost(claim, trial, worker, now)
        if (
            lost
            or (worker is not None and worker_is_dead(worker))
            or (worker is None and started < now - GRACE_SECONDS)
        ):
            fail_trial(storage, trial._trial_id, WORKER_DIED)


def _claim_lost(row: dict, trial, worker: str | None, now: float) -> bool:
    """The trial's claim row no longer backs it: held for another trial or worker, or stale."""
    if row["worker"] != worker or row["trial_id"] != trial._trial_id:
        return True
    return row["state"] == "claimed" and Storage._is_stale(row, now)
