"""Study files: validation and the per-method grids."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.spec.config import grid_points, load_study, parse_study, point_key
from harness.spec.methods import METHODS
from harness.util.errors import HarnessError

REPO = Path(__file__).resolve().parents[1]


def study(**overrides) -> dict:
    data = {"name": "t", "task": "rte", "teacher": "minilm-l6", "student_layers": 4, "methods": list(METHODS)}
    data.update(overrides)
    return data


def test_paper_grid_counts():
    config = parse_study(study())
    counts = {method: len(grid_points(config, method)) for method in config.methods}
    # NKD: lr only; KD: lr × η; inter-layer methods: lr × (η, λ) pairs with η + λ ≤ 1, 13 pairs.
    assert counts == {
        "nkd": 3,
        "kd": 12,
        "pkd-skip": 39,
        "pkd-last": 39,
        "ckd": 39,
        "alp": 39,
        "alp-no": 39,
        "alp-po": 39,
    }
    for point in grid_points(config, "alp"):
        assert point["eta"] + point["lambda"] <= 1.0 + 1e-9
    assert {"lr": 1e-5, "eta": 0.5, "lambda": 0.5} in grid_points(config, "alp")
    assert {"lr": 1e-5, "eta": 0.7, "lambda": 0.5} not in grid_points(config, "alp")
    assert all(p["eta"] == p["lambda"] == 0 for p in grid_points(config, "nkd"))
    assert all(p["lambda"] == 0 for p in grid_points(config, "kd"))


def test_task_name_is_canonical_and_names_are_readable():
    config = parse_study(study(task="sts-b"))
    assert config.task == "STS-B"
    assert config.study_name("alp") == "t/STS-B/alp"
    assert point_key({"lr": 5e-5, "eta": 0.5, "lambda": 0.2}) == "lr=5e-05,eta=0.5,lambda=0.2"


def test_fingerprint_changes_with_setup_but_not_budget():
    base = parse_study(study())
    assert base.fingerprint("alp") != base.fingerprint("kd")
    assert base.fingerprint("alp") == parse_study(study(search={"n_trials": 5})).fingerprint("alp")
    assert base.fingerprint("alp") != parse_study(study(fixed={"epochs": 4})).fingerprint("alp")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"methods": []}, "methods"),
        ({"methods": ["kd", "kd"]}, "lists a method twice"),
        ({"search": {"eta": [1.5]}}, r"loss weights must lie in \[0, 1\]"),
        ({"search": {"lr": []}}, "must list at least one value"),
        ({"search": {"lr": [-1e-5]}}, "learning rates must be positive"),
        ({"search": {"lr": [7]}}, r"learning rates must be positive and below 1 \(e.g. 5.0e-5 for 5e-5\), got \[7.0\]"),
        ({"fixed": {"teacher": {"lr": 7}}}, "fixed.teacher.lr"),
        ({"fixed": {"weight_decay": 1.0}}, "fixed.weight_decay"),
        ({"fixed": {"temperature": 1000}}, "fixed.temperature"),
        ({"fixed": {"temperature": float("inf")}}, "fixed.temperature"),
        ({"search": {"sampler": "random"}}, "search.sampler"),
        ({"fixed": {"alp_scale": "2"}}, "fixed.alp_scale"),
        ({"fixed": {"epochs": 0}}, "fixed.epochs"),
        ({"name": "a/b"}, "name"),
    ],
)
def test_invalid_values_are_one_line_errors(change, message):
    with pytest.raises(HarnessError, match=message) as info:
        parse_study(study(**change), source="s.yaml")
    assert "\n" not in str(info.value) and str(info.value).startswith("s.yaml: ")


def test_not_a_mapping():
    with pytest.raises(HarnessError, match="expected a mapping"):
        parse_study(["a"], source="s.yaml")


@pytest.mark.parametrize("path", sorted((REPO / "studies").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_study_files_are_valid(path):
    config = load_study(path)
    assert config.methods
