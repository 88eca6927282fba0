"""TPE over the valid grid points: the proposal loop shared by real sweeps and the sweep-cost replay."""

from __future__ import annotations

from collections.abc import Callable

import optuna
from optuna.trial import TrialState

from harness.spec.config import StudyConfig, grid_points, point_key
from harness.sweep.trial import grid_trials

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
