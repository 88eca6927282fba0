"""GLUE tasks: the task table (labels, metrics, eval splits), a split as texts and labels, and subsampling.

Loading the files (local TSVs in the official layout, or the Hugging Face hub) is :mod:`harness.data.loading`;
the metrics are :mod:`harness.spec.metrics`; tokenising and batching the splits is :mod:`harness.data.encoding`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness.util.errors import HarnessError

HUB_DATASET = "nyu-mll/glue"
"""Hub id of the GLUE dataset used when no local data folder is given."""

TRAIN_SPLIT = "train"
"""Name of the training split, locally (``train.tsv``) and on the hub."""


# --------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class TaskSpec:
    """What the harness needs to know about one GLUE task.

    ``label_names`` follows the hub's label id order (``()`` for the regression task
    STS-B). ``metrics`` lists every metric ``compute_metrics`` returns for the task;
    ``primary_metric`` is the one a sweep optimises and a report ranks by.
    """

    name: str
    hub_config: str
    text_columns: tuple[str, ...]
    label_names: tuple[str, ...]
    is_regression: bool
    metrics: tuple[str, ...]
    primary_metric: str
    eval_splits: tuple[str, ...]

    @property
    def num_labels(self) -> int:
        """Width of the model's output layer: 1 for regression, else the class count."""
        return 1 if self.is_regression else len(self.label_names)

    @property
    def components(self) -> list[tuple[str, str]]:
        """The (split, metric) pairs GLUE reports for the task, in GLUE's order (MNLI: m then mm)."""
        return [(split, metric) for split in self.eval_splits for metric in self.metrics]

    @property
    def component_keys(self) -> list[str]:
        """Names of :attr:`components` in reference files: the metric, or ``split.metric`` for MNLI."""
        single = len(self.eval_splits) == 1
        return [metric if single else f"{split}.{metric}" for split, metric in self.components]


def _classification(
    name: str,
    hub_config: str,
    text_columns: tuple[str, ...],
    label_names: tuple[str, ...],
    metrics: tuple[str, ...] = ("accuracy",),
    eval_splits: tuple[str, ...] = ("dev",),
) -> TaskSpec:
    """A classification task whose primary metric is the first of ``metrics``."""
    return TaskSpec(
        name=name,
        hub_config=hub_config,
        text_columns=text_columns,
        label_names=label_names,
        is_regression=False,
        metrics=metrics,
        primary_metric=metrics[0],
        eval_splits=eval_splits,
    )


# Primary metrics: CoLA uses Matthews correlation and STS-B Pearson correlation, as GLUE
# does. MRPC and QQP use F1: GLUE reports them as "F1/accuracy" with F1 first, and the
# distillation papers this harness is compared with (PKD, ALP-KD) are quoted with F1 for
# these two tasks. Accuracy is still computed and reported for both. All other tasks use
# accuracy.
TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        _classification("CoLA", "cola", ("sentence",), ("unacceptable", "acceptable"), ("mcc",)),
        _classification("SST-2", "sst2", ("sentence",), ("negative", "positive")),
        _classification(
            "MRPC",
            "mrpc",
            ("sentence1", "sentence2"),
            ("not_equivalent", "equivalent"),
            ("f1", "accuracy"),
        ),
        TaskSpec(
            name="STS-B",
            hub_config="stsb",
            text_columns=("sentence1", "sentence2"),
            label_names=(),
            is_regression=True,
            metrics=("pearson", "spearman"),
            primary_metric="pearson",
            eval_splits=("dev",),
        ),
        _classification(
            "QQP",
            "qqp",
            ("question1", "question2"),
            ("not_duplicate", "duplicate"),
            ("f1", "accuracy"),
        ),
        _classification(
            "MNLI",
            "mnli",
            ("premise", "hypothesis"),
            ("entailment", "neutral", "contradiction"),
            eval_splits=("dev_matched", "dev_mismatched"),
        ),
        _classification("QNLI", "qnli", ("question", "sentence"), ("entailment", "not_entailment")),
        _classification("RTE", "rte", ("sentence1", "sentence2"), ("entailment", "not_entailment")),
    )
}


def _task_key(name: str) -> str:
    """Case-folded name without spaces, hyphens or underscores: 'SST-2', 'sst_2' -> 'sst2'."""
    return "".join(ch for ch in name.strip().lower() if ch not in " -_")


_TASK_KEYS: dict[str, TaskSpec] = {_task_key(spec.name): spec for spec in TASKS.values()}


def get_task(name: str) -> TaskSpec:
    """Look a task up by name, ignoring case, spaces, hyphens and underscores.

    So ``"SST-2"``, ``"sst-2"`` and ``"sst2"`` (the hub config name) all name SST-2.
    """
    spec = _TASK_KEYS.get(_task_key(name))
    if spec is None:
        raise HarnessError(f"unknown task {name!r} (allowed: {', '.join(TASKS)})")
    return spec


# --------------------------------------------------------------------------- splits


@dataclass(frozen=True, eq=False)
class GlueSplit:
    """One split of one task, as parallel lists of texts and a label array.

    ``eq=False``: instances compare by identity, because comparing numpy arrays field
    by field has no single truth value.
    """

    task: str
    split: str
    text_a: list[str]
    text_b: list[str] | None
    labels: np.ndarray
    source: str
    sha256: str | None

    def __post_init__(self) -> None:
        """Reject texts and labels of different lengths (a bug in the caller)."""
        n = len(self.labels)
        if len(self.text_a) != n or (self.text_b is not None and len(self.text_b) != n):
            raise ValueError(f"GlueSplit {self.task}/{self.split}: text and label lengths differ")

    def __len__(self) -> int:
        """Number of examples."""
        return len(self.labels)


# --------------------------------------------------------------------------- subsample


def subsample(split: GlueSplit, n: int | None, seed: int) -> GlueSplit:
    """A seeded random subset of ``n`` rows, kept in file order.

    The rows are the first ``n`` of ``numpy.random.default_rng(seed).permutation``, so
    for one seed a larger ``n`` keeps every row of a smaller one. ``None`` or
    ``n >= len(split)`` returns ``split`` itself; ``n < 1`` is an error, since an empty
    split cannot be trained or evaluated on.
    """
    if n is None or n >= len(split):
        return split
    if n < 1:
        raise HarnessError(f"subsample size {n} (allowed: a positive integer, or none)")
    order = np.random.default_rng(seed).permutation(len(split))[:n]
    keep = np.sort(order)
    return GlueSplit(
        task=split.task,
        split=split.split,
        text_a=[split.text_a[i] for i in keep],
        text_b=None if split.text_b is None else [split.text_b[i] for i in keep],
        labels=split.labels[keep].copy(),
        source=split.source,
        sha256=split.sha256,
    )
