"""The TPE loop over grid points (harness.sweep.driver.tpe_search) and the pruning rule, without models."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from harness.spec.config import grid_points, parse_study, point_key
from harness.sweep.tpe import tpe_search
from harness.sweep.trial import stop_after


class _AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


def _config(n_trials: int | None = None):
    search = {"sampler": "tpe", "lr": [1e-4, 2e-4], "eta": [0.0, 0.5], "lambda": [0.0, 0.5], "n_trials": n_trials}
    return parse_study(
        {
            "name": "t",
            "task": "SST-2",
            "teacher": "synthetic",
            "student_layers": 2,
            "methods": ["alp"],
            "fixed": {"epochs": 2},
            "search": search,
        }
    )


def test_the_pruner_is_never_asked_after_the_last_epoch():
    study = optuna.create_study(direction="maximize", pruner=_AlwaysPrune())
    trial = study.ask()
    trial.report(0.5, 1)
    assert stop_after(trial, 1, 2)
    trial.report(0.6, 2)
    assert not stop_after(trial, 2, 2)


def _run(config, seed: int, prune: set[str]):
    """``tpe_search`` with a fake trial: points in ``prune`` stop after epoch 1, the rest complete."""
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    runs: list[str] = []

    def evaluate(trial: optuna.Trial, point: dict) -> TrialState:
        key = point_key(point)
        runs.append(key)
        trial.set_user_attr("point", key)
        trial.report(point["lr"] * 1000, 1)
        if key in prune:
            study.tell(trial, state=TrialState.PRUNED)
            return TrialState.PRUNED
        trial.report(point["lr"] * 1000 + point["eta"], 2)
        study.tell(trial, point["lr"] * 1000 + point["eta"])
        return TrialState.COMPLETE

    tpe_search(
        study, config, "alp", config.search.n_trials or 99, evaluate, max_failures=3, trial_attrs={"worker": "test"}
    )
    return study, runs


def test_no_point_is_run_twice_and_repeats_get_the_earlier_outcome():
    config = _config()
    points = [point_key(p) for p in grid_points(config, "alp")]
    pruned, repeated_states = set(points[::3]), []
    for seed in range(4):
        study, runs = _run(config, seed, pruned)
        assert sorted(runs) == sorted(points)  # every point once: the search ends when all are completed or pruned
        trials = study.get_trials()
        assert all(t.user_attrs["worker"] == "test" for t in trials)
        for repeat in (t for t in trials if "duplicate_of" in t.user_attrs):
            earlier = trials[repeat.user_attrs["duplicate_of"]]
            assert (repeat.state, repeat.value, repeat.intermediate_values, repeat.user_attrs["point"]) == (
                earlier.state,
                earlier.value,
                earlier.intermediate_values,
                earlier.user_attrs["point"],
            )
            repeated_states.append(repeat.state)
    assert TrialState.PRUNED in repeated_states and TrialState.COMPLETE in repeated_states


def test_the_budget_counts_run_trials_only():
    study, runs = _run(_config(n_trials=3), 0, set())
    assert len(runs) == 3
    assert len([t for t in study.get_trials() if "duplicate_of" not in t.user_attrs]) == 3


def test_confirmations_and_points_taken_by_other_workers_are_not_counted():
    """A seed confirmation in the study is not an evaluated point, and a proposal whose point another worker
    holds (``evaluate`` returns None) is neither trained here nor counted against the budget."""
    config = _config(n_trials=3)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    confirmation = study.ask()
    confirmation.set_user_attr("confirmation", True)
    confirmation.set_user_attr("point", point_key(grid_points(config, "alp")[0]))
    study.tell(confirmation, 9.0)
    taken = point_key(grid_points(config, "alp")[1])
    runs, settled = [], []

    def evaluate(trial: optuna.Trial, point: dict) -> TrialState | None:
        key = point_key(point)
        trial.set_user_attr("point", key)
        if key == taken:
            trial.set_user_attr("duplicate_of", "claimed by another worker")
            study.tell(trial, None, state=TrialState.FAIL)
            return None
        runs.append(key)
        study.tell(trial, point["lr"] * 1000 + point["eta"])
        return TrialState.COMPLETE

    tpe_search(study, config, "alp", 3, evaluate, max_failures=3, settle=lambda: settled.append(1))
    assert len(runs) == 3 and taken not in runs
    assert len(settled) >= 3  # settled before every proposal
