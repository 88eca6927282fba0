"""TPE over the valid grid points: the proposal loop shared by real sweeps and the sweep-cost replay
(:func:`tpe_search`), and the sweep's TPE loop around it (:func:`run_tpe`: claims, shared points).
"""

from __future__ import annotations

from collections.abc import Callable

import optuna
from optuna.trial import TrialState

from harness.spec.config import StudyConfig, grid_points, point_key
from harness.sweep.copies import copy_into, finished_trial
from harness.sweep.settle import fail_orphans, settle_stale
from harness.sweep.sharing import computation, method_order
from harness.sweep.trial import grid_trials
from harness.util.hashing import fingerprint

MAX_TPE_REPEATS = 100  # consecutive proposals of already-evaluated points before a TPE worker gives up


def tpe_search(
    study: optuna.Study,
    config: StudyConfig,
    method: str,
    budget: int,
    evaluate: Callable[[optuna.Trial, dict], TrialState | None],
    max_failures: int,
    trial_attrs: dict | None = None,
    done: Callable[[], bool] = lambda: False,
    settle: Callable[[], None] | None = None,
) -> None:
    """Let the study's sampler propose valid grid points of ``method`` until ``budget`` trials are evaluated.

    The sampler chooses lr and the (η, λ) pair as categorical values, so every proposal is a valid
    grid point. A trial is a deterministic function of its point and seed, so a proposal of a point
    that already completed or was pruned is not run again: it is told the earlier outcome (value,
    or the pruned trial's epoch scores), is marked ``duplicate_of``, costs nothing and does not
    count against the budget; nor do seed confirmations. The search also ends when every valid point
    has been evaluated (completed or pruned), after ``max_failures`` failed trials in a row, or when
    ``done()`` says so. ``evaluate(trial, point)`` runs the trial, tells the study its outcome and
    returns its state, or ``None`` when it did not run it (its point is another worker's; counted like a
    repeat); ``trial_attrs`` are set on every trial as soon as it exists; ``settle()`` runs before every
    proposal (the runner fails RUNNING trials of dead workers there, so they stop counting against the
    budget). :class:`Runner` runs real trials with it; :mod:`bench.sweep` replays them.
    """
    points = grid_points(config, method)
    pairs = sorted({f"{p['eta']:g},{p['lambda']:g}" for p in points})
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    failures = repeats = 0
    while failures < max_failures and repeats < MAX_TPE_REPEATS and not done():
        if settle is not None:
            settle()
        trials = grid_trials(study)
        evaluated = {t.user_attrs.get("point"): t for t in trials if t.state in finished}
        active = sum(t.state in (*finished, TrialState.RUNNING) for t in trials)
        if active >= budget or len(evaluated) >= len(points):
            break
        trial = study.ask()
        for key, value in (trial_attrs or {}).items():
            trial.set_user_attr(key, value)
        lr = trial.suggest_categorical("lr", config.search.lr)
        eta, lam = (float(v) for v in trial.suggest_categorical("eta_lambda", pairs).split(","))
        point = {"lr": lr, "eta": eta, "lambda": lam}
        earlier = evaluated.get(point_key(point))
        if earlier is not None:
            trial.set_user_attr("point", point_key(point))
            trial.set_user_attr("duplicate_of", earlier.number)
            for epoch, value in sorted(earlier.intermediate_values.items()):
                trial.report(value, epoch)
            complete = earlier.state == TrialState.COMPLETE
            study.tell(trial, earlier.value if complete else None, state=earlier.state)
            repeats += 1
            continue
        state = evaluate(trial, point)
        if state is None:
            repeats += 1
            continue
        failures = failures + 1 if state == TrialState.FAIL else 0
        repeats = 0


def run_tpe(runner, study: optuna.Study, method: str) -> None:
    """TPE (see :func:`tpe_search`) for a :class:`harness.sweep.driver.Runner`, until the study has
    ``n_trials`` evaluated trials.

    The count is re-read before every trial, so several workers share one budget (they may
    overshoot it by at most one trial each). Each worker seeds TPE differently; after
    ``max_attempts`` failed trials in a row this worker stops.
    """
    points = grid_points(runner.config, method)
    budget = runner.options.n_trials or runner.config.search.n_trials or len(points)
    runner.storage.ensure_points(study.study_name, {point_key(p): p for p in points})  # TPE claims them too
    fail_orphans(study, runner.storage)
    runner.log(f"{study.study_name}: TPE over {len(points)} valid grid points, budget {budget} trials")
    seed = int(fingerprint({"worker": runner.me}), 16) + len(study.get_trials(deepcopy=False))
    study.sampler = optuna.samplers.TPESampler(seed=seed % 2**31)
    tpe_search(
        study,
        runner.config,
        method,
        budget,
        lambda trial, point: _evaluate(runner, study, method, trial, point),
        runner.options.max_attempts,
        {"worker": runner.me},
        settle=lambda: fail_orphans(study, runner.storage),
    )


def _evaluate(runner, study: optuna.Study, method: str, trial: optuna.Trial, point: dict) -> TrialState | None:
    """Claim a TPE proposal's point, then train it (resuming its epoch checkpoint if a dead worker left
    one), unless an equivalent trial of another method of the study file has finished: then the proposal
    copies it (``equivalent_of``). ``None`` when the point is claimed by another live worker: the
    proposal is told as a duplicate (FAIL, ``duplicate_of``), not trained and not counted."""
    key = point_key(point)
    trial.set_user_attr("claim", key)
    claim = runner.storage.claim_next(study.study_name, runner.me, runner.options.max_attempts, {key})
    if claim is not None and claim.stale_worker is not None and settle_stale(study, runner.storage, claim):
        claim.done()  # the dead worker had finished it: the next proposal of it is told that outcome
        claim = None
    if claim is None:
        trial.set_user_attr("point", key)
        trial.set_user_attr("duplicate_of", "claimed by another worker")
        study.tell(trial, None, state=TrialState.FAIL)
        return None
    source = _equivalent_finished(runner, method, point)
    if source is None:
        return runner._train_claimed(study, method, claim, trial, point)
    runner.log(f"  trial {trial.number} {method} {key}: shared with trial_id {source._trial_id}")
    claim.attach(trial._trial_id)
    state = copy_into(runner.storage, runner.config, runner.me, study, method, trial, source)
    claim.done()
    return state


def _equivalent_finished(runner, method: str, point: dict) -> optuna.trial.FrozenTrial | None:
    """A finished, trained (not copied) grid trial of another method that is the same computation."""
    what = computation(runner.config, method, point)
    for other in method_order(runner.config):
        if other == method or computation(runner.config, other, point) != what or not runner.study_exists(other):
            continue
        found = finished_trial(runner.storage, runner.config.study_name(other), point_key(point))
        if found is not None:
            return found
    return None
