"""harness.report.statistics: expected maximum vs enumeration, Holm, paired tests, bootstrap metrics, baselines."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from harness.report.statistics import (
    PairedBootstrap,
    PairedT,
    expected_max,
    expected_max_curve,
    holm,
    majority_predictions,
    paired_bootstrap,
    paired_t,
    resampled_metric,
)
from harness.spec.metrics import _correlation, compute_metrics
from harness.spec.tasks import get_task

GRID = [0.70, 0.72, 0.72, 0.75, 0.68, 0.75]  # six grid scores with ties


# --------------------------------------------------------------------------- expected maximum


@pytest.mark.parametrize("n", range(1, len(GRID) + 1))
def test_expected_max_without_replacement_matches_enumeration(n):
    maxima = np.array([max(combo) for combo in itertools.combinations(GRID, n)])
    mean, sd = expected_max(GRID, n)
    assert mean == pytest.approx(maxima.mean(), abs=1e-12)
    assert sd == pytest.approx(maxima.std(), abs=1e-9)


@pytest.mark.parametrize("n", range(1, len(GRID) + 1))
def test_expected_max_with_replacement_matches_enumeration(n):
    draws = np.array(list(itertools.product(range(len(GRID)), repeat=n)))
    maxima = np.asarray(GRID)[draws].max(axis=1)
    mean, sd = expected_max(GRID, n, replace=True)
    assert mean == pytest.approx(maxima.mean(), abs=1e-12)
    assert sd == pytest.approx(maxima.std(), abs=1e-9)


def test_expected_max_edges():
    assert expected_max(GRID, 1) == pytest.approx((np.mean(GRID), np.std(GRID)))
    assert expected_max(GRID, 1, replace=True) == pytest.approx((np.mean(GRID), np.std(GRID)))
    assert expected_max(GRID, len(GRID)) == (max(GRID), 0.0)
    assert expected_max(GRID, 100) == (max(GRID), 0.0)
    # With replacement the whole grid is not guaranteed to be hit, only approached.
    mean, sd = expected_max(GRID, len(GRID), replace=True)
    assert mean < max(GRID) and sd > 0
    assert expected_max([0.5], 3) == (0.5, 0.0)


def test_expected_max_curve_is_monotone_and_matches_pointwise():
    ns = list(range(1, 9))
    for replace in (False, True):
        means, sds = expected_max_curve(GRID, ns, replace=replace)
        assert means.shape == sds.shape == (len(ns),)
        assert np.all(np.diff(means) >= -1e-12)
        assert (means[2], sds[2]) == pytest.approx(expected_max(GRID, ns[2], replace=replace))


def test_expected_max_is_numerically_stable_for_large_grids():
    values = np.random.default_rng(0).normal(0.8, 0.02, size=400)
    for replace in (False, True):
        means, sds = expected_max_curve(values, [1, 2, 50, 200, 399, 10**6], replace=replace)
        assert np.all(np.isfinite(means)) and np.all(np.isfinite(sds)) and np.all(sds >= 0)
        assert np.all(np.diff(means) >= -1e-12)
        assert values.min() <= means.min() and means.max() <= values.max() + 1e-12
        assert means[0] == pytest.approx(values.mean())
    assert expected_max(values, 10**6, replace=True)[0] == pytest.approx(values.max(), abs=1e-12)


@pytest.mark.parametrize(
    "values, n, word", [([], 1, "empty"), (GRID, 0, "n must"), (GRID, 1.5, "n must"), ([0.1, math.nan], 1, "finite")]
)
def test_expected_max_rejects_bad_input(values, n, word):
    with pytest.raises(ValueError, match=word):
        expected_max(values, n)


# --------------------------------------------------------------------------- Holm


def test_holm_matches_hand_computation():
    # Sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → max(0.06, 0.04) = 0.06 (monotone).
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02], rtol=1e-12)
    np.testing.assert_allclose(holm([0.3, 0.6, 0.5]), [0.9, 1.0, 1.0])  # capped at 1
    np.testing.assert_allclose(holm([0.2]), [0.2])


def test_holm_passes_nan_through_without_counting_it():
    adjusted = holm([0.01, math.nan, 0.04, 0.03, 0.005, math.nan])
    assert np.isnan(adjusted[1]) and np.isnan(adjusted[5])
    np.testing.assert_allclose(adjusted[[0, 2, 3, 4]], [0.03, 0.06, 0.06, 0.02], rtol=1e-12)
    assert np.all(np.isnan(holm([math.nan, math.nan])))
    with pytest.raises(ValueError, match="0, 1"):
        holm([0.5, 1.5])


# --------------------------------------------------------------------------- paired t-test


def test_paired_t_matches_scipy_on_common_seeds():
    a = {1: 0.81, 2: 0.84, 3: 0.80, 4: 0.86, 7: 0.99}
    b = {1: 0.79, 2: 0.83, 3: 0.80, 4: 0.82, 9: 0.10}
    result = paired_t(a, b)
    x, y = [0.81, 0.84, 0.80, 0.86], [0.79, 0.83, 0.80, 0.82]
    reference = stats.ttest_rel(x, y)
    interval = reference.confidence_interval(0.95)
    assert isinstance(result, PairedT) and result.n == 4
    assert result.delta == pytest.approx(np.mean(np.subtract(x, y)))
    assert (result.t, result.p) == pytest.approx((reference.statistic, reference.pvalue))
    assert (result.low, result.high) == pytest.approx((interval.low, interval.high))
    assert result.low < result.delta < result.high


def test_pairing_removes_the_shared_seed_effect():
    seed_effect = [0.00, 0.05, -0.04, 0.08, -0.06, 0.03]
    gain = [0.010, 0.012, 0.009, 0.011, 0.008, 0.010]
    b = {seed: 0.80 + effect for seed, effect in enumerate(seed_effect)}
    a = {seed: b[seed] + gain[seed] for seed in b}
    welch = stats.ttest_ind(list(a.values()), list(b.values()), equal_var=False)
    paired = paired_t(a, b)
    assert welch.pvalue > 0.5  # the seed effect swamps a 1-point gain when runs are not paired
    assert paired.p < 1e-4 and paired.low > 0


def test_paired_t_undefined_cases_are_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = paired_t({1: 0.5}, {2: 0.5})
        single = paired_t({1: 0.6, 2: 0.7}, {1: 0.5})
        constant = paired_t({1: 0.75, 2: 0.5}, {1: 0.5, 2: 0.25})
    assert empty.n == 0 and math.isnan(empty.delta)
    assert single.n == 1 and single.delta == pytest.approx(0.1)
    assert constant.n == 2 and constant.delta == pytest.approx(0.25)
    for result in (empty, single, constant):
        assert all(math.isnan(v) for v in (result.low, result.high, result.t, result.p))


# --------------------------------------------------------------------------- vectorised metrics


def _rows(rng, n, b=6):
    """A few bootstrap index rows, plus the identity row."""
    return np.vstack([np.arange(n), rng.integers(0, n, size=(b, n))])


SKLEARN = {
    "accuracy": lambda y, p: accuracy_score(y, p),
    "f1": lambda y, p: f1_score(y, p, pos_label=1, zero_division=0.0),
    "mcc": lambda y, p: matthews_corrcoef(y, p),
}


@pytest.mark.parametrize("metric", ["accuracy", "f1", "mcc"])
def test_class_metrics_match_sklearn_row_by_row(metric):
    rng = np.random.default_rng(1)
    n = 40
    labels = rng.integers(0, 2, n)
    predictions = np.where(rng.random(n) < 0.7, labels, 1 - labels)
    index = _rows(rng, n)
    got = resampled_metric(metric, predictions, labels, index)
    expected = [SKLEARN[metric](labels[row], predictions[row]) for row in index]
    assert got.shape == (len(index),)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_three_class_mcc_and_accuracy_match_sklearn():
    rng = np.random.default_rng(2)
    n = 60
    labels = rng.integers(0, 3, n)
    predictions = np.where(rng.random(n) < 0.6, labels, rng.integers(0, 3, n))
    index = _rows(rng, n)
    for metric in ("mcc", "accuracy"):
        expected = [SKLEARN[metric](labels[row], predictions[row]) for row in index]
        np.testing.assert_allclose(resampled_metric(metric, predictions, labels, index), expected, atol=1e-12)
    # A class missing from the predictions (sklearn relabels; the zero row/column must not change the value).
    squashed = np.where(predictions == 2, 1, predictions)
    expected = [matthews_corrcoef(labels[row], squashed[row]) for row in index]
    np.testing.assert_allclose(resampled_metric("mcc", squashed, labels, index), expected, atol=1e-12)


def test_degenerate_class_metrics_follow_sklearn():
    labels = np.array([0, 1, 1, 0, 1, 2])
    constant = np.ones(6, dtype=int)
    index = np.vstack([np.arange(6), [0, 3, 0, 3, 0, 3], [1, 2, 4, 1, 2, 4]])
    np.testing.assert_array_equal(resampled_metric("mcc", constant, labels, index), 0.0)
    assert matthews_corrcoef(labels, constant) == 0.0
    # Only negatives in a resample and no positive prediction: F1 is 0/0 → 0.
    f1 = resampled_metric("f1", np.zeros(6, dtype=int), np.array([0, 0, 0, 0, 1, 1]), index)
    np.testing.assert_array_equal(f1, 0.0)


@pytest.mark.parametrize("metric", ["pearson", "spearman"])
def test_correlations_match_scipy_row_by_row_with_ties_and_constants(metric):
    rng = np.random.default_rng(3)
    n = 30
    gold = np.round(rng.uniform(0, 5, n) * 2) / 2  # STS-B-like labels in steps of 0.5: many ties
    scores = np.round(gold + rng.normal(0, 1, n), 1)  # rounded: ties in the predictions too
    index = _rows(rng, n)
    function = stats.pearsonr if metric == "pearson" else stats.spearmanr
    expected = [function(scores[row], gold[row]).statistic for row in index]
    got = resampled_metric(metric, scores, gold, index)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    # Rows shorter than the number of distinct values (spearman ranks by sorting there, not by counting).
    short = rng.integers(0, n, size=(8, 5))
    expected = [_correlation(metric, scores[row], gold[row]) for row in short]
    np.testing.assert_allclose(resampled_metric(metric, scores, gold, short), expected, rtol=1e-10, atol=1e-12)
    # Constant input (a collapsed regressor, or a resample of one example) → 0.0, as harness.spec.metrics._correlation.
    constant_rows = np.array([[4] * n, list(range(n))])
    flat = np.full(n, 2.5)
    assert list(resampled_metric(metric, flat, gold, constant_rows)) == [0.0, 0.0]
    assert resampled_metric(metric, scores, gold, constant_rows)[0] == 0.0
    assert resampled_metric(metric, scores, gold, constant_rows)[1] == pytest.approx(_correlation(metric, scores, gold))


@pytest.mark.parametrize("metric", ["pearson", "spearman"])
def test_correlation_of_a_resample_with_nan_is_zero_like_glue(metric):
    gold = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    scores = np.array([0.1, 0.9, math.nan, 3.2, 3.9, 5.5])
    index = np.array([[0, 1, 2, 3, 4, 5], [0, 1, 3, 4, 5, 5]])
    got = resampled_metric(metric, scores, gold, index)
    assert got[0] == 0.0 == _correlation(metric, scores, gold)
    assert got[1] == pytest.approx(_correlation(metric, scores[index[1]], gold[index[1]]))
    assert got[1] > 0.9


@pytest.mark.parametrize("task_name", ["CoLA", "MRPC", "MNLI", "STS-B"])
def test_identity_resample_equals_compute_metrics(task_name):
    task = get_task(task_name)
    rng = np.random.default_rng(4)
    n = 50
    if task.is_regression:
        labels = rng.uniform(0, 5, n)
        predictions = labels + rng.normal(0, 1, n)
        model_output = predictions
    else:
        labels = rng.integers(0, task.num_labels, n)
        model_output = rng.normal(size=(n, task.num_labels)) + 2 * np.eye(task.num_labels)[labels]
        predictions = model_output.argmax(axis=1)
    reference = compute_metrics(task, model_output, labels)
    for metric in task.metrics:
        got = resampled_metric(metric, predictions, labels, np.arange(n)[None, :])
        assert got[0] == pytest.approx(reference[metric], abs=1e-12)


def test_resampled_metric_rejects_bad_input():
    labels = np.array([0, 1, 1])
    with pytest.raises(ValueError, match="unknown metric"):
        resampled_metric("auc", labels, labels, np.zeros((1, 3), dtype=int))
    with pytest.raises(ValueError, match="index"):
        resampled_metric("accuracy", labels, labels, np.array([[0, 3, 1]]))
    with pytest.raises(ValueError, match="argmax"):
        resampled_metric("accuracy", np.zeros((3, 2)), labels, np.zeros((1, 3), dtype=int))


# --------------------------------------------------------------------------- paired bootstrap


def _systems(n=300, good=0.85, bad=0.70, seed=5):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    a = np.where(rng.random(n) < good, labels, 1 - labels)
    b = np.where(rng.random(n) < bad, labels, 1 - labels)
    return a, b, labels


def test_paired_bootstrap_is_deterministic_for_a_seed():
    a, b, labels = _systems()
    first = paired_bootstrap("accuracy", a, b, labels, resamples=200, seed=3)
    assert isinstance(first, PairedBootstrap) and first.resamples == 200
    assert paired_bootstrap("accuracy", a, b, labels, resamples=200, seed=3) == first
    assert paired_bootstrap("accuracy", a, b, labels, resamples=200, seed=4) != first


def test_paired_bootstrap_identical_systems():
    a, _, labels = _systems()
    result = paired_bootstrap("f1", a, a.copy(), labels, resamples=200)
    assert (result.delta, result.low, result.high, result.p) == (0.0, 0.0, 0.0, 1.0)


@pytest.mark.parametrize("metric", ["accuracy", "f1", "mcc"])
def test_paired_bootstrap_detects_a_clearly_better_system(metric):
    a, b, labels = _systems()
    result = paired_bootstrap(metric, a, b, labels, resamples=1000, seed=0)
    task = get_task("CoLA" if metric == "mcc" else "MRPC")
    expected = compute_metrics(task, np.eye(2)[a], labels)[metric] - compute_metrics(task, np.eye(2)[b], labels)[metric]
    assert result.delta == pytest.approx(expected, abs=1e-12)
    assert result.delta > 0 and 0 < result.low <= result.delta <= result.high
    assert result.p < 0.01


def test_paired_bootstrap_close_systems_are_not_significant():
    a, b, labels = _systems(good=0.80, bad=0.80, seed=6)
    result = paired_bootstrap("accuracy", a, b, labels, resamples=1000)
    assert result.low <= result.delta <= result.high
    assert result.low < 0 < result.high and result.p > 0.05


def test_paired_bootstrap_rejects_bad_input():
    a, b, labels = _systems(n=10)
    with pytest.raises(ValueError, match="lengths"):
        paired_bootstrap("accuracy", a, b[:-1], labels)
    with pytest.raises(ValueError, match="resamples"):
        paired_bootstrap("accuracy", a, b, labels, resamples=0)


# --------------------------------------------------------------------------- majority baseline


def test_majority_baseline_on_mrpc_like_labels():
    labels = np.array([1] * 68 + [0] * 32)
    np.random.default_rng(7).shuffle(labels)
    predictions = majority_predictions(labels, regression=False)
    np.testing.assert_array_equal(predictions, 1)
    task = get_task("MRPC")
    metrics = compute_metrics(task, np.eye(task.num_labels)[predictions], labels)
    p = 0.68
    assert metrics["f1"] == pytest.approx(2 * p / (1 + p))
    assert metrics["accuracy"] == pytest.approx(p)
    assert compute_metrics(get_task("CoLA"), np.eye(2)[predictions], labels)["mcc"] == 0.0
    index = np.arange(len(labels))[None, :]
    assert resampled_metric("f1", predictions, labels, index)[0] == pytest.approx(2 * p / (1 + p))


def test_majority_baseline_ties_and_regression():
    np.testing.assert_array_equal(majority_predictions(np.array([2, 0, 2, 0, 1]), regression=False), [0] * 5)
    gold = np.array([0.0, 1.5, 4.0, 2.5])
    predictions = majority_predictions(gold, regression=True)
    np.testing.assert_allclose(predictions, 2.0)
    assert compute_metrics(get_task("STS-B"), predictions, gold) == {"pearson": 0.0, "spearman": 0.0}
    with pytest.raises(ValueError, match="empty"):
        majority_predictions(np.array([]), regression=False)


def test_expected_selected_ranks_by_keys_and_reports_other_values():
    from harness.report.statistics import expected_selected

    keys = [0.70, 0.72, 0.71, 0.69, 0.74]
    reported = [0.60, 0.68, 0.66, 0.70, 0.64]
    for n in range(1, 6):
        chosen = [reported[max(c, key=lambda i: keys[i])] for c in itertools.combinations(range(5), n)]
        mean, sd = expected_selected(keys, reported, n)
        assert mean == pytest.approx(np.mean(chosen), abs=1e-12)
        assert sd == pytest.approx(np.std(chosen), abs=1e-12)
        assert expected_selected(keys, keys, n) == pytest.approx(expected_max(keys, n), abs=1e-12)


def test_expected_selected_curve_is_expected_selected_at_every_n():
    from harness.report.statistics import expected_selected, expected_selected_curve

    rng = np.random.default_rng(3)
    keys, reported = rng.normal(size=9), rng.normal(size=9)
    means, sds = expected_selected_curve(keys, reported)
    for n in range(1, 10):
        assert (means[n - 1], sds[n - 1]) == pytest.approx(expected_selected(keys, reported, n), abs=1e-12)
