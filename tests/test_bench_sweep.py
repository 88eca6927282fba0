"""The sweep-cost replay (bench.sweep) on synthetic grids: no model, no timing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.sweep import HEADLINE, GridTrial, Search, SweepResult, replay_shuffled, replay_tpe, tpe_config
from harness.spec.config import grid_points, parse_study, point_key

LRS, WEIGHTS = [1e-4, 2e-4, 5e-4], [0.0, 0.2, 0.5]


def _config(pruner: str = "median"):
    return parse_study(
        {
            "name": "t",
            "task": "SST-2",
            "teacher": "synthetic",
            "student_layers": 2,
            "methods": ["alp"],
            "fixed": {"epochs": 3},
            "search": {"sampler": "tpe", "pruner": pruner, "lr": LRS, "eta": WEIGHTS, "lambda": WEIGHTS},
        }
    )


def _grid(seed: int = 0) -> dict[str, GridTrial]:
    """27 points, 3 epochs each, 2 s of set-up and 3–5 s per epoch; scores rise with η and fall with λ and lr."""
    rng, grid = np.random.default_rng(seed), {}
    for point in grid_points(_config(), "alp"):
        final = 0.7 + 0.1 * point["eta"] - 0.05 * point["lambda"] - 100 * point["lr"] + rng.normal(0, 0.01)
        epochs = tuple((final - 0.03 * (3 - e), float(rng.uniform(3, 5))) for e in range(1, 4))
        grid[point_key(point)] = GridTrial(2.0 + sum(s for _, s in epochs), epochs, max(v for v, _ in epochs))
    return grid


def test_a_stopped_trial_costs_its_set_up_and_the_epochs_it_ran():
    trial = GridTrial(10.0, ((0.5, 3.0), (0.6, 4.0)), 0.6)
    assert (trial.cost_until(0), trial.cost_until(1), trial.cost_until(2)) == (3.0, 6.0, 10.0)


def test_the_shuffled_grid_walks_a_seeded_permutation_until_a_trial_reaches_the_target():
    grid = _grid()
    best = max(t.value for t in grid.values())
    search = replay_shuffled(grid, best, seed=3)
    order = [str(k) for k in np.random.default_rng(3).permutation(sorted(grid))]
    assert [point for point, _, _ in search.steps] == order[: len(search.steps)]
    assert search.reached and grid[search.steps[-1][0]].value == best
    assert search.seconds == pytest.approx(sum(grid[p].seconds for p, _, _ in search.steps))
    missed = replay_shuffled(grid, best + 1, seed=3)
    assert not missed.reached and len(missed.steps) == len(grid)
    assert missed.seconds == pytest.approx(sum(t.seconds for t in grid.values()))


@pytest.mark.parametrize("pruner", ["median", "none"])
def test_a_tpe_replay_charges_what_each_trial_would_cost_and_never_reruns_a_point(pruner):
    grid, config = _grid(), _config(pruner)
    target = max(t.value for t in grid.values()) - 0.003
    searches = [replay_tpe(config, grid, target, seed) for seed in range(5)]
    for search in searches:
        assert search.reached and grid[search.steps[-1][0]].value >= target
        points = [point for point, _, _ in search.steps]
        assert len(points) == len(set(points))  # completed and pruned points alike are told, not re-run
        for point, outcome, seconds in search.steps:
            epochs = int(outcome.rsplit(" ", 1)[1]) if outcome.startswith("pruned") else 3
            assert not outcome.startswith("pruned") or epochs < 3  # never pruned after its last epoch
            assert seconds == pytest.approx(grid[point].cost_until(epochs))
        assert search.seconds == pytest.approx(sum(seconds for _, _, seconds in search.steps))
    pruned = sum(outcome.startswith("pruned") for s in searches for _, outcome, _ in s.steps)
    assert pruned > 0 if pruner == "median" else pruned == 0
    assert replay_tpe(config, grid, target, 1) == searches[1]  # seeded
    assert len({s.steps for s in searches}) > 1


def test_a_point_that_failed_in_the_grid_fails_in_the_replay_too():
    grid = {
        key: GridTrial(t.seconds, t.epochs[:1], None) if key.startswith("lr=0.0001,") else t
        for key, t in _grid().items()
    }
    search = replay_tpe(_config(), grid, max(t.value for t in grid.values() if t.value is not None), seed=0)
    failed = [(point, seconds) for point, outcome, seconds in search.steps if outcome == "failed"]
    assert all(point.startswith("lr=0.0001,") and seconds == grid[point].seconds for point, seconds in failed)


def test_the_sweep_ratio_is_the_mean_share_of_the_grid_and_inf_when_a_replay_never_reached():
    grid = {"a": GridTrial(10.0, ((0.8, 8.0),), 0.8), "b": GridTrial(30.0, ((0.9, 28.0),), 0.9)}
    searches = [Search(10.0, 1, True, ()), Search(30.0, 1, True, ())]
    result = SweepResult(grid, 0.003, {HEADLINE: searches, "missed": [*searches, Search(40.0, 2, False, ())]})
    assert (result.best, result.target, result.grid_seconds) == (0.9, pytest.approx(0.897), 40.0)
    assert result.ratio() == pytest.approx((0.25 + 0.75) / 2)
    assert "reached in 2/2, ≤ 0.35 in 1/2" in result.describe(HEADLINE)
    assert math.isinf(result.ratio("missed")) and "reached in 2/3" in result.describe("missed")
    assert len(result.lines()) == 3 and "over 2 replays" in result.lines()[0]


def test_tpe_config_changes_only_the_sampler_and_the_pruner():
    config = _config("none").model_copy(
        update={"search": _config("none").search.model_copy(update={"sampler": "grid"})}
    )
    halving = tpe_config(config, "halving")
    assert (halving.search.sampler, halving.search.pruner) == ("tpe", "halving")
    assert halving.model_dump(exclude={"search"}) == config.model_dump(exclude={"search"})
    assert grid_points(halving, "alp") == grid_points(config, "alp")
