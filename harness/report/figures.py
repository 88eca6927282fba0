"""The report's figures: PNGs drawn from the trials frame alone, byte-identical on every run.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend),
under matplotlib's default style, at a fixed dpi and without the ``Software`` metadata, so the
same database always gives the same bytes. File names are stable and filesystem-safe.

Each PNG stores a hash of exactly what it was drawn from (:func:`render`); a figure whose inputs
did not change is not drawn again, so re-running the report on a growing database only redraws
the studies that moved.
"""

from __future__ import annotations

import functools
import itertools
import math
from pathlib import Path

import matplotlib
import matplotlib.style
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from harness.report.frame import best_trials, grid_done, ranked, reported_score
from harness.report.render import Job, render, slug
from harness.report.render import remove_stale as _remove_stale
from harness.spec.config import extra_part
from harness.spec.methods import METHODS, get_method
from harness.spec.tasks import TASKS

_EPS = 1e-9


def _methods(frame: pd.DataFrame) -> list[str]:
    present = set(frame["method"])
    return [m for m in METHODS if m in present]


def method_color(method: str):
    return matplotlib.colormaps["tab10"](list(METHODS).index(method) % 10)


def legend_right_figure() -> tuple[Figure, object]:
    """One axes with room on the right for a legend (a fixed place: matplotlib's 'best' is slow)."""
    fig = Figure(figsize=(7.2, 4))
    ax = fig.subplots()
    fig.subplots_adjust(left=0.1, right=0.8, bottom=0.13, top=0.9)
    return fig, ax


# --------------------------------------------------------------------------- per section (study file × task)
HEATMAP_COLUMNS = ["method", "state", "confirmation", "value", "lr", "eta", "lambda"]


class _HeatmapFigure:
    """The heatmap figure of one layout (methods × lrs × η × λ), re-filled for each section with it.

    A paper sweep has one such figure per task, all with the same layout, and building the axes
    costs about as much as drawing them; every artist whose look depends on the data (images,
    cell texts and their colours, the colour bar, the title) is reset by :meth:`fill`.
    """

    def __init__(self, methods: list[str], lrs: list[float], etas: list[float], lams: list[float]):
        width = max(6.4, 1.9 * len(lrs) + 1.9)  # at least the title's width
        self.figure = fig = Figure(figsize=(width, 1.45 * len(methods) + 1.4))
        axes = fig.subplots(len(methods), len(lrs), squeeze=False)
        self.images, self.cells = {}, {}
        for (r, method), (c, lr) in itertools.product(enumerate(methods), enumerate(lrs)):
            ax = axes[r, c]
            self.images[method, lr] = ax.imshow(
                np.full((len(etas), len(lams)), np.nan), origin="lower", cmap="viridis", vmin=0, vmax=1, aspect="auto"
            )
            self.cells[method, lr] = {
                (i, j): ax.text(j, i, "", ha="center", va="center", fontsize=7)
                for i, eta in enumerate(etas)
                for j, lam in enumerate(lams)
                if eta + lam <= 1 + _EPS
            }  # β < 0: not a valid point, left blank
            outer_x, outer_y = r == len(methods) - 1, c == 0  # tick labels only on the outer panels
            ax.set_xticks(range(len(lams)), [f"{v:g}" for v in lams] if outer_x else [])
            ax.set_yticks(range(len(etas)), [f"{v:g}" for v in etas] if outer_y else [])
            ax.tick_params(length=2, labelsize=7)
            if r == 0:
                ax.set_title(f"lr = {lr:g}", fontsize=9, y=1.0)
            if outer_y:
                ax.set_ylabel(f"{method}\nη (KD weight)", fontsize=8)
        fig.supxlabel("λ (inter-layer weight)", fontsize=9)
        self.title = fig.suptitle("", fontsize=9)
        width, height = fig.get_figwidth(), fig.get_figheight()
        right, bottom, top = 1 - 1.0 / width, 0.5 / height, 1 - 0.9 / height
        fig.subplots_adjust(left=0.9 / width, right=right, bottom=bottom, top=top, wspace=0.06, hspace=0.1)
        bar_axes = fig.add_axes((right + 0.15 / width, bottom, 0.12 / width, top - bottom))
        self.colorbar = fig.colorbar(next(iter(self.images.values())), cax=bar_axes)
        self.colorbar.ax.tick_params(labelsize=7)

    def fill(self, title: str, panels: dict[tuple[str, float], np.ndarray]) -> Figure:
        """``panels``: (method, lr) → the η × λ grid of scores (NaN: no complete trial)."""
        known = np.concatenate([p.ravel() for p in panels.values()])
        known = known[~np.isnan(known)]
        low, high = (float(known.min()), float(known.max())) if len(known) else (0.0, 100.0)
        for key, image in self.images.items():
            grid = panels[key]
            image.set_data(grid)
            image.set_clim(low, max(high, low + 1e-9))  # one colour scale for every panel
            for (i, j), text in self.cells[key].items():
                missing = math.isnan(grid[i, j])
                dark = not missing and grid[i, j] <= (low + high) / 2  # viridis is dark at the low end
                text.set_text("–" if missing else f"{grid[i, j]:.1f}")
                text.set_color("white" if dark else "black")
        self.title.set_text(title)
        return self.figure


