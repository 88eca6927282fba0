"""Owns the statistics of an honest comparison: what a method is worth for its tuning budget, and whether a gap is real.

Expected maximum validation performance of a random search over a grid (Dodge et al. 2019), Holm's correction of
a family of p-values, the paired t-test over shared seeds, a vectorised paired bootstrap over dev examples, and
the majority-class baseline. Pure numpy + scipy; metric conventions are those of
:func:`harness.spec.metrics.compute_metrics`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy import stats
from scipy.special import gammaln

ALPHA = 0.05
"""Two-sided level of the intervals: 95 %."""

METRICS = ("accuracy", "f1", "mcc", "pearson", "spearman")
"""Metrics :func:`resampled_metric` implements: the first three on class ids, the last two on float scores."""

CLASS_METRICS = frozenset({"accuracy", "f1", "mcc"})

_CHUNK_ELEMENTS = 1 << 22
"""Resampled rows are scored in blocks of about this many gathered elements, to bound the working memory."""


# --------------------------------------------------------------------------- expected maximum (Dodge et al.)


def _as_float_array(values: Iterable[float]) -> np.ndarray:
    """An array or any iterable (list, generator, dict values) as a float64 array."""
    return np.asarray(values if isinstance(values, np.ndarray) else list(values), dtype=np.float64)


def _finite_sorted(values: Iterable[float]) -> np.ndarray:
    """``values`` as a sorted 1-D float64 array; ValueError if empty or non-finite (drop failed trials first)."""
    array = np.sort(_as_float_array(values).reshape(-1))
    if array.size == 0:
        raise ValueError("expected_max: values is empty")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"expected_max: values contains non-finite entries ({array[~np.isfinite(array)][:3]})")
    return array


def _max_distribution(size: int, n: int, replace: bool) -> np.ndarray:
    """P(the maximum of n draws is the i-th smallest of ``size`` points), for i = 1..size: shape [size].

    Draws pick positions uniformly, so ties in the values need no special care. With replacement
    (Dodge et al.): (i/N)^n − ((i−1)/N)^n, written as (i/N)^n · (1 − (1 − 1/i)^n) with expm1/log1p so that the
    difference does not cancel. Without replacement: C(i−1, n−1) / C(N, n) for i ≥ n, from log-gamma.
    Renormalised to sum to 1 (it does up to rounding).
    """
    i = np.arange(1, size + 1, dtype=np.float64)
    if replace:
        with np.errstate(divide="ignore"):
            top = np.exp(n * np.log(i / size))
            step = -np.expm1(n * np.log1p(-1.0 / i))  # i = 1: log1p(-1) = -inf, step = 1
        probability = top * step
    else:
        probability = np.zeros(size)
        if n >= size:
            probability[-1] = 1.0
        else:
            k = i[n - 1 :]  # i >= n
            log_c = gammaln(k) - gammaln(n) - gammaln(k - n + 1)  # log C(i-1, n-1)
            log_total = gammaln(size + 1) - gammaln(n + 1) - gammaln(size - n + 1)  # log C(N, n)
            probability[n - 1 :] = np.exp(log_c - log_total)
    return probability / probability.sum()


def _check_n(n: int) -> int:
    """``n`` as an int; ValueError unless it is an integer ≥ 1."""
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"expected_max: n must be an integer >= 1, got {n!r}")
    return int(n)


def expected_max(values: Iterable[float], n: int, replace: bool = False) -> tuple[float, float]:
    """Expected maximum validation score of ``n`` trials drawn at random from a finite grid, and its sd.

    ``values``: the score of every point of the grid (any shape, flattened; N of them, finite). Closed form of
    Dodge et al. 2019 ("Show Your Work"), exact for the finite set. ``replace=False`` (default) draws ``n``
    distinct points, as a random search over the grid that never repeats a point; for n ≥ N that is the whole
    grid, so the result is (max, 0). ``replace=True`` is Dodge et al.'s sampling with replacement. The sd is
    the population sd of the maximum, sqrt(E[max²] − E[max]²), computed as a central moment and clipped at 0.
    Numerically fine for N up to thousands and any n. Returns (mean, sd) as floats.
    """
    sorted_values = _finite_sorted(values)
    n = _check_n(n)
    if not replace and n >= sorted_values.size:
        return float(sorted_values[-1]), 0.0
    probability = _max_distribution(sorted_values.size, n, replace)
    mean = float(np.dot(probability, sorted_values))
    variance = float(np.dot(probability, (sorted_values - mean) ** 2))
    return mean, math.sqrt(max(variance, 0.0))


def expected_max_curve(
    values: Iterable[float], ns: Iterable[int], replace: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`expected_max` for every budget in ``ns``: (means, sds), two float64 arrays of shape [len(ns)]."""
    sorted_values = _finite_sorted(values)
    results = [expected_max(sorted_values, n, replace) for n in ns]
    means = np.array([mean for mean, _ in results], dtype=np.float64)
    sds = np.array([sd for _, sd in results], dtype=np.float64)
    return means, sds


