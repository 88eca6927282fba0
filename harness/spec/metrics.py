"""GLUE metrics: every metric the leaderboard reports for a task, with scikit-learn and scipy."""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from harness.spec.tasks import TaskSpec

# --------------------------------------------------------------------------- metrics


def _correlation(kind: str, x: np.ndarray, y: np.ndarray) -> float:
    """Pearson or Spearman correlation, 0.0 where it is undefined.

    A constant input (a collapsed regressor), fewer than two rows or a non-finite
    coefficient has no defined correlation; scipy returns NaN with a warning. It is
    reported as 0.0, the value of "no correlation", so that such a trial ranks with
    chance-level ones instead of putting NaN into a sweep.
    """
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    function = pearsonr if kind == "pearson" else spearmanr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = float(function(x, y).statistic)
    return value if math.isfinite(value) else 0.0


def _class_predictions(task: TaskSpec, predictions: np.ndarray, n: int) -> np.ndarray:
    """Argmax class ids from logits of shape ``[n, num_labels]``."""
    if predictions.ndim != 2 or predictions.shape != (n, task.num_labels):
        raise ValueError(f"{task.name}: expected logits of shape ({n}, {task.num_labels}), got {predictions.shape}")
    return predictions.argmax(axis=-1)


def _regression_predictions(task: TaskSpec, predictions: np.ndarray, n: int) -> np.ndarray:
    """Scores from predictions of shape ``[n]`` or ``[n, 1]``, as float64."""
    if predictions.shape not in ((n,), (n, 1)):
        raise ValueError(f"{task.name}: expected predictions of shape ({n},) or ({n}, 1), got {predictions.shape}")
    return predictions.reshape(n).astype(np.float64)


def compute_metrics(task: TaskSpec, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Every metric in ``task.metrics`` as a plain float (fractions, not percent).

    Classification takes the argmax of the logits. F1 is binary F1 of class 1 (the
    hub's ``equivalent``/``duplicate``); where it is 0/0 (no positive label and no
    positive prediction) it is 0.0 without a warning (``zero_division=0``). MCC of
    constant predictions is 0.0 (sklearn's convention). Correlations: see
    ``_correlation``. Shape mismatches are caller bugs and raise ValueError, as does an
    empty input.
    """
    predictions = np.asarray(predictions)
    labels = np.asarray(labels).reshape(-1)
    n = len(labels)
    if n == 0:
        raise ValueError(f"{task.name}: cannot compute metrics on zero examples")
    if task.is_regression:
        scores = _regression_predictions(task, predictions, n)
        gold = labels.astype(np.float64)
        return {name: _correlation(name, scores, gold) for name in task.metrics}
    predicted = _class_predictions(task, predictions, n)
    gold = labels.astype(np.int64)
    results: dict[str, float] = {}
    for name in task.metrics:
        if name == "accuracy":
            results[name] = float(accuracy_score(gold, predicted))
        elif name == "f1":
            results[name] = float(f1_score(gold, predicted, pos_label=1, zero_division=0.0))
        elif name == "mcc":
            results[name] = float(matthews_corrcoef(gold, predicted))
        else:  # pragma: no cover - the task table only names the metrics above
            raise ValueError(f"{task.name}: no implementation for metric {name!r}")
    return results
