"""Issue 24: every number labelled, no bold in noise, a correction family of distinct comparisons, power stated.

Each test builds a small study through the harness's own storage API where the old rule gives the wrong mark,
and checks the new one (and, where it matters, that the rule still marks what it should).
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState, create_trial
from scipy import stats

from harness.report import statistics
from harness.report.document import load, markdown_report, write_report
from harness.spec.config import parse_study
from harness.store.storage import Storage
from harness.sweep.driver import open_study
from harness.util.errors import HarnessError

from conftest import REPO

COMMAND = "python run_study.py report"
N = 200
LABELS = np.array([1] * 120 + [0] * 80)  # majority class 1: accuracy 60 %


def setup_module():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def correct_first(k: int) -> np.ndarray:
    """Predictions right on the first ``k`` examples, wrong after."""
    return np.where(np.arange(N) < k, LABELS, 1 - LABELS)


def noisy(accuracy: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.where(rng.random(N) < accuracy, LABELS, 1 - LABELS)


MAJORITY = np.ones(N, dtype=int)


def _point(point: str) -> dict:
    return {k: float(v) for k, v in (p.split("=") for p in point.split(","))}


def _trial(point: str, value: float, score: float | None = None, **extra) -> optuna.trial.FrozenTrial:
    """A COMPLETE trial: ``value`` its selection score, ``score`` its dev accuracy (default: the value)."""
    epoch = {"epoch": 1, "value": value, "metrics": {"dev": {"accuracy": value if score is None else score}}}
    epoch.update(extra.pop("epoch", {}))
    attrs = {"point": point, **_point(point), "seed": 42, "epochs": [epoch], "best_epoch": 1}
    attrs["lambda"] = attrs.pop("lambda")
    attrs.update(extra)
    return create_trial(state=TrialState.COMPLETE, value=value, user_attrs=attrs)


def _config(task: str, methods: list[str], selection: str = "dev"):
    return parse_study(
        {
            "name": "s",
            "task": task,
            "teacher": "synthetic-teacher",
            "student_layers": 2,
            "methods": methods,
            "search": {"lr": [1e-5, 5e-5], "eta": [0.0, 0.5], "lambda": [0.0, 0.5]},
            "fixed": {"selection": selection},
        }
    )


def build(
    url: str, rows: dict, task: str = "SST-2", selection: str = "dev", storage: Storage | None = None, epoch: int = 1
):
    """``rows``: method → [(trial, predictions or None at ``epoch``)]; labels are :data:`LABELS`."""
    storage = storage or Storage(url)
    config = _config(task, list(rows), selection)
    for method, trials in rows.items():
        study = open_study(storage, config, method)
        study.set_user_attr("teacher", {"key": "t", "value": 0.9, "metrics": {"dev": {"accuracy": 0.9}}})
        study.add_trials([t for t, _ in trials])
        storage.save_labels(study.study_name, {"dev": LABELS})
        for trial, predicted in zip(study.get_trials(), [p for _, p in trials]):
            if predicted is not None:
                storage.save_predictions(trial._trial_id, epoch, {"dev": np.eye(2)[predicted].astype(np.float32)})
    return storage


def _table(text: str, heading: str) -> list[list[str]]:
    after = text.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(after) if line.startswith("|"))
    end = next(i for i in range(start, len(after)) if not after[i].startswith("|"))
    return [[c.strip() for c in line.strip("|").split("|")] for line in after[start:end]]


def acc(predicted: np.ndarray) -> float:
    return float((predicted == LABELS).mean())


# --------------------------------------------------------------------------- 1. every number names its split
def test_holdout_study_tables_show_the_holdout_value_and_the_dev_score_beside_it(tmp_path):
    # Old rule: the column "best dev" showed the holdout value (80.80) of a trial whose dev score is 74.54.
    storage = build(
        f"sqlite:///{tmp_path / 'h.db'}",
        {"kd": [(_trial("lr=1e-05,eta=0.5,lambda=0", 0.8080, 0.7454), None)]},
        selection="holdout",
    )
    text = markdown_report(load(storage), COMMAND)
    assert "### s / SST-2 (selected on holdout, dev read at it, accuracy × 100)" in text
    table = _table(text, "### s / SST-2")
    assert table[0][:3] == ["method", "best holdout (selects)", "dev at it"]
    assert table[3][:3] == ["kd", "80.80", "74.54"]
    assert "best dev" not in text.split("## Studies", 1)[1]


# --------------------------------------------------------------------------- 2. no bold in noise
def _two_task_columns(tmp_path, near: np.ndarray, far: np.ndarray):
    return build(
        f"sqlite:///{tmp_path / 'b.db'}",
        {
            "nkd": [(_trial("lr=1e-05,eta=0,lambda=0", acc(near)), near)],
            "kd": [(_trial("lr=1e-05,eta=0.5,lambda=0", acc(far)), far)],
        },
    )


def test_a_best_within_noise_of_the_runner_up_is_not_bold(tmp_path):
    # Old rule: the highest cell is bold even when it is 1 example (0.5 points) above the runner-up.
    near, far = correct_first(150), correct_first(151)
    text = markdown_report(load(_two_task_columns(tmp_path, near, far)), COMMAND)
    table = _table(text, "## Comparison")
    assert not any("**" in cell for row in table for cell in row)
    assert "No method leads on SST-2" in text


def test_a_clear_leader_over_runner_up_and_chance_is_bold(tmp_path):
    near, far = correct_first(125), correct_first(190)
    text = markdown_report(load(_two_task_columns(tmp_path, near, far)), COMMAND)
    rows = {r[0]: r for r in _table(text, "## Comparison")}
    assert rows["kd"][1] == f"**{100 * acc(far):.2f}**" and "**" not in rows["nkd"][1]
    assert "**" not in rows["kd"][2]  # the Average is never bold
    assert "No method leads" not in text


def test_a_leader_far_above_the_runner_up_but_at_chance_is_not_bold(tmp_path):
    # CoLA-like: every student near the majority rate; the best is ahead of a bad runner-up, not of chance.
    near, far = correct_first(60), np.where(np.arange(N) < 3, 1 - LABELS, MAJORITY)
    far = np.where(np.arange(N) >= 197, LABELS, far)  # at chance: 60 % minus 3 plus 3 examples
    text = markdown_report(load(_two_task_columns(tmp_path, near, far)), COMMAND)
    assert acc(far) > acc(near)
    assert not any("**" in cell for row in _table(text, "## Comparison") for cell in row)


# --------------------------------------------------------------------------- 3. the family counts distinct comparisons
def _shared_family(tmp_path, url: str | None = None, task: str = "SST-2", storage=None):
    """KD ≡ PKD-last ≡ CKD (identical predictions), ALP ≡ ALP-PO, ALP better than all of them."""
    base, good = noisy(0.7, 1), noisy(0.9, 2)
    kd_point, alp_point = "lr=1e-05,eta=0.5,lambda=0", "lr=1e-05,eta=0.5,lambda=0.5"
    return build(
        url or f"sqlite:///{tmp_path / 'f.db'}",
        {
            "kd": [(_trial(kd_point, acc(base)), base)],
            "pkd-last": [(_trial(kd_point, acc(base)), base)],
            "ckd": [(_trial(kd_point, acc(base)), base)],
            "alp": [(_trial(alp_point, acc(good)), good)],
            "alp-po": [(_trial(alp_point, acc(good)), good)],
        },
        task=task,
        storage=storage,
    )


def test_holm_counts_each_distinct_comparison_once(tmp_path):
    # Old rule: 6 comparisons (alp, alp-po × kd, pkd-last, ckd), Holm multiplies the smallest p by 6; they are
    # one comparison (the same two computations), so m = 1 and Holm p = p.
    text = markdown_report(load(_shared_family(tmp_path)), COMMAND)
    rows = _table(text, "## Paired comparisons")[2:]
    assert [(r[2], r[3]) for r in rows] == [(a, b) for a in ("alp", "alp-po") for b in ("kd", "pkd-last", "ckd")]
    assert "dev bootstrap m = 1;" in text
    first = rows[0]
    assert first[10] == first[11] and first[13] == "alp higher (dev bootstrap, Holm p < 0.05)"
    for row in rows[1:]:
        assert row[9] == first[9] and row[11] == f"{first[11]} (= row 1)"
    # the old family: Holm over all six raw p-values of the same comparison
    assert statistics.holm([float(first[10])] * 6)[0] == pytest.approx(min(1.0, 6 * float(first[10])))


def test_same_computation_is_no_comparison(tmp_path):
    # alp's best is kd's computation (identical predictions): the old rule tested it (Δ = 0, p = 1) and counted it.
    same = noisy(0.7, 1)
    storage = build(
        f"sqlite:///{tmp_path / 's.db'}",
        {
            "kd": [(_trial("lr=1e-05,eta=0.5,lambda=0", acc(same)), same)],
            "alp": [(_trial("lr=1e-05,eta=0.5,lambda=0", acc(same)), same)],
        },
    )
    text = markdown_report(load(storage), COMMAND)
    (row,) = _table(text, "## Paired comparisons")[2:]
    assert row[9] == "≡ identical" and row[13] == "identical predictions (or one shared trial): no comparison"
    assert "dev bootstrap m = 0;" in text


def test_family_task_corrects_within_each_task(tmp_path):
    url = f"sqlite:///{tmp_path / 't.db'}"
    storage = _shared_family(tmp_path, url)
    _shared_family(tmp_path, url, task="MRPC", storage=storage)
    snapshot = load(storage)
    whole = markdown_report(snapshot, COMMAND)
    per_task = markdown_report(snapshot, COMMAND, family="task")
    assert "dev bootstrap m = 2;" in whole and "**Family**: `report` (the default)" in whole
    assert "dev bootstrap MRPC m = 1, SST-2 m = 1;" in per_task and "**Family**: `task`," in per_task
    with pytest.raises(HarnessError, match="unknown family 'nonsense' for --family; expected one of report, task"):
        markdown_report(snapshot, COMMAND, family="nonsense")


def test_focus_pairs_the_chosen_methods_and_the_family_follows(tmp_path):
    text = markdown_report(load(_shared_family(tmp_path)), COMMAND, focus=("kd",))
    rows = _table(text, "## Paired comparisons")[2:]
    assert [(r[2], r[3]) for r in rows] == [("kd", m) for m in ("pkd-last", "ckd", "alp", "alp-po")]
    assert "**Focus**: kd (" in text
    # kd ≡ pkd-last ≡ ckd: no comparison; alp and alp-po: one comparison. m = 1.
    assert (
        "dev bootstrap m = 1;" in text and rows[0][13] == "identical predictions (or one shared trial): no comparison"
    )
    with pytest.raises(HarnessError, match="unknown method 'kdd' for --focus; expected one of nkd, kd"):
        markdown_report(load(_shared_family(tmp_path, f"sqlite:///{tmp_path / 'g.db'}")), COMMAND, focus=("kdd",))


# --------------------------------------------------------------------------- 4. the bootstrap can be significant
def test_the_bootstrap_is_sized_so_that_holm_over_m_can_reject():
    good, bad = correct_first(200), MAJORITY
    m = 60
    old = statistics.paired_bootstrap("accuracy", good, bad, LABELS, 1000, 0)
    assert statistics.holm([old.p] * m)[0] >= 0.05  # 1,000 resamples: never significant over 60 comparisons
    resamples = statistics.bootstrap_resamples(m)
    new = statistics.paired_bootstrap("accuracy", good, bad, LABELS, resamples, 0)
    assert resamples >= 20 * m and statistics.holm([new.p] * m)[0] < 0.05


def test_the_bca_interval_and_its_p_agree():
    # Old: percentile interval [+0.11, +4.24] with shifted-null p = 0.058 happened; one bootstrap now gives both.
    rng = np.random.default_rng(3)
    checked = 0
    for case in range(60):
        a = noisy(0.8, 100 + case)
        b = np.where(rng.random(N) < 0.1, 1 - a, a)
        for metric in ("accuracy", "f1", "mcc"):
            result = statistics.paired_bootstrap(metric, a, b, LABELS, 1000, case)
            if 0.0 in (result.low, result.high):
                continue  # on the boundary the resamples' granularity decides
            checked += 1
            assert (result.low > 0 or result.high < 0) == (result.p < 0.05), (case, metric, result)
    assert checked > 150


# --------------------------------------------------------------------------- 5. power
def test_power_matches_the_t_distribution_and_the_issue():
    # 5 seeds, m = 45: the first Holm step needs |t| > 8.4 (issue 24).
    assert statistics.detectable_delta(1.0, 5, 45) * math.sqrt(5) == pytest.approx(8.4, abs=0.05)
    sd = 0.012
    assert statistics.detectable_delta(sd, 5, 45) == pytest.approx(stats.t.ppf(1 - 0.05 / 90, 4) * sd / math.sqrt(5))
    n = statistics.seeds_needed(0.01, sd, 45)
    assert statistics.detectable_delta(sd, n, 45) <= 0.01 < statistics.detectable_delta(sd, n - 1, 45)


def test_the_report_states_the_power_of_the_seed_test(tmp_path):
    seeds = {"kd": [0.70, 0.72, 0.69, 0.71, 0.70], "alp": [0.71, 0.74, 0.69, 0.73, 0.70]}
    points = {"kd": "lr=1e-05,eta=0.5,lambda=0", "alp": "lr=1e-05,eta=0.5,lambda=0.5"}
    rows = {
        m: [(_trial(points[m], v[0]), None)]
        + [(_trial(points[m], x, seed=s, confirmation=True), None) for s, x in enumerate(v, 43)]
        for m, v in seeds.items()
    }
    text = markdown_report(load(build(f"sqlite:///{tmp_path / 'p.db'}", rows)), COMMAND)
    sd = float(np.std(np.subtract(seeds["alp"], seeds["kd"]), ddof=1))
    smallest = statistics.detectable_delta(sd, 5, 1)
    assert f"**Power, SST-2** (seed test, m = 1, n = 5 seeds, sd of the per-seed differences {100 * sd:.2f})" in text
    assert f"is **{100 * smallest:.2f} points**" in text
    assert f"would need **{statistics.seeds_needed(0.01, sd, 1)} seeds**" in text


# --------------------------------------------------------------------------- 6. the gain of a ≡ NKD point
def test_a_best_point_that_is_nkd_gains_what_nkd_gains(tmp_path):
    storage = build(
        f"sqlite:///{tmp_path / 'g.db'}",
        {
            "nkd": [(_trial("lr=1e-05,eta=0,lambda=0", 0.78), None)],
            "kd": [(_trial("lr=1e-05,eta=0.5,lambda=0", 0.75), None)],
            "alp": [
                (_trial("lr=1e-05,eta=0,lambda=0", 0.78), None),
                (_trial("lr=1e-05,eta=0.5,lambda=0.5", 0.7), None),
            ],
        },
    )
    gains = {r[0]: r for r in _table(markdown_report(load(storage), COMMAND), "Gain over KD")[2:]}
    assert gains["alp"][2] == "+3.00 ≡ NKD"  # old rule: +0.00 ≡ NKD
    assert gains["nkd"][2] == "+3.00"


# --------------------------------------------------------------------------- 7. one tie-break
def test_the_budget_curve_breaks_ties_like_best_of_grid():
    # Two trials tie on the selection value; best of grid takes the first in grid order (here: the first position,
    # as honest.budget_curves passes them). Old: the curve let the later win.
    keys, reported = [0.8, 0.8, 0.7], [0.74, 0.70, 0.60]
    mean, sd = statistics.expected_selected(keys, reported, 3)
    assert (mean, sd) == (0.74, 0.0)
    assert statistics.expected_selected_curve(keys, reported)[0][-1] == 0.74


def test_equal_budget_at_the_full_grid_equals_the_best_of_grid_cell(tmp_path):
    storage = build(
        f"sqlite:///{tmp_path / 'tie.db'}",
        {
            "kd": [
                (_trial("lr=1e-05,eta=0.5,lambda=0", 0.8, 0.74), None),
                (_trial("lr=5e-05,eta=0.5,lambda=0", 0.8, 0.70), None),
            ]
        },
        selection="holdout",
    )
    text = markdown_report(load(storage), COMMAND, budget=2)
    assert {r[0]: r for r in _table(text, "## Comparison")}["kd"][1] == "74.00"
    assert _table(text, "## Equal budget")[2][1] == "74.00 ± 0.00 (2)"


# --------------------------------------------------------------------------- 8. α of the best trial, per example
def test_alpha_describes_the_best_trial_with_the_per_example_picture(tmp_path):
    alpha = {"alpha": [[0.05, 0.9, 0.05], [0.62, 0.0, 0.38]], "alpha_entropy": 0.02}
    per_example = {"alpha_top": [0.99, 0.98], "alpha_switch": [0.01, 0.38]}
    storage = build(
        f"sqlite:///{tmp_path / 'a.db'}",
        {
            "kd": [(_trial("lr=1e-05,eta=0.5,lambda=0", 0.7), None)],
            "alp": [
                (_trial("lr=1e-05,eta=0.5,lambda=0.5", 0.8, epoch={**alpha, **per_example}), None),
                (_trial("lr=5e-05,eta=0.5,lambda=0.5", 0.6, epoch=alpha), None),
            ],
            "alp-no": [
                (_trial("lr=1e-05,eta=0,lambda=0", 0.9), None),  # its best: NKD's computation
                (_trial("lr=1e-05,eta=0.5,lambda=0.5", 0.6, epoch=alpha), None),
            ],
        },
    )
    rows = {r[1]: r for r in _table(markdown_report(load(storage), COMMAND), "## ALP attention")[2:]}
    assert rows["alp"] == [
        "SST-2",
        "alp",
        "lr=1e-05,eta=0.5,lambda=0.5",
        "0.020",
        "0.90@2, 0.62@1",
        "0.99, 0.98",
        "0.01, 0.38",
        "yes",
    ]
    # old rule: the λ = 0.5 trial of alp-no, which its cells do not report
    assert rows["alp-no"][4] == "no ALP term (best ≡ NKD)"


# --------------------------------------------------------------------------- 9. a baseline that is a constant
def test_a_baseline_that_predicts_the_majority_class_on_some_seeds_is_named(tmp_path):
    kd_point, alp_point = "lr=1e-05,eta=0.5,lambda=0", "lr=1e-05,eta=0.5,lambda=0.5"
    kd_seeds = {43: MAJORITY, 44: noisy(0.7, 4), 45: MAJORITY}
    alp_seeds = {s: noisy(0.75, s) for s in (43, 44, 45)}
    rows = {
        "kd": [(_trial(kd_point, 0.7), noisy(0.7, 9))]
        + [(_trial(kd_point, acc(p), seed=s, confirmation=True), p) for s, p in kd_seeds.items()],
        "alp": [(_trial(alp_point, 0.75), noisy(0.75, 8))]
        + [(_trial(alp_point, acc(p), seed=s, confirmation=True), p) for s, p in alp_seeds.items()],
    }
    text = markdown_report(load(build(f"sqlite:///{tmp_path / 'm.db'}", rows)), COMMAND)
    (row,) = _table(text, "## Paired comparisons")[2:]
    assert row[2] == "alp" and row[3] == "kd (majority class on seeds 43, 45)"


# --------------------------------------------------------------------------- the command line
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--family", "nonsense"], "error: unknown family 'nonsense' for --family; expected one of report, task"),
        (["--focus", "alp", "unknown-method"], "error: unknown method 'unknown-method' for --focus; expected one of"),
    ],
)
def test_bad_focus_or_family_is_a_one_line_error_and_writes_nothing(tmp_path, args, message):
    out, db = tmp_path / "out", tmp_path / "x.db"
    done = subprocess.run(
        [sys.executable, "run_study.py", "report", "--storage", f"sqlite:///{db}", "--out", str(out), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and done.stderr.startswith(message) and done.stderr.count("\n") == 1
    assert not out.exists() and not db.exists()


def test_write_report_rejects_a_bad_family_before_writing(tmp_path):
    with pytest.raises(HarnessError, match="unknown family"):
        write_report(Storage(f"sqlite:///{tmp_path / 'e.db'}"), tmp_path / "out", None, COMMAND, family="x")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- mixed hardware (issue 21)
def test_a_study_whose_trials_ran_on_different_devices_or_precisions_is_noted(tmp_path):
    one = {"device": "cuda:NVIDIA H100", "precision": "bfloat16"}
    rows = {
        "kd": [
            (_trial("lr=1e-05,eta=0.5,lambda=0", 0.80, **one), None),
            (_trial("lr=5e-05,eta=0.5,lambda=0", 0.81, device="cuda:Tesla V100", precision="float16"), None),
        ],
        "nkd": [
            (_trial("lr=1e-05,eta=0,lambda=0", 0.78, **one), None),
            (_trial("lr=5e-05,eta=0,lambda=0", 0.79, **one), None),
        ],
    }
    text = markdown_report(load(build(f"sqlite:///{tmp_path / 'm.db'}", rows)), COMMAND)
    notes = [line for line in text.splitlines() if line.startswith("**Note**: the trials of")]
    assert notes == [
        "**Note**: the trials of s/SST-2/kd ran on 2 device kinds or precisions (cuda:NVIDIA H100 (bfloat16) × 1, "
        "cuda:Tesla V100 (float16) × 1); compare its numbers with that in mind."
    ]  # nkd's trials all ran on one kind: no note