def _selection_order(keys: np.ndarray) -> np.ndarray:
    """Positions sorted from the least to the most preferred trial: by key, and among equal keys the earlier
    position is preferred (ranked last); passed in :func:`harness.report.frame.grid_order`, this is the one
    tie-break of every selection in the report."""
    return np.lexsort((-np.arange(keys.size), keys))


def expected_selected(
    keys: Iterable[float], reported: Iterable[float], n: int, replace: bool = False
) -> tuple[float, float]:
    """Expected *reported* score of the trial chosen (by ``keys``) among ``n`` drawn at random, and its sd.

    The grid's trials are ranked by their selection score ``keys`` and each reports ``reported`` (under
    ``selection: holdout``: ranked by the holdout score, reporting dev at the chosen epoch). The chosen trial
    of n draws is the top-ranked drawn one, with the probabilities of :func:`expected_max`; with
    ``keys == reported`` this is :func:`expected_max`. Ties in ``keys``: the *earlier* position wins (the
    tie-break of :func:`harness.report.frame.best_trials`: pass trials in :func:`harness.report.frame.grid_order`).
    """
    keys, reported = _as_float_array(keys).reshape(-1), _as_float_array(reported).reshape(-1)
    if keys.shape != reported.shape:
        raise ValueError(f"expected_selected: {keys.size} keys but {reported.size} reported values")
    _finite_sorted(keys), _finite_sorted(reported)
    n = _check_n(n)
    ordered = reported[_selection_order(keys)]
    probability = _max_distribution(ordered.size, n, replace)
    mean = float(np.dot(probability, ordered))
    return mean, math.sqrt(max(float(np.dot(probability, (ordered - mean) ** 2)), 0.0))


