"""Sweep cost: how much of the exhaustive grid's compute TPE with epoch pruning needs to reach its best.

:func:`run_sweep` runs the grid for real (every valid point once, through :class:`~harness.sweep.driver.Runner`)
and then *replays* the search on it, once per sampler seed. A trial is a deterministic function of
its (point, seed): data order and dropout depend only on them (the resume tests check that a
resumed trial gives the uninterrupted number). So the trial TPE would run at a point produces
exactly the grid trial's per-epoch scores. The replay tells the study those scores epoch by epoch
through the same :func:`~harness.sweep.driver.tpe_search` loop and pruner that a real sweep uses, and
charges the grid trial's measured seconds up to the epoch where the trial stopped, its set-up
included. This is the method of tabular HPO benchmarks (NAS-Bench, HPOBench). It measures the
search's *expected* cost over many seeds instead of one lucky or unlucky draw, at the price of a
single grid.

Target: the grid's best value minus ``tolerance``; a replay that ends without a complete trial
reaching it has an infinite cost. Replayed strategies: TPE with median pruning (the headline, as
declared before any measurement), TPE with successive halving, TPE alone, and the grid in a random
order without pruning.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from harness.distill.experiment import Experiment
from harness.spec.config import StudyConfig, grid_points, point_key
from harness.store.storage import Storage
from harness.sweep.driver import DEFAULT_MAX_ATTEMPTS, Runner, RunOptions
from harness.sweep.studies import pruner_for
from harness.sweep.tpe import tpe_search
from harness.sweep.trial import stop_after

METHOD = "alp"


@dataclass(frozen=True)
class GridTrial:
    """One evaluated grid point, as the replays need it."""

    seconds: float  # the whole trial, set-up included
    epochs: tuple[tuple[float, float], ...]  # (dev value, seconds) per epoch, in order
    value: float | None  # None unless the trial completed

    def reaches(self, target: float) -> bool:
        """Whether this trial completed at ``target`` or above (float noise forgiven)."""
        return self.value is not None and self.value >= target - 1e-12

    def cost_until(self, epochs: int) -> float:
        """Seconds of this trial stopped after ``epochs`` epochs: its set-up and those epochs."""
        return self.seconds - sum(seconds for _, seconds in self.epochs[epochs:])


def grid_trials(storage: Storage, study_name: str) -> dict[str, GridTrial]:
    """The grid study's trials by point key (a point run twice, after a failure, keeps its last trial)."""
    study = optuna.load_study(study_name=study_name, storage=storage.optuna)
    found = {}
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        epochs = tuple((float(e["value"]), float(e["seconds"])) for e in trial.user_attrs.get("epochs", []))
        value = trial.value if trial.state == TrialState.COMPLETE else None
        found[trial.user_attrs["point"]] = GridTrial(float(trial.user_attrs.get("seconds", 0.0)), epochs, value)
    return found


@dataclass(frozen=True)
class Search:
    """One replayed search, up to and including the trial that reached the target (or to its end)."""

    seconds: float
    epochs: int
    reached: bool
    steps: tuple[tuple[str, str, float], ...]  # (point, outcome, seconds charged) per proposal


class _Tally:
    def __init__(self):
        self.seconds, self.epochs, self.reached, self.steps = 0.0, 0, False, []

    def charge(self, point: str, outcome: str, seconds: float, epochs: int) -> None:
        self.seconds += seconds
        self.epochs += epochs
        self.steps.append((point, outcome, seconds))

    def search(self) -> Search:
        return Search(self.seconds, self.epochs, self.reached, tuple(self.steps))


def replay_tpe(config: StudyConfig, grid: dict[str, GridTrial], target: float, seed: int) -> Search:
    """The search ``config`` describes (TPE and its pruner), replayed on ``grid`` with sampler seed ``seed``."""
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner_for(config)
    )
    tally = _Tally()

    def evaluate(trial: optuna.Trial, point: dict) -> TrialState:
        key = point_key(point)
        known = grid[key]
        trial.set_user_attr("point", key)
        if known.value is None:  # failed in the grid: it fails here too, after the same time
            tally.charge(key, "failed", known.seconds, len(known.epochs))
            study.tell(trial, state=TrialState.FAIL)
            return TrialState.FAIL
        for epoch, (value, _) in enumerate(known.epochs, start=1):
            trial.report(value, epoch)
            if stop_after(trial, epoch, config.fixed.epochs):
                tally.charge(key, f"pruned after epoch {epoch}", known.cost_until(epoch), epoch)
                study.tell(trial, state=TrialState.PRUNED)
                return TrialState.PRUNED
        tally.charge(key, f"{known.value:.4f}", known.seconds, len(known.epochs))
        tally.reached = known.reaches(target)
        study.tell(trial, known.value)
        return TrialState.COMPLETE

    budget = config.search.n_trials or len(grid_points(config, METHOD))
    tpe_search(study, config, METHOD, budget, evaluate, DEFAULT_MAX_ATTEMPTS, done=lambda: tally.reached)
    return tally.search()


