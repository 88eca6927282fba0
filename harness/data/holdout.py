"""The held-out selection slice (``fixed.selection: holdout``): part of train that no model trains on.

Under the paper's protocol the epoch and the grid point are chosen on dev, the set that is then
reported, so the reported maximum is optimistic. With ``selection: holdout`` a seeded,
label-stratified slice of the training file chooses them instead, and dev is read once, at the
chosen epoch of the chosen point. The slice is cut from the whole training file *before* any
subsampling, and neither the teacher nor any student trains on it.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

from harness.spec.tasks import GlueSplit

HOLDOUT_SPLIT = "holdout"
REGRESSION_BINS = 10  # STS-B: stratify by deciles of the score


def take(split: GlueSplit, keep: np.ndarray, name: str | None = None) -> GlueSplit:
    """The rows ``keep`` of ``split`` (in file order), optionally under another split name."""
    keep = np.sort(np.asarray(keep, dtype=np.int64))
    return GlueSplit(
        task=split.task,
        split=name or split.split,
        text_a=[split.text_a[i] for i in keep],
        text_b=None if split.text_b is None else [split.text_b[i] for i in keep],
        labels=split.labels[keep].copy(),
        source=split.source,
        sha256=split.sha256,
    )


def holdout_size(n: int, fraction: float, max_samples: int | None) -> int:
    """How many of ``n`` training rows are held out: ``round(fraction·n)``, at most ``max_samples``,
    at least 1, leaving at least 1 to train on."""
    size = max(1, round(fraction * n))
    if max_samples is not None:
        size = min(size, max_samples)
    return min(size, n - 1)


def split_holdout(
    train: GlueSplit, fraction: float, seed: int, max_samples: int | None = None, regression: bool = False
) -> tuple[GlueSplit, GlueSplit]:
    """``(rest, holdout)``: a seeded, label-stratified partition of ``train`` (a pure function of its
    rows, ``fraction``, ``max_samples`` and ``seed``). Regression labels are stratified by decile."""
    n = len(train)
    if n < 2:
        raise ValueError(f"{train.task}: cannot hold out part of a training set of {n} example(s)")
    size = holdout_size(n, fraction, max_samples)
    labels = np.asarray(train.labels)
    if regression:
        edges = np.quantile(labels, np.linspace(0, 1, REGRESSION_BINS + 1)[1:-1])
        labels = np.searchsorted(edges, labels, side="right")
    counts = np.bincount(labels.astype(np.int64))
    stratify = labels if counts[counts > 0].min() >= 2 and size >= (counts > 0).sum() else None
    rest, held = train_test_split(np.arange(n), test_size=size, random_state=seed, shuffle=True, stratify=stratify)
    return take(train, rest), take(train, held, HOLDOUT_SPLIT)