def expected_selected_curve(
    keys: Iterable[float], reported: Iterable[float], replace: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`expected_selected` for every budget n = 1 … N (N = number of trials): (means, sds), shape [N]."""
    keys, reported = _as_float_array(keys).reshape(-1), _as_float_array(reported).reshape(-1)
    if keys.shape != reported.shape:
        raise ValueError(f"expected_selected: {keys.size} keys but {reported.size} reported values")
    _finite_sorted(keys), _finite_sorted(reported)
    ordered = reported[_selection_order(keys)]
    probability = np.stack([_max_distribution(ordered.size, n, replace) for n in range(1, ordered.size + 1)])
    means = probability @ ordered
    variance = (probability * (ordered[None, :] - means[:, None]) ** 2).sum(axis=1)
    return means, np.sqrt(np.clip(variance, 0.0, None))


# --------------------------------------------------------------------------- multiple comparisons


def holm(pvalues: Iterable[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values, in input order, as float64 of the input's shape.

    Step-down: with the m non-NaN p-values sorted ascending, adjusted_(k) = max_{j ≤ k} min(1, (m − j + 1) p_(j)),
    so the adjusted values are monotone in the raw ones and capped at 1; reject where adjusted < α controls the
    family-wise error rate at α. NaN entries (comparisons that could not be made) pass through as NaN and do not
    count in m. ValueError for p-values outside [0, 1].
    """
    array = _as_float_array(pvalues)
    flat = array.reshape(-1)
    present = ~np.isnan(flat)
    if np.any((flat[present] < 0) | (flat[present] > 1)):
        raise ValueError(f"holm: p-values must lie in [0, 1], got {flat[present & ((flat < 0) | (flat > 1))][:3]}")
    adjusted = np.full(flat.shape, np.nan)
    raw = flat[present]
    m = raw.size
    if m:
        order = np.argsort(raw, kind="stable")
        scaled = np.minimum(1.0, (m - np.arange(m)) * raw[order])
        values = np.empty(m)
        values[order] = np.maximum.accumulate(scaled)
        adjusted[present] = values
    return adjusted.reshape(array.shape)


def benjamini_hochberg(pvalues: Iterable[float]) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (false-discovery rate), in input order, NaN passing through.

    Step-up: with the m non-NaN p-values sorted ascending, adjusted_(k) = min_{j ≥ k} min(1, m p_(j) / j).
    Rejecting where adjusted < α controls the expected share of false calls at α (for independent or positively
    dependent tests); a second column beside :func:`holm`, never the one a verdict uses.
    """
    array = _as_float_array(pvalues)
    flat = array.reshape(-1)
    present = ~np.isnan(flat)
    if np.any((flat[present] < 0) | (flat[present] > 1)):
        raise ValueError("benjamini_hochberg: p-values must lie in [0, 1]")
    adjusted = np.full(flat.shape, np.nan)
    raw = flat[present]
    m = raw.size
    if m:
        order = np.argsort(raw, kind="stable")
        scaled = np.minimum(1.0, raw[order] * m / np.arange(1, m + 1))
        values = np.empty(m)
        values[order] = np.minimum.accumulate(scaled[::-1])[::-1]
        adjusted[present] = values
    return adjusted.reshape(array.shape)


# --------------------------------------------------------------------------- power of the seed test


def detectable_delta(sd: float, n: int, m: int, alpha: float = ALPHA) -> float:
    """The smallest |mean difference| a two-sided paired t-test over ``n`` seeds rejects at Holm's first step
    (level α/m, the most lenient step) when the per-seed differences have sd ``sd``: t_{1−α/(2m), n−1}·sd/√n.

    Every later Holm step needs more. NaN for n < 2 or a non-finite sd.
    """
    if n < 2 or not math.isfinite(sd) or m < 1:
        return math.nan
    return float(stats.t.ppf(1 - alpha / (2 * m), n - 1)) * sd / math.sqrt(n)


def seeds_needed(delta: float, sd: float, m: int, alpha: float = ALPHA, limit: int = 10_000) -> int | None:
    """The fewest seeds n ≥ 2 for which :func:`detectable_delta` is at most ``delta`` (a mean difference of
    exactly ``delta`` with that sd then reaches Holm's first step); None beyond ``limit`` or for a bad sd."""
    if not math.isfinite(sd) or sd < 0 or delta <= 0:
        return None
    if detectable_delta(sd, limit, m, alpha) > delta:
        return None
    low, high = 1, limit  # detectable_delta falls with n: bisect for the first n that reaches delta
    while high - low > 1:
        middle = (low + high) // 2
        if detectable_delta(sd, middle, m, alpha) <= delta:
            high = middle
        else:
            low = middle
    return high


# --------------------------------------------------------------------------- paired t-test over seeds


@dataclass(frozen=True)
class PairedT:
    """Paired t-test of a − b over the seeds both systems were run with.

    ``n``: number of common seeds; ``delta``: mean of the per-seed differences a − b (NaN when n = 0);
    ``low``/``high``: 95 % t-interval of that mean; ``t``/``p``: statistic and two-sided p-value. The last four
    are NaN when n < 2 or the differences have zero variance (the test is undefined there).
    """

    n: int
    delta: float
    low: float
    high: float
    t: float
    p: float


def paired_t(a: Mapping[int, float], b: Mapping[int, float]) -> PairedT:
    """Paired t-test (``scipy.stats.ttest_rel``, two-sided) of two systems over their common seeds.

    ``a``, ``b``: seed → score. Seeds present in only one of them are dropped: pairing is what removes the
    seed effect (data order, initialisation) shared by both runs of a seed, which an unpaired test counts as
    noise. Undefined cases (see :class:`PairedT`) give NaN without raising or warning.
    """
    seeds = sorted(set(a) & set(b))
    n = len(seeds)
    x = np.array([a[s] for s in seeds], dtype=np.float64)
    y = np.array([b[s] for s in seeds], dtype=np.float64)
    differences = x - y
    delta = float(differences.mean()) if n else math.nan
    if n < 2 or np.all(differences == differences[0]):
        return PairedT(n, delta, math.nan, math.nan, math.nan, math.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = stats.ttest_rel(x, y)
        sem = float(np.std(differences, ddof=1)) / math.sqrt(n)
        half = float(stats.t.ppf(1 - ALPHA / 2, n - 1)) * sem
    return PairedT(n, delta, delta - half, delta + half, float(result.statistic), float(result.pvalue))


# --------------------------------------------------------------------------- bootstrap over dev examples


def _class_ids(name: str, values: np.ndarray) -> np.ndarray:
    """Non-negative integer class ids as int64; ValueError for logits, negative or non-integral values."""
    if values.ndim != 1:
        raise ValueError(f"{name}: expected class ids of shape [n], got {values.shape} (take the argmax of logits)")
    ids = values.astype(np.int64)
    if values.size and (np.any(ids != values) or ids.min() < 0):
        raise ValueError(f"{name}: class ids must be non-negative integers")
    return ids


def _row_correlation(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row pair of x, y [B, m]: shape [B]; 0.0 where a row is constant or m < 2."""
    if x.shape[1] < 2:
        return np.zeros(x.shape[0])
    defined = (np.ptp(x, axis=1) > 0) & (np.ptp(y, axis=1) > 0)
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.einsum("ij,ij->i", xc, yc) / np.sqrt(np.einsum("ij,ij->i", xc, xc) * np.einsum("ij,ij->i", yc, yc))
    r = np.clip(r, -1.0, 1.0)
    return np.where(defined & np.isfinite(r), r, 0.0)


def _mcc(pred: np.ndarray, gold: np.ndarray, classes: int) -> np.ndarray:
    """sklearn's multiclass Matthews correlation per row of pred, gold [B, m] (ids < classes): shape [B].

    From the per-row confusion matrices, counted with one bincount on row·K² + true·K + pred. Classes absent
    from a row add zero to every term, so K = max id + 1 equals sklearn's relabelling. 0.0 where undefined.
    """
    rows, m = pred.shape
    k = classes
    cells = (np.arange(rows)[:, None] * (k * k) + gold * k + pred).reshape(-1)
    confusion = np.bincount(cells, minlength=rows * k * k).reshape(rows, k, k).astype(np.float64)
    t_sum = confusion.sum(axis=2)  # true-class counts [B, K]
    p_sum = confusion.sum(axis=1)  # predicted-class counts [B, K]
    n_correct = np.trace(confusion, axis1=1, axis2=2)
    n_samples = float(m)
    cov_ytyp = n_correct * n_samples - np.einsum("ij,ij->i", t_sum, p_sum)
    cov_ypyp = n_samples**2 - np.einsum("ij,ij->i", p_sum, p_sum)
    cov_ytyt = n_samples**2 - np.einsum("ij,ij->i", t_sum, t_sum)
    product = cov_ypyp * cov_ytyt
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(product == 0, 0.0, cov_ytyp / np.sqrt(product))


def _row_ranks(ids: np.ndarray, distinct: int) -> np.ndarray:
    """Average ranks (1-based, ties share the mean rank, as ``scipy.stats.rankdata``) within each row: [B, m].

    ``ids`` [B, m] are the positions of the values in their sorted distinct values (< ``distinct``), so ranks come
    from per-row counts of each value in O(B·(m + distinct)), without sorting every resample: a value counted c
    times with b smaller ones has ranks b + 1 … b + c, whose mean is b + (c + 1) / 2.
    """
    rows = ids.shape[0]
    counts = np.bincount((np.arange(rows)[:, None] * distinct + ids).reshape(-1), minlength=rows * distinct)
    counts = counts.reshape(rows, distinct)
    average = (np.cumsum(counts, axis=1) - counts) + (counts + 1) / 2
    return np.take_along_axis(average, ids, axis=1)


def _score_rows(metric: str, pred: np.ndarray, gold: np.ndarray, size: int) -> np.ndarray:
    """``metric`` of each row of gathered predictions and labels [B, m]: shape [B].

    Class ids for accuracy/f1/mcc and ids of distinct values for spearman, both < ``size``; scores for pearson
    and for spearman with ``size = 0``.
    """
    if metric == "accuracy":
        return (pred == gold).mean(axis=1)
    if metric == "f1":
        positive, relevant = pred == 1, gold == 1
        tp = np.count_nonzero(positive & relevant, axis=1)
        wrong = np.count_nonzero(positive != relevant, axis=1)  # fp + fn
        denominator = 2 * tp + wrong
        return np.where(denominator == 0, 0.0, 2 * tp / np.maximum(denominator, 1))
    if metric == "mcc":
        return _mcc(pred, gold, size)
    if metric == "spearman" and size:  # ids of distinct values (see resampled_metric): rank by counting
        pred, gold = _row_ranks(pred, size), _row_ranks(gold, size)
    elif metric == "spearman":  # the values themselves
        pred, gold = stats.rankdata(pred, axis=1), stats.rankdata(gold, axis=1)
    return _row_correlation(pred, gold)


def resampled_metric(metric: str, predictions: np.ndarray, labels: np.ndarray, index: np.ndarray) -> np.ndarray:
    """A GLUE metric on every resample of a dev set, vectorised over resamples.

    ``predictions``, ``labels``: shape [n]; class ids (int) for accuracy/f1/mcc, float scores and gold scores
    for pearson/spearman. ``index``: int [B, m] of example indices in [0, n), one resample per row (m = n for a
    bootstrap). Returns float64 [B]. Conventions equal :func:`harness.spec.metrics.compute_metrics` (sklearn/scipy):
    f1 is binary F1 of class 1 with 0/0 → 0; mcc is sklearn's multiclass Matthews correlation, 0 where
    undefined (e.g. constant predictions); pearson/spearman are 0.0 where undefined (a constant row, m < 2),
    spearman with average ranks for ties (counted per row, not sorted) and 0.0 for a row with a NaN, as scipy's
    NaN is reported. Rows are scored in blocks of ~4M gathered values to bound memory.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r} (allowed: {', '.join(METRICS)})")
    predictions, labels, index = np.asarray(predictions), np.asarray(labels), np.asarray(index)
    if labels.ndim != 1 or predictions.shape[:1] != labels.shape or labels.size == 0:
        raise ValueError(f"{metric}: predictions {predictions.shape} and labels {labels.shape} must both be [n], n > 0")
    if index.ndim != 2 or index.shape[1] == 0 or not np.issubdtype(index.dtype, np.integer):
        raise ValueError(f"{metric}: index must be an int array [B, m] with m > 0, got {index.dtype} {index.shape}")
    if index.size and (index.min() < 0 or index.max() >= labels.size):
        raise ValueError(f"{metric}: index entries must lie in [0, {labels.size})")
    size = 0  # number of distinct ids: classes for accuracy/f1/mcc, distinct values for spearman (0: values)
    missing = np.zeros(labels.size, dtype=bool)
    if metric in CLASS_METRICS:
        predictions, labels = _class_ids("predictions", predictions), _class_ids("labels", labels)
        size = int(max(predictions.max(), labels.max())) + 1
    else:
        if predictions.ndim != 1:
            raise ValueError(f"{metric}: expected scores of shape [n], got {predictions.shape}")
        predictions, labels = predictions.astype(np.float64), labels.astype(np.float64)
        if metric == "spearman":
            missing = np.isnan(predictions) | np.isnan(labels)  # such rows are set to 0 below
            ids = [np.unique(v, return_inverse=True)[1].reshape(-1) for v in (predictions, labels)]
            distinct = int(max(ids[0].max(), ids[1].max())) + 1
            if distinct <= index.shape[1]:  # ranks by counting pay off; short rows over many values are sorted
                (predictions, labels), size = ids, distinct
    block = max(1, _CHUNK_ELEMENTS // (index.shape[1] + size))
    out = np.empty(index.shape[0], dtype=np.float64)
    for start in range(0, index.shape[0], block):
        rows = index[start : start + block]
        out[start : start + block] = _score_rows(metric, predictions[rows], labels[rows], size)
    if missing.any():  # scipy's correlation of an input with NaN is NaN, which harness.spec.tasks reports as 0.0
        out[missing[index].any(axis=1)] = 0.0
    return out


@dataclass(frozen=True)
class PairedBootstrap:
    """Paired BCa bootstrap of metric(a) − metric(b) over dev examples.

    ``delta``: the difference on the full dev set; ``low``/``high``: the 95 % BCa interval; ``p``: the two-sided
    p-value of the same BCa construction (the largest level at which its interval still reaches 0, so the
    interval excludes 0 exactly when p < 0.05, up to the resamples' granularity); ``resamples``: B.
    """

    delta: float
    low: float
    high: float
    p: float
    resamples: int


JACKKNIFE_BLOCKS = 1000
"""BCa's acceleration comes from a jackknife: leave-one-out up to this many examples, else leave one of this
many contiguous blocks out (a delete-block jackknife; MNLI's 9,815 examples in blocks of ~10)."""


def bootstrap_resamples(m: int, floor: int = 1000) -> int:
    """B for a family of ``m`` bootstrap comparisons: max(floor, 50·m), so that the smallest p the BCa
    bootstrap can give (about 2/(B + 1)) stays below 0.05 after Holm over m (m · 2/(50m + 1) < 0.04)."""
    return max(int(floor), 50 * int(m))


def _jackknife(metric: str, pred_a: np.ndarray, pred_b: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The difference metric(a) − metric(b) with each block of examples left out (see JACKKNIFE_BLOCKS)."""
    n = len(labels)
    if n < 2:
        return np.zeros(1)
    blocks = np.array_split(np.arange(n), min(n, JACKKNIFE_BLOCKS))
    keep = np.ones((len(blocks), n), dtype=bool)
    for row, block in enumerate(blocks):
        keep[row, block] = False
    sizes = np.array([len(b) for b in blocks])
    out = np.empty(len(blocks))
    for size in np.unique(sizes):
        rows = np.flatnonzero(sizes == size)
        index = np.nonzero(keep[rows])[1].reshape(len(rows), n - size)
        out[rows] = resampled_metric(metric, pred_a, labels, index) - resampled_metric(metric, pred_b, labels, index)
    return out


def bca(delta: float, deltas: np.ndarray, jackknife: np.ndarray, alpha: float = ALPHA) -> tuple[float, float, float]:
    """BCa interval (Efron 1987) at level 1 − α and its two-sided p-value: (low, high, p).

    Bias z0 = Φ⁻¹(share of resamples below ``delta``, ties counting half); acceleration a from the jackknife
    values, a = Σ(θ̄ − θᵢ)³ / (6 (Σ(θ̄ − θᵢ)²)^{3/2}). The interval takes the resamples' quantiles at
    Φ(z0 + (z0 + z)/(1 − a(z0 + z))) for z = Φ⁻¹(α/2), Φ⁻¹(1 − α/2). The p-value inverts that map at 0: with
    F = the resamples' share below 0 (ties half, kept within [1/(B+1), B/(B+1)]), w = Φ⁻¹(F) − z0, the level at
    which an endpoint sits on 0 is Φ(w/(1 + a·w) − z0), and p is twice the smaller tail. All resamples equal
    (identical systems): (δ, δ, 1).
    """
    size = deltas.size
    if size == 0 or np.all(deltas == deltas[0]):
        return float(deltas[0]) if size else delta, float(deltas[0]) if size else delta, 1.0
    clip = (1 / (size + 1), size / (size + 1))
    below = (np.count_nonzero(deltas < delta) + 0.5 * np.count_nonzero(deltas == delta)) / size
    z0 = float(stats.norm.ppf(np.clip(below, *clip)))
    centred = jackknife.mean() - jackknife
    spread = float(np.sum(centred**2))
    a = float(np.sum(centred**3)) / (6 * spread**1.5) if spread > 0 else 0.0
    levels = []
    for z in stats.norm.ppf([alpha / 2, 1 - alpha / 2]):
        shifted = z0 + z
        levels.append(float(stats.norm.cdf(z0 + shifted / (1 - a * shifted))) if 1 - a * shifted > 0 else 1.0)
    low, high = np.quantile(deltas, np.clip(levels, 0.0, 1.0))
    zero = (np.count_nonzero(deltas < 0) + 0.5 * np.count_nonzero(deltas == 0)) / size
    w = float(stats.norm.ppf(np.clip(zero, *clip))) - z0
    level = float(stats.norm.cdf(w / (1 + a * w) - z0)) if 1 + a * w > 0 else (1.0 if w > 0 else 0.0)
    return float(low), float(high), float(min(1.0, 2 * min(level, 1 - level)))


def paired_bootstrap(
    metric: str, pred_a: np.ndarray, pred_b: np.ndarray, labels: np.ndarray, resamples: int = 1000, seed: int = 0
) -> PairedBootstrap:
    """Paired BCa bootstrap of two systems' predictions on the same dev set (shapes [n], as for resampled_metric).

    The same B = ``resamples`` index rows, ``np.random.default_rng(seed).integers(0, n, size=(B, n))``, score
    both systems, so the variation of the test set is shared and only the systems' disagreement counts. One
    bootstrap gives both the interval and the p-value (:func:`bca`; a vectorised BCa of our own, its
    acceleration from :func:`_jackknife`), so they cannot disagree. Any B ≥ 1 runs (tests use small B); reports
    size B by :func:`bootstrap_resamples`. Memory: the index is B·n int64. ValueError for lengths that differ
    or B < 1.
    """
    pred_a, pred_b, labels = np.asarray(pred_a), np.asarray(pred_b), np.asarray(labels)
    if not (len(pred_a) == len(pred_b) == len(labels)):
        raise ValueError(f"paired_bootstrap: lengths differ (a {len(pred_a)}, b {len(pred_b)}, labels {len(labels)})")
    if isinstance(resamples, bool) or int(resamples) != resamples or resamples < 1:
        raise ValueError(f"paired_bootstrap: resamples must be an integer >= 1, got {resamples!r}")
    resamples = int(resamples)
    n = len(labels)
    full = np.arange(n)[None, :]
    delta = float(resampled_metric(metric, pred_a, labels, full)[0] - resampled_metric(metric, pred_b, labels, full)[0])
    index = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    deltas = resampled_metric(metric, pred_a, labels, index) - resampled_metric(metric, pred_b, labels, index)
    low, high, p = bca(delta, deltas, _jackknife(metric, pred_a, pred_b, labels))
    return PairedBootstrap(delta, low, high, p, resamples)


# --------------------------------------------------------------------------- baselines


def majority_predictions(labels: np.ndarray, regression: bool) -> np.ndarray:
    """The "always predict the majority class" baseline for the set whose ``labels`` [n] are given.

    Classification: the most frequent class id (ties: the smallest id), int64 [n]. Regression: the mean label,
    float64 [n]; a constant prediction, so its Pearson and Spearman correlations are 0 by the convention of
    :func:`harness.spec.metrics.compute_metrics`. It is computed from the labels of the set it is scored on (the
    dev set), as GLUE papers report the majority baseline. ValueError for empty labels.
    """
    labels = np.asarray(labels).reshape(-1)
    if labels.size == 0:
        raise ValueError("majority_predictions: labels is empty")
    if regression:
        return np.full(labels.size, float(labels.astype(np.float64).mean()))
    ids = _class_ids("labels", labels)
    return np.full(labels.size, int(np.bincount(ids).argmax()), dtype=np.int64)
