"""Seed statistics: is a gap between methods bigger than seed noise?

``run_study.py confirm`` re-runs the best configurations with fresh seeds (trials flagged
``confirmation=True``). From those runs alone this module gives, per (task, method), mean ± std and
a 95 % t-interval, and Welch's t-test (two-sided, unequal variances) of ALP and each ALP variant
against every baseline, with the verdict "not distinguishable from seed noise" when p ≥ 0.05.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from harness.glue import TASKS
from harness.methods import METHODS

ALPHA = 0.05


@dataclass(frozen=True)
class Seeds:
    """The confirmation runs of one method's confirmed configuration on one task."""

    study: str
    point: str
    seeds: tuple[int, ...]
    values: tuple[float, ...]

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
    :func:`harness.report.best_trials` gives it).
    """
    out = {}
    confirmed = frame[frame["confirmation"] & (frame["state"] == "COMPLETE")]
    for (task, method), group in confirmed.groupby(["task", "method"], sort=True):
        best = bests.loc[(task, method)] if (task, method) in bests.index else None
        found = []
        for (study, point), rows in group.groupby(["study", "point"], sort=True):
            runs = rows.sort_values("number").groupby("seed", sort=True).last()
            found.append(Seeds(study, point, tuple(int(s) for s in runs.index), tuple(float(v) for v in runs["value"])))
        chosen = (best["study"], best["point"]) if best is not None else None
        out[(task, method)] = sorted(found, key=lambda g: ((g.study, g.point) != chosen, -g.n, g.study, g.point))
    return out


def seed_groups(found: dict[tuple[str, str], list[Seeds]]) -> dict[tuple[str, str], Seeds]:
    """(task, method) → the seeds of the configuration the tests use (see :func:`confirmations`)."""
    return {key: groups[0] for key, groups in found.items()}


def is_alp(method: str) -> bool:
    return method == "alp" or method.startswith("alp-")


def welch(alp: Seeds, base: Seeds) -> tuple[float, float]:
    """Welch's t-test (unequal variances) of ALP's seeds against a baseline's: (t, two-sided p)."""
    result = stats.ttest_ind(alp.values, base.values, equal_var=False)
    return float(result.statistic), float(result.pvalue)


def seeds_tables(found: dict[tuple[str, str], list[Seeds]], command: str) -> list[str]:
    lines = ["## Seeds of the best configurations", "",
             "Confirmation re-runs (different seeds) of the confirmed configurations; the grid trial that "
             "selected a configuration is left out (as the best of its grid it is biased upwards). Primary dev "
             "metric × 100; std with ddof = 1; 95 % interval of the mean from the t-distribution. "
             "✓: the configuration the tests below use (the best of the grid).", "",
             "| task | method | configuration | seeds | mean ± std | 95 % CI | tested |",
             "|---|---|---|---:|---:|---:|:---:|"]
    for (task, method), groups in sorted(found.items(), key=lambda kv: (list(TASKS).index(kv[0][0]),
                                                                         list(METHODS).index(kv[0][1]))):
        for index, group in enumerate(groups):
            low, high = group.interval()
            spread = "–" if group.n < 2 else f"{100 * group.mean:.2f} ± {100 * group.std:.2f}"
            interval = "–" if group.n < 2 else f"[{100 * low:.2f}, {100 * high:.2f}]"
            lines.append(f"| {task} | {method} | {group.point} | {group.n} | {spread} | {interval} | "
                         f"{'✓' if index == 0 else ''} |")
    groups = {key: groups[0] for key, groups in found.items()}
    lines += ["", f"Reproduce: `{command}`", "",
              f"ALP vs each baseline, **Welch's t-test** (two-sided, unequal variances) over seeds; "
              f"p ≥ {ALPHA} means the difference is not distinguishable from seed noise. "
              "No correction for multiple comparisons.", "",
              "| task | ALP method | baseline | Δ mean (ALP − baseline) | Welch t | p | verdict |",
              "|---|---|---|---:|---:|---:|---|"]
    for task in TASKS:
        for alp in (m for m in METHODS if is_alp(m) and (task, m) in groups):
            for base in (m for m in METHODS if not is_alp(m) and (task, m) in groups):
                a, b = groups[(task, alp)], groups[(task, base)]
                delta = f"{100 * (a.mean - b.mean):+.2f}"
                if a.n < 2 or b.n < 2:
                    lines.append(f"| {task} | {alp} | {base} | {delta} | – | – | too few seeds (need ≥ 2 each) |")
                    continue
                t, p = welch(a, b)
                if math.isnan(p):
                    verdict = "undefined (no variance over seeds)"
                elif p >= ALPHA:
                    verdict = "not distinguishable from seed noise"
                else:
                    verdict = f"{alp if a.mean > b.mean else base} higher (p < {ALPHA})"
                lines.append(f"| {task} | {alp} | {base} | {delta} | {t:.3f} | {p:.3g} | {verdict} |")
    return lines + ["", f"Reproduce: `{command}`", ""]
