"""The equal-budget and ALP-attention figures, drawn from small hand-made inputs."""

from __future__ import annotations

from pathlib import Path

import matplotlib.style
import numpy as np
import pytest
from PIL import Image

from harness.report import figures, figures_honest, render

BUDGET = 6


def _curve(size: int, base: float) -> dict:
    n = list(range(1, size + 1))
    return {"n": n, "mean": [base + 0.05 * (1 - 1 / k**0.5) for k in n], "sd": [0.03 / k**0.5 for k in n]}


CURVES = {"alp": _curve(12, 0.85), "nkd": _curve(3, 0.82), "kd": _curve(6, 0.84)}  # not in registry order
LONG = {"pkd-skip": _curve(48, 0.845), "kd": _curve(6, 0.84)}


def _alpha(rows: int, cols: int, sharp: float) -> list[list[float]]:
    logits = np.random.default_rng(rows * cols).random((rows, cols)) * sharp
    weights = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return [[float(v) for v in row] for row in weights]


PANELS = [
    {
        "method": "alp-po",
        "point": "lr=5e-05,eta=0.5,lambda=0.2",
        "alpha": _alpha(6, 12, 30.0),
        "entropy": 0.04,
        "one_hot": True,
    },
    {
        "method": "alp",
        "point": "lr=1e-05,eta=0.2,lambda=0.7",
        "alpha": _alpha(6, 12, 1.0),
        "entropy": 2.41,
        "one_hot": False,
    },
    {
        "method": "alp-no",
        "point": "lr=5e-05,eta=0.2,lambda=0.2",
        "alpha": _alpha(4, 3, 1.0),
        "entropy": 1.05,
        "one_hot": False,
    },
]


def _jobs() -> list[render.Job]:
    return [
        render.Job(
            "budget__demo__SST-2.png", figures_honest.budget_curves, ("demo / SST-2", CURVES, "accuracy", BUDGET)
        ),
        render.Job("budget__demo__long.png", figures_honest.budget_curves, ("demo / long", LONG, "accuracy", 10)),
        render.Job("alpha__demo__SST-2.png", figures_honest.alpha_heatmap, ("demo / SST-2", PANELS)),
        render.Job("alpha__demo__one.png", figures_honest.alpha_heatmap, ("demo / one", PANELS[2:])),
    ]


def test_figures_render_to_valid_pngs_with_the_same_bytes_twice(tmp_path: Path):
    first, second = tmp_path / "first", tmp_path / "second"
    for out in (first, second):
        render.render(out, _jobs(), workers=1)
    for job in _jobs():
        path = first / job.path
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width >= 400 and image.height >= 250, job.name
        assert path.stat().st_size > 5000, job.name
        assert path.read_bytes() == (second / job.path).read_bytes(), job.name


def test_new_prefixes_are_cleaned_as_stale(tmp_path: Path):
    assert {"budget__", "alpha__"} <= set(render.PREFIXES)
    folder = tmp_path / render.FOLDER
    folder.mkdir()
    for name in ("budget__old.png", "alpha__old.png", "other.png"):
        (folder / name).write_bytes(b"old")
    render.remove_stale(tmp_path, set())
    assert sorted(p.name for p in folder.iterdir()) == ["other.png"]


def test_budget_curves_draw_one_line_and_band_per_method_in_registry_order():
    with matplotlib.style.context("default"):
        figure = figures_honest.budget_curves("demo / SST-2", CURVES, "accuracy", BUDGET)
    (ax,) = figure.axes
    lines = [line for line in ax.lines if line.get_label() in CURVES]
    assert [line.get_label() for line in lines] == ["nkd", "kd", "alp"]
    for line in lines:
        curve = CURVES[line.get_label()]
        assert list(line.get_xdata()) == curve["n"]
        assert np.allclose(line.get_ydata(), 100 * np.array(curve["mean"]))
        assert line.get_color() == figures.method_color(line.get_label())
    assert len(ax.collections) == len(CURVES)  # one ±1 sd band each
    assert all(band.get_alpha() == pytest.approx(0.15) for band in ax.collections)
    (budget,) = [line for line in ax.lines if line.get_label() not in CURVES]
    assert list(budget.get_xdata()) == [BUDGET, BUDGET] and budget.get_linestyle() == "--"
    assert "equal budget" in budget.get_label() and f"n = {BUDGET}" in budget.get_label()
    assert ax.get_xscale() == "linear"
    assert ax.get_ylabel() == "expected best dev accuracy × 100"
    assert ax.get_xlabel() == "trials n (drawn at random from the method's grid)"
    assert len(ax.get_legend().get_texts()) == len(CURVES) + 1


def test_budget_curves_use_a_log_axis_with_integer_ticks_past_twenty_trials():
    with matplotlib.style.context("default"):
        ax = figures_honest.budget_curves("demo / long", LONG, "f1", 10).axes[0]
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "5", "10", "20", "48"]


def test_budget_curves_refuse_unknown_methods_and_draw_a_note_when_empty():
    with pytest.raises(ValueError, match="unknown methods"):
        figures_honest.budget_curves("t", {"nope": _curve(2, 0.5)}, "accuracy", 2)
    assert not figures_honest.budget_curves("t", {}, "accuracy", 2).axes


def test_alpha_heatmap_draws_one_image_per_panel_on_one_scale():
    with matplotlib.style.context("default"):
        figure = figures_honest.alpha_heatmap("demo / SST-2", PANELS)
    panels = [ax for ax in figure.axes if ax.images and ax.get_visible()]
    by_method = {p["method"]: p for p in PANELS}
    titles = [ax.get_title().split(" ")[0] for ax in panels]
    assert titles == ["alp", "alp-no", "alp-po"]  # registry order
    for ax in panels:
        (image,) = ax.images
        panel = by_method[ax.get_title().split(" ")[0]]
        expected = np.array(panel["alpha"])
        assert image.get_array().shape == expected.shape
        assert np.allclose(image.get_array(), expected)
        assert image.get_clim() == (0, 1)
        cells = [t.get_text() for t in ax.texts if t.get_text() != " — near one-hot"]
        assert cells == [f"{v:.2f}" for v in expected.ravel()]
        assert [t.get_text() for t in ax.get_xticklabels()] == [str(j) for j in range(1, expected.shape[1] + 1)]
        assert [t.get_text() for t in ax.get_yticklabels()] == [str(i) for i in range(1, expected.shape[0] + 1)]
        assert f"mean entropy {panel['entropy']:.2f} nats" in ax.get_title()
        title_text = " ".join([ax.get_title()] + [t.get_text() for t in ax.texts])
        assert ("near one-hot" in title_text) == panel["one_hot"]
        for text in ax.texts:
            if "near one-hot" in text.get_text():
                assert text.get_color() == "red"
    assert sum(1 for ax in figure.axes if not ax.images and ax.get_visible()) == 1  # one colour bar
    assert {ax.get_xlabel() for ax in panels} == {"teacher layer"}
    assert panels[0].get_ylabel() == "student layer"


def test_alpha_heatmap_text_is_white_on_dark_cells():
    panel = {"method": "alp", "point": "p", "alpha": [[0.1, 0.9]], "entropy": 0.33, "one_hot": False}
    with matplotlib.style.context("default"):
        ax = figures_honest.alpha_heatmap("t", [panel]).axes[0]
    assert [(t.get_text(), t.get_color()) for t in ax.texts] == [("0.10", "white"), ("0.90", "black")]
