"""The figures of the report's honest part: expected best score against the number of trials (equal budget),
and ALP's attention α per task. Drawn like every report figure (:mod:`harness.report.render`)."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from harness.report.figures import decorate, legend_right_figure, method_color
from harness.spec.methods import METHODS


def _placeholder(text: str) -> Figure:
    figure = Figure(figsize=(4, 2))
    figure.text(0.5, 0.5, text, ha="center", va="center")
    return figure


def _log_ticks(top: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, … up to ``top``, and ``top`` itself unless close to the last of them:
    integer ticks for a log-scale trial-count axis."""
    ticks, decade = [], 1
    while decade <= top:
        ticks += [v for v in (decade, 2 * decade, 5 * decade) if v <= top]
        decade *= 10
    return ticks + [top] if top >= 1.4 * ticks[-1] else ticks


def budget_curves(title: str, curves: dict[str, dict], metric: str, budget: int) -> Figure:
    """Equal budget: the expected best dev score of n trials drawn at random from each method's grid.

    The expected maximum validation performance of Dodge et al. (2019) against n, one line per
    method (registry order) with a ±1 sd band, and a dashed line at the equal budget ``budget``.
    ``curves``: method → ``{"n": [1, 2, …], "mean": [...], "sd": [...]}`` (scores as fractions,
    drawn × 100); the lists of a method have one length, which may differ between methods (its
    grid size). A method not in the registry is an error.
    """
    unknown = sorted(set(curves) - set(METHODS))
    if unknown:
        raise ValueError(f"budget_curves: unknown methods {unknown}")
    methods = [m for m in METHODS if m in curves and len(curves[m]["n"])]
    if not methods:
        return _placeholder(f"{title}: no expected-max curve yet")
    fig, ax = legend_right_figure()
    top = 1
    for method in methods:
        curve = curves[method]
        n, mean, sd = (np.asarray(curve[field], dtype=float) for field in ("n", "mean", "sd"))
        if not len(n) == len(mean) == len(sd):
            raise ValueError(f"budget_curves: {method}: n, mean and sd differ in length")
        mean, sd = 100 * mean, 100 * sd
        ax.plot(n, mean, label=method, color=method_color(method), marker="o" if len(n) <= 20 else None, markersize=3)
        ax.fill_between(n, mean - sd, mean + sd, color=method_color(method), alpha=0.15, linewidth=0)
        top = max(top, float(n.max()))
    ax.axvline(budget, color="grey", linestyle="--", linewidth=1, label=f"equal budget\nn = {budget}")
    if top > 20:
        ax.set_xscale("log")
        ticks = _log_ticks(int(max(top, budget)))
        ax.set_xticks(ticks, [str(v) for v in ticks])
        ax.minorticks_off()
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    decorate(
        ax,
        "trials n (drawn at random from the method's grid)",
        f"expected best dev {metric} × 100",
        f"{title}: equal budget (Dodge et al. 2019 expected max; band ±1 sd)",
    )
    return fig


def alpha_heatmap(title: str, panels: list[dict]) -> Figure:
    """ALP attention of one task: the mean α over dev of each ALP-family method's best trial.

    One panel per entry of ``panels`` (registry order, then the given order), rows = student
    layers 1..M (layer 1 at the bottom), columns = teacher layers 1..N, one colour scale 0..1 and
    one colour bar for all, every cell written to 2 decimals. ``panels``: ``{"method": str,
    "point": str, "alpha": M × N list of lists, "entropy": float (mean, nats), "one_hot": bool}``;
    a ``one_hot`` panel carries a red "— near one-hot" line under its title.
    """
    if not panels:
        return _placeholder(f"{title}: no ALP attention recorded yet")
    order = {m: i for i, m in enumerate(METHODS)}
    panels = sorted(panels, key=lambda p: order.get(p["method"], len(order)))  # stable: ties keep their order
    grids = [np.asarray(p["alpha"], dtype=float) for p in panels]
    for panel, grid in zip(panels, grids):
        if grid.ndim != 2 or 0 in grid.shape:
            raise ValueError(f"alpha_heatmap: {panel['method']}: alpha is not an M × N matrix")
    rows_m, cols_n = max(g.shape[0] for g in grids), max(g.shape[1] for g in grids)
    cols = min(3, len(panels))
    rows_n = math.ceil(len(panels) / cols)
    gap_w, gap_h, left, right_m, bottom_m, top_m = 0.6, 1.15, 0.7, 1.0, 0.5, 1.0
    panel_w = max(2.4, 0.4 * cols_n, (6.8 - left - right_m - (cols - 1) * gap_w) / cols)  # the title's width
    panel_h = max(1.5, 0.3 * rows_m)
    width = left + cols * panel_w + (cols - 1) * gap_w + right_m
    height = top_m + rows_n * panel_h + (rows_n - 1) * gap_h + bottom_m
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(rows_n, cols, squeeze=False).ravel()
    image = None
    for k, (ax, panel, grid) in enumerate(zip(axes, panels, grids)):
        image = ax.imshow(grid, origin="lower", cmap="viridis", vmin=0, vmax=1, aspect="auto")
        for (i, j), value in np.ndenumerate(grid):
            missing = math.isnan(value)
            ax.text(
                j,
                i,
                "–" if missing else f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=6.5,
                color="white" if not missing and value < 0.5 else "black",
            )  # viridis is dark at the low end
        ax.set_xticks(range(grid.shape[1]), [str(j + 1) for j in range(grid.shape[1])])
        ax.set_yticks(range(grid.shape[0]), [str(i + 1) for i in range(grid.shape[0])])
        ax.tick_params(length=2, labelsize=7)
        line = 1.25 * 8  # one title line, in points
        ax.set_title(
            f"{panel['method']} {panel['point']}\nmean entropy {panel['entropy']:.2f} nats",
            fontsize=8,
            y=1.0,
            pad=6 + (line if panel["one_hot"] else 0),
        )
        if panel["one_hot"]:
            ax.annotate(
                " — near one-hot",
                (0.5, 1.0),
                xycoords="axes fraction",
                xytext=(0, 6),
                textcoords="offset points",
                ha="center",
                va="baseline",
                fontsize=8,
                color="red",
            )
        if k % cols == 0:
            ax.set_ylabel("student layer", fontsize=8)
        if k + cols >= len(panels):  # nothing drawn below it
            ax.set_xlabel("teacher layer", fontsize=8)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(f"{title}: ALP attention α (mean over dev, best trial per method), one colour scale 0..1", fontsize=9)
    right, bottom, top = 1 - right_m / width, bottom_m / height, 1 - top_m / height
    fig.subplots_adjust(
        left=left / width, right=right, bottom=bottom, top=top, wspace=gap_w / panel_w, hspace=gap_h / panel_h
    )
    bar_axes = fig.add_axes((right + 0.15 / width, bottom, 0.12 / width, top - bottom))
    colorbar = fig.colorbar(image, cax=bar_axes)
    colorbar.ax.tick_params(labelsize=7)
    colorbar.set_label("α", fontsize=8)
    return fig