def _union(searches: list[dict], rows: pd.DataFrame, field: str) -> list[float]:
    return sorted(set().union(*(s.get(field, []) for s in searches)) | set(rows[field].dropna()))


@functools.lru_cache(maxsize=4)
def _heatmap_figure(
    methods: tuple[str, ...], lrs: tuple[float, ...], etas: tuple[float, ...], lams: tuple[float, ...]
) -> _HeatmapFigure:
    return _HeatmapFigure(list(methods), list(lrs), list(etas), list(lams))


def heatmaps(title: str, rows: pd.DataFrame, searches: list[dict], metric: str) -> Figure:
    """η × λ heatmaps of the best trial value (``metric`` names its split): one row per inter-layer method, one
    column per lr.

    ``rows``: the section's trials of inter-layer methods; ``searches``: their studies' search
    grids (so points without a trial yet show as "–"). β < 0 cells are blank; every panel shares
    one colour scale, so equal colours are equal scores across methods. The figure of a layout is
    built once per process and re-filled (see :class:`_HeatmapFigure`).
    """
    methods = _methods(rows)
    lrs, etas, lams = (_union(searches, rows, field) for field in ("lr", "eta", "lambda"))
    if not (methods and lrs and etas and lams):
        figure = Figure(figsize=(4, 2))
        figure.text(0.5, 0.5, f"{title}: no (lr, η, λ) recorded yet", ha="center", va="center")
        return figure
    panels = {(method, lr): np.full((len(etas), len(lams)), np.nan) for method in methods for lr in lrs}
    best = grid_done(rows).groupby(["method", "lr", "eta", "lambda"])["value"].max() * 100
    for (method, lr, eta, lam), value in best.items():
        panels[method, lr][etas.index(eta), lams.index(lam)] = value
    figure = _heatmap_figure(tuple(methods), tuple(lrs), tuple(etas), tuple(lams))
    return figure.fill(
        f"{title}: best {metric} × 100 per (η, λ), one colour scale\nblank: β = 1 − η − λ < 0; –: no complete trial",
        panels,
    )


SELECTION_COLUMNS = ["study", "lr", "eta", "lambda", "point", "seed", "number"]  # what grid_order reads
LR_COLUMNS = ["method", "state", "confirmation", "value", "lr"]
HISTORY_COLUMNS = ["method", "number", "state", "confirmation", "value", "seconds"]
EPOCH_COLUMNS = ["method", "state", "confirmation", "value", "epochs", *SELECTION_COLUMNS]


def score_vs_lr(title: str, section: pd.DataFrame, metric: str) -> Figure:
    """The best trial value (its split in ``metric``) at each learning rate (over η, λ), one line per method."""
    fig, ax = legend_right_figure()
    done = grid_done(section)
    for method in _methods(section):
        best = done[done["method"] == method].groupby("lr")["value"].max().sort_index() * 100
        if len(best):
            ax.plot(best.index, best.to_numpy(), marker="o", label=method, color=method_color(method))
    lrs = sorted(set(section["lr"].dropna()))
    ax.set_xscale("log")
    ax.set_xticks(lrs, [f"{v:g}" for v in lrs])
    ax.minorticks_off()
    decorate(ax, "learning rate", f"best {metric} × 100 (over η, λ)", f"{title}: score vs learning rate")
    return fig