def replay_shuffled(grid: dict[str, GridTrial], target: float, seed: int) -> Search:
    """The whole grid in a random order (seeded), no pruning, until a trial reaches ``target``."""
    tally = _Tally()
    for key in np.random.default_rng(seed).permutation(sorted(grid)):
        known = grid[str(key)]
        tally.charge(
            str(key), "failed" if known.value is None else f"{known.value:.4f}", known.seconds, len(known.epochs)
        )
        if known.reaches(target):
            tally.reached = True
            break
    return tally.search()


STRATEGIES = {"TPE + median pruning": "median", "TPE + successive halving": "halving", "TPE, no pruning": "none"}
HEADLINE = "TPE + median pruning"  # the ratio the bench's machine-readable line reports
SHUFFLED = "grid in a random order"


@dataclass(frozen=True)
class SweepResult:
    grid: dict[str, GridTrial]
    tolerance: float
    searches: dict[str, list[Search]]  # strategy → its replays

    @property
    def best(self) -> float:
        return max(t.value for t in self.grid.values() if t.value is not None)

    @property
    def target(self) -> float:
        return self.best - self.tolerance

    @property
    def grid_seconds(self) -> float:
        return sum(t.seconds for t in self.grid.values())

    def ratios(self, name: str) -> list[float]:
        return [s.seconds / self.grid_seconds if s.reached else math.inf for s in self.searches[name]]

    def ratio(self, name: str = HEADLINE) -> float:
        """The expected share of the grid's compute: the mean over replays (inf if one never reached)."""
        ratios = self.ratios(name)
        return statistics.fmean(ratios) if ratios else math.nan

    def describe(self, name: str) -> str:
        ratios, searches = self.ratios(name), self.searches[name]
        finite = [r for r in ratios if math.isfinite(r)]
        spread = f"median {statistics.median(ratios):.3f}, range {min(ratios):.3f}–{max(ratios):.3f}"
        return (
            f"{name}: mean {self.ratio(name):.3f} ({spread}); reached in {len(finite)}/{len(ratios)}, "
            f"≤ 0.35 in {sum(r <= 0.35 for r in ratios)}/{len(ratios)}; mean epochs "
            f"{statistics.fmean(s.epochs for s in searches):.1f} of {sum(len(t.epochs) for t in self.grid.values())}"
        )

    def lines(self) -> list[str]:
        return [
            f"sweep: grid of {len(self.grid)} trials, {self.grid_seconds:.0f} s, best {self.best:.4f}, target ≥ "
            f"{self.target:.4f}; share of the grid's compute spent until a trial reaches it, over "
            f"{len(self.searches[HEADLINE])} replays:"
        ] + [f"  {self.describe(name)}" for name in self.searches]


def tpe_config(config: StudyConfig, pruner: str) -> StudyConfig:
    """``config`` with TPE sampling and ``pruner``."""
    return config.model_copy(update={"search": config.search.model_copy(update={"sampler": "tpe", "pruner": pruner})})


def run_sweep(
    grid_config: StudyConfig, experiment: Experiment, cache_dir: Path, tolerance: float, replays: int, log=print
) -> SweepResult:
    """Run ``grid_config``'s ALP grid for real, then replay every strategy on it ``replays`` times (seeds 0, 1, …)."""
    storage = Storage(f"sqlite:///{cache_dir / 'sweep.db'}")

    def trial_lines(line: str) -> None:  # the Runner's per-trial lines only
        if line.lstrip().startswith("trial"):
            log(f"    {line.strip()}")

    search = grid_config.search
    log(
        f"  grid: {len(grid_points(grid_config, METHOD))} points (lr {list(search.lr)} × η {list(search.eta)} × "
        f"λ {list(search.lambda_)}, β ≥ 0), {grid_config.fixed.max_train_samples} examples × "
        f"{grid_config.fixed.epochs} epochs"
    )
    Runner(grid_config, storage, experiment, RunOptions(cache_dir=cache_dir), log=trial_lines).run()
    grid = grid_trials(storage, grid_config.study_name(METHOD))
    storage.engine.dispose()
    target = SweepResult(grid, tolerance, {}).target
    log(
        f"  grid best {target + tolerance:.4f}; replaying each search {replays} times until a trial reaches "
        f"{target:.4f}"
    )
    searches = {
        name: [replay_tpe(tpe_config(grid_config, pruner), grid, target, seed) for seed in range(replays)]
        for name, pruner in STRATEGIES.items()
    }
    searches[SHUFFLED] = [replay_shuffled(grid, target, seed) for seed in range(replays)]
    return SweepResult(grid, tolerance, searches)
