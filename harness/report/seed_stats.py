"""Seed statistics: the confirmation runs of the best configurations.

``run_study.py confirm`` re-runs the best configurations with fresh seeds (trials flagged
``confirmation=True``). From those runs alone this module gives, per (task, method), mean ± std and
a 95 % t-interval of the dev score at each run's reported epoch (a fixed epoch, never the maximum over
dev epochs). The paired tests between methods are in :mod:`harness.report.honest`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from harness.report.frame import reported_score
from harness.report.statistics import ALPHA
from harness.spec.methods import METHODS, base_method
from harness.spec.tasks import TASKS


@dataclass(frozen=True)
class Seeds:
    """The confirmation runs of one method's confirmed configuration on one task."""

    study: str
    point: str
    seeds: tuple[int, ...]
    values: tuple[float, ...]
    trials: tuple[int, ...] = ()
    """The trial_id of each seed's run (its stored predictions; empty where unknown)."""

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float:
        return float(np.std(self.values, ddof=1)) if self.n > 1 else math.nan

    def interval(self) -> tuple[float, float]:
        """95 % t-interval of the mean."""
        if self.n < 2:
            return math.nan, math.nan
        half = stats.t.ppf(1 - ALPHA / 2, self.n - 1) * self.std / math.sqrt(self.n)
        return self.mean - half, self.mean + half


def confirmations(frame: pd.DataFrame, bests: pd.DataFrame) -> dict[tuple[str, str], list[Seeds]]:
    """(task, method) → the seeds of every confirmed configuration, the one the tests use first.

    Only confirmation trials count: the grid trial that picked a configuration is the maximum of
    the grid, so it is biased upwards. One value per seed (the last COMPLETE trial with that seed).
    The tests use the best grid trial's configuration when it was confirmed, else the one with the
    most seeds; ``bests`` is the best grid trial per (task, method), indexed by them (as
    :func:`harness.report.frame.best_trials` gives it).
    """
    out = {}
    confirmed = frame[frame["confirmation"] & (frame["state"] == "COMPLETE")]
    for (task, method), group in confirmed.groupby(["task", "method"], sort=True):
        best = bests.loc[(task, method)] if (task, method) in bests.index else None
        found = []
        for (study, point), rows in group.groupby(["study", "point"], sort=True):
            runs = rows.sort_values("number").groupby("seed", sort=True).last()
            scores = reported_score(runs)
            ids = tuple(int(t) for t in runs["trial_id"]) if "trial_id" in runs else ()
            found.append(Seeds(study, point, tuple(int(s) for s in runs.index), tuple(float(v) for v in scores), ids))
        chosen = (best["study"], best["point"]) if best is not None else None
        out[(task, method)] = sorted(found, key=lambda g: ((g.study, g.point) != chosen, -g.n, g.study, g.point))
    return out


def seed_groups(found: dict[tuple[str, str], list[Seeds]]) -> dict[tuple[str, str], Seeds]:
    """(task, method) → the seeds of the configuration the tests use (see :func:`confirmations`)."""
    return {key: groups[0] for key, groups in found.items()}


def is_alp(method: str) -> bool:
    """ALP-KD and its bucket variants, also as a labelled row (``alp [sqrt_d]``)."""
    method = base_method(method)
    return method == "alp" or method.startswith("alp-")


def seeds_tables(found: dict[tuple[str, str], list[Seeds]], command: str) -> list[str]:
    lines = [
        "## Seeds of the best configurations",
        "",
        "Confirmation re-runs (different seeds) of the confirmed configurations; the grid trial that "
        "selected a configuration is left out (as the best of its grid it is biased upwards). Primary dev "
        "metric × 100 at each run's reported epoch (under `selection: dev` the last epoch, a fixed one; under "
        "`holdout` the epoch the holdout chose); std with ddof = 1; 95 % interval of the mean from the "
        "t-distribution. "
        "✓: the configuration the tests below use (the best of the grid).",
        "",
        "| task | method | configuration | seeds | mean ± std | 95 % CI | tested |",
        "|---|---|---|---:|---:|---:|:---:|",
    ]
    for (task, method), groups in sorted(
        found.items(), key=lambda kv: (list(TASKS).index(kv[0][0]), list(METHODS).index(kv[0][1]))
    ):
        for index, group in enumerate(groups):
            low, high = group.interval()
            spread = "–" if group.n < 2 else f"{100 * group.mean:.2f} ± {100 * group.std:.2f}"
            interval = "–" if group.n < 2 else f"[{100 * low:.2f}, {100 * high:.2f}]"
            lines.append(
                f"| {task} | {method} | {group.point} | {group.n} | {spread} | {interval} | "
                f"{'✓' if index == 0 else ''} |"
            )
    return lines + ["", f"Reproduce: `{command}`", ""]