def decorate(ax, xlabel: str, ylabel: str, title: str) -> None:
    """Labels, title, a legend right of the axes (when there are lines) and a light grid."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10, y=1.0)
    if ax.lines:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    ax.grid(alpha=0.3)


def history(title: str, section: pd.DataFrame, metric: str) -> Figure:
    """Best-so-far dev score against the cumulative compute of the grid trials, per method, in the order this sweep
    ran them: a picture of the run, not of the results (``runs.md``)."""
    fig, ax = legend_right_figure()
    for method in _methods(section):
        rows = section[(section["method"] == method) & ~section["confirmation"]].sort_values("number")
        seconds = rows["seconds"].fillna(0.0).astype(float).cumsum().to_numpy()
        values = np.where(rows["state"] == "COMPLETE", rows["value"].astype(float), np.nan) * 100
        if np.isnan(values).all():
            continue
        ax.step(seconds, np.fmax.accumulate(values), where="post", label=method, color=method_color(method))
        ax.scatter(seconds, values, s=10, alpha=0.35, color=method_color(method))
    decorate(
        ax,
        "cumulative trial compute (s, trial-number order)",
        f"best-so-far {metric} × 100",
        f"{title}: optimisation history (dots: single trials)",
    )
    return fig


def epoch_curves(title: str, section: pd.DataFrame, metric: str, top: int = 3) -> Figure:
    """Per-epoch dev curves of the top trials of each study (one panel per method; equal values in grid order, the
    report's one tie-break: :func:`harness.report.frame.grid_order`), each named by its point."""
    methods = _methods(section)
    cols = min(4, len(methods))
    rows_n = math.ceil(len(methods) / cols)
    fig = Figure(figsize=(3.2 * cols + 0.6, 2.6 * rows_n + 0.7))
    axes = fig.subplots(rows_n, cols, squeeze=False, sharex=True, sharey=True).ravel()
    done = grid_done(section)
    for ax, method in zip(axes, methods):
        best = ranked(done[done["method"] == method]).head(top)
        for trial in best.to_dict("records"):
            epochs = [e for e in trial["epochs"] if e.get("value") is not None]
            ax.plot(
                [e["epoch"] for e in epochs],
                [100 * e["value"] for e in epochs],
                marker="o",
                label=f"({trial['lr']:g}, {trial['eta']:g}, {trial['lambda']:g}{_extra_label(trial['point'])})",
            )
        ax.set_title(method, fontsize=9, y=1.0)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
        if ax.lines:
            ax.legend(fontsize=6, loc="lower right")
        ax.grid(alpha=0.3)
    for ax in axes[len(methods) :]:
        ax.set_visible(False)
    for ax in axes[(rows_n - 1) * cols :]:
        ax.set_xlabel("epoch")
    for ax in axes[::cols]:
        ax.set_ylabel(f"{metric} × 100")
    fig.suptitle(
        f"{title}: {metric.split()[0]} curves of the top-{top} trials per method (legend: (lr, η, λ))",
        fontsize=10,
    )
    fig.subplots_adjust(
        left=0.6 / fig.get_figwidth(),
        right=0.98,
        bottom=0.45 / fig.get_figheight(),
        top=1 - 0.5 / fig.get_figheight(),
        hspace=0.3,
        wspace=0.08,
    )
    return fig


def _extra_label(point) -> str:
    """``, temperature=2`` for a point with an extra searched value, else nothing."""
    extra = extra_part(point)
    return f", {extra}" if extra else ""


# --------------------------------------------------------------------------- comparison
BAR_COLUMNS = ["task", "method", "state", "confirmation", "value", "score", *SELECTION_COLUMNS]


def bars(frame: pd.DataFrame, teachers: dict[str, float], seeds: dict[str, list[float]]) -> Figure:
    """Methods per task, on dev: seed mean ± std where confirmation runs exist, else the best grid trial (hatched;
    its dev score at the reported epoch, as in the comparison table, also under ``selection: holdout``).

    ``teachers``: task → the teacher's primary dev score; ``seeds``: ``"task|method"`` → the values
    over seeds of the confirmed configuration.
    """
    tasks = [t for t in TASKS if (frame["task"] == t).any()]
    cols = min(3, len(tasks))
    rows_n = math.ceil(len(tasks) / cols)
    fig = Figure(figsize=(4.2 * cols + 0.4, 3.4 * rows_n + 0.6))
    axes = fig.subplots(rows_n, cols, squeeze=False).ravel()
    best = reported_score(best_trials(frame, ["task", "method"]))  # the dev score the comparison table shows
    for ax, task in zip(axes, tasks):
        methods = _methods(frame[frame["task"] == task])
        span = [100 * teachers[task]] if task in teachers else []  # every drawn value, error bars included
        for x, method in enumerate(methods):
            values = 100 * np.array(seeds.get(f"{task}|{method}", []))
            if len(values) >= 2:
                mean, std = values.mean(), values.std(ddof=1)
                ax.bar(x, mean, yerr=std, capsize=3, color=method_color(method))
                span += [mean - std, mean + std]
            elif (task, method) in best.index:
                ax.bar(x, 100 * best[(task, method)], color=method_color(method), hatch="//", edgecolor="white")
                span.append(100 * best[(task, method)])
        if task in teachers:
            ax.axhline(100 * teachers[task], color="black", linestyle="--", linewidth=1, label="teacher")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel(f"dev {TASKS[task].primary_metric} × 100")
        ax.set_title(task, fontsize=10, y=1.0)
        if span:  # zoom on the differences; start at 0 for scores near or below 0 (CoLA's MCC)
            low = min(span)
            ax.set_ylim(low - 10 if low >= 10 else min(0.0, low - 5), max(span) + 5)
    for ax in axes[len(tasks) :]:
        ax.set_visible(False)
    fig.suptitle(
        "Methods per task: plain bars = mean ± std over confirmation seeds; hatched = single best grid trial",
        fontsize=9,
    )
    fig.subplots_adjust(
        left=0.7 / fig.get_figwidth(),
        right=0.98,
        bottom=0.9 / fig.get_figheight(),
        top=1 - 0.6 / fig.get_figheight(),
        hspace=1.1 / (3.4 - 1.1),
        wspace=0.3,
    )
    return fig


# --------------------------------------------------------------------------- all of them
def draw_all(
    snapshot,
    sections,
    groups: dict,
    out: Path,
    workers: int | None = None,
    extra: dict[str, list[tuple[str, Job]]] | None = None,
) -> dict:
    """Draw every figure into ``out/figures`` (see :func:`render` for ``workers``); returns
    ``{"": comparison figures, (file, task): section figures, ("runs", file, task): the section's figures of how
    the sweep ran (for ``runs.md``), **extra's keys}``, each a list of (title, relative path). ``extra``: more
    figures, as (title, :class:`Job`) lists by where they go."""
    out, frame, studies = Path(out), snapshot.frame, snapshot.studies
    teachers = {}
    for study in sorted(studies):
        value = (studies[study].get("teacher") or {}).get("value")
        if value is not None:
            teachers.setdefault(studies[study]["task"], value)
    seeds = {f"{task}|{method}": list(group.values) for (task, method), group in sorted(groups.items())}
    made = {"": [("methods per task", Job("bars.png", bars, (frame[BAR_COLUMNS], teachers, seeds)))]}
    for (study_file, task), section in sections:
        split = "holdout" if (section["selection"] == "holdout").any() else "dev"  # what a trial's value is
        metric, name, title = (
            f"{split} {TASKS[task].primary_metric}",
            slug(f"{study_file}/{task}"),
            f"{study_file} / {task}",
        )
        figs = [
            ("score vs learning rate", Job(f"lr__{name}.png", score_vs_lr, (title, section[LR_COLUMNS], metric))),
            ("per-epoch dev curves", Job(f"epochs__{name}.png", epoch_curves, (title, section[EPOCH_COLUMNS], metric))),
        ]
        inter = [s for s in sorted(set(section["study"])) if get_method(studies[s]["method"]).searches_lambda]
        if inter:
            searches = [(studies[s].get("config") or {}).get("search", {}) for s in inter]
            rows = section.loc[section["study"].isin(inter), HEATMAP_COLUMNS]
            figs.append(
                (
                    "η × λ heatmaps per lr, inter-layer methods",
                    Job(f"heatmap__{name}.png", heatmaps, (title, rows, searches, metric)),
                )
            )
        made[(study_file, task)] = figs
        made[("runs", study_file, task)] = [
            ("optimisation history", Job(f"history__{name}.png", history, (title, section[HISTORY_COLUMNS], metric)))
        ]
    made.update(extra or {})
    jobs = [job for figs in made.values() for _, job in figs]
    render(out, jobs, workers)
    _remove_stale(out, {job.path for job in jobs})
    return {where: [(title, job.path) for title, job in figs] for where, figs in made.items()}
