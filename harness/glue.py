"""GLUE tasks: task table, data loading (local TSVs or the Hugging Face hub), metrics.

Local files follow the layout written by the official ``download_glue_data.py``
(``<data_dir>/<TASK>/train.tsv``, ``dev.tsv``; MNLI ``dev_matched.tsv`` and
``dev_mismatched.tsv``). They are read as the GLUE reference readers read them: tab
separated, quoting off (``csv.QUOTE_NONE``), every field a string, empty strings kept.
Labels are mapped to the hub's label ids, so a model trained on local files and one
trained on hub data agree on what class ``k`` means. Tokenising and batching the splits is
:mod:`harness.encoding`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from harness.errors import HarnessError

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
        _classification(
            "QNLI", "qnli", ("question", "sentence"), ("entailment", "not_entailment")
        ),
        _classification(
            "RTE", "rte", ("sentence1", "sentence2"), ("entailment", "not_entailment")
        ),
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
            raise ValueError(
                f"GlueSplit {self.task}/{self.split}: text and label lengths differ"
            )

    def __len__(self) -> int:
        """Number of examples."""
        return len(self.labels)


def _allowed_splits(task: TaskSpec) -> tuple[str, ...]:
    """The splits ``load_split`` accepts for a task: train and the labelled eval splits."""
    return (TRAIN_SPLIT, *task.eval_splits)


def _check_split(task: TaskSpec, split: str) -> None:
    """Raise HarnessError for a split the task does not have (test splits have no labels)."""
    allowed = _allowed_splits(task)
    if split not in allowed:
        raise HarnessError(
            f"unknown split {split!r} for {task.name} (allowed: {', '.join(allowed)})"
        )


def hub_split_name(task: TaskSpec, split: str) -> str:
    """The hub's name for a split: ``dev`` -> ``validation``, ``dev_matched`` ->
    ``validation_matched``, ``dev_mismatched`` -> ``validation_mismatched``, ``train`` as is.
    """
    _check_split(task, split)
    if split.startswith("dev"):
        return "validation" + split[len("dev") :]
    return split


def load_split(task: TaskSpec, split: str, data_dir: Path | None) -> GlueSplit:
    """Load ``split`` of ``task`` from ``<data_dir>/<task.name>/<split>.tsv``, or from the
    hub when ``data_dir`` is None.
    """
    _check_split(task, split)
    if data_dir is None:
        return _load_hub(task, split)
    return _load_tsv(task, split, Path(data_dir))


# ----- the hub


def _load_hub(task: TaskSpec, split: str) -> GlueSplit:
    """Load a split with ``datasets.load_dataset``.

    ``datasets`` is imported here, not at module level, so that local runs and tests do
    not pay for its import. Download or cache failures (``OSError``, which includes
    ``ConnectionError`` and the hub's not-found errors) become a HarnessError that
    points at the local alternative. ``source`` names the hub split actually read.
    """
    import datasets

    hub_split = hub_split_name(task, split)
    try:
        ds = datasets.load_dataset(HUB_DATASET, task.hub_config, split=hub_split)
    except OSError as exc:
        first_line = (str(exc).splitlines() or [""])[0]
        raise HarnessError(
            f"could not load {HUB_DATASET}/{task.hub_config}/{hub_split} from the hub "
            f"({type(exc).__name__}: {first_line}); allowed: a local GLUE folder via "
            "--data-dir, GLUE_DIR or the study's data_dir"
        ) from exc
    text_a = [str(t) for t in ds[task.text_columns[0]]]
    text_b = [str(t) for t in ds[task.text_columns[1]]] if len(task.text_columns) > 1 else None
    labels = _hub_labels(task, list(ds["label"]), f"{HUB_DATASET}/{task.hub_config}/{hub_split}")
    return GlueSplit(
        task=task.name,
        split=split,
        text_a=text_a,
        text_b=text_b,
        labels=labels,
        source=f"hub:{HUB_DATASET}/{task.hub_config}/{hub_split}",
        sha256=None,
    )


def _hub_labels(task: TaskSpec, values: list[Any], where: str) -> np.ndarray:
    """Hub labels as float32 scores or int64 class ids; ids outside the label set (the
    hub marks unlabelled rows with -1) raise HarnessError.
    """
    if task.is_regression:
        return np.asarray(values, dtype=np.float32)
    labels = np.asarray(values, dtype=np.int64)
    bad = labels[(labels < 0) | (labels >= task.num_labels)]
    if bad.size:
        raise HarnessError(
            f"{where} has label id {int(bad[0])} "
            f"(allowed: 0..{task.num_labels - 1} for {', '.join(task.label_names)})"
        )
    return labels


# ----- local TSV files


@dataclass(frozen=True)
class _TsvLayout:
    """Where the fields of one task sit in the official TSV files.

    ``columns`` is the expected field count, or None where it is the header's length
    (MNLI: 12 in train.tsv, 16 in the dev files, gold_label last). ``header`` maps column
    positions (negative = from the end) to the name the header must have there, which
    catches a file put in the wrong task folder. ``file_labels`` lists the label strings
    in hub id order; None marks a float score.
    """

    has_header: bool
    columns: int | None
    text_indices: tuple[int, ...]
    label_index: int
    header: dict[int, str]
    file_labels: tuple[str, ...] | None


_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")

_LAYOUTS: dict[str, _TsvLayout] = {
    "CoLA": _TsvLayout(False, 4, (3,), 1, {}, _BINARY),
    "SST-2": _TsvLayout(True, 2, (0,), 1, {0: "sentence", 1: "label"}, _BINARY),
    "MRPC": _TsvLayout(
        True, 5, (3, 4), 0, {0: "Quality", 3: "#1 String", 4: "#2 String"}, _BINARY
    ),
    "STS-B": _TsvLayout(
        True, 10, (7, 8), 9, {7: "sentence1", 8: "sentence2", 9: "score"}, None
    ),
    "QQP": _TsvLayout(
        True, 6, (3, 4), 5, {3: "question1", 4: "question2", 5: "is_duplicate"}, _BINARY
    ),
    "MNLI": _TsvLayout(
        True,
        None,
        (8, 9),
        -1,
        {8: "sentence1", 9: "sentence2", -1: "gold_label"},
        ("entailment", "neutral", "contradiction"),
    ),
    "QNLI": _TsvLayout(True, 4, (1, 2), 3, {1: "question", 2: "sentence", 3: "label"}, _NLI2),
    "RTE": _TsvLayout(True, 4, (1, 2), 3, {1: "sentence1", 2: "sentence2", 3: "label"}, _NLI2),
}

STS_B_RANGE = (0.0, 5.0)
"""Allowed STS-B similarity scores (inclusive); anything else is a malformed row."""


def _shorten(value: str, limit: int = 40) -> str:
    """``repr`` of a file value, cut to ``limit`` characters so an error stays one line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _split_path(task: TaskSpec, split: str, data_dir: Path) -> Path:
    """Path of a split's TSV, checking the task folder and the file exist."""
    folder = data_dir / task.name
    expected = ", ".join(f"{s}.tsv" for s in _allowed_splits(task))
    if not folder.is_dir():
        raise HarnessError(
            f"missing GLUE folder {folder} (expected the official download layout "
            f"<data_dir>/{task.name}/ holding {expected})"
        )
    path = folder / f"{split}.tsv"
    if not path.is_file():
        raise HarnessError(
            f"missing GLUE file {path} (expected {split}.tsv of {task.name} in the "
            "official download layout)"
        )
    return path


def _read_text(path: Path) -> tuple[str, str]:
    """File text and sha256 of its bytes.

    Decoded as ``utf-8-sig``, which drops the BOM that starts the MRPC header (the GLUE
    script copies it from ``msr_paraphrase_train.txt``) and changes nothing else.
    """
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    try:
        return data.decode("utf-8-sig"), digest
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise HarnessError(f"{path} line {line}: not UTF-8 (allowed: UTF-8 text)") from None


def _check_header(path: Path, header: list[str], layout: _TsvLayout) -> int:
    """Validate the header line and return the field count every data row must have."""
    columns = layout.columns if layout.columns is not None else len(header)
    if len(header) != columns:
        raise HarnessError(
            f"{path} line 1: header has {len(header)} columns (allowed: {columns})"
        )
    for index, name in layout.header.items():
        position = index if index >= 0 else len(header) + index
        found = header[position] if 0 <= position < len(header) else ""
        if found != name:
            raise HarnessError(
                f"{path} line 1: header column {position + 1} is {_shorten(found)} "
                f"(allowed: {name!r})"
            )
    return columns


def _parse_label(path: Path, line: int, value: str, layout: _TsvLayout) -> float | int:
    """A file label as a hub label id, or a finite STS-B score within ``STS_B_RANGE``."""
    if layout.file_labels is not None:
        if value not in layout.file_labels:
            raise HarnessError(
                f"{path} line {line}: unknown label {_shorten(value)} "
                f"(allowed: {', '.join(layout.file_labels)})"
            )
        return layout.file_labels.index(value)
    try:
        score = float(value)
    except ValueError:
        score = math.nan
    low, high = STS_B_RANGE
    if not low <= score <= high:  # also rejects NaN and infinities
        raise HarnessError(
            f"{path} line {line}: score {_shorten(value)} "
            f"(allowed: a number from {low:g} to {high:g})"
        )
    return score


def _load_tsv(task: TaskSpec, split: str, data_dir: Path) -> GlueSplit:
    """Read one official TSV. Every row must have the expected field count (a blank line
    is a row of zero fields, so it is rejected too) and a known label.
    """
    path = _split_path(task, split, data_dir)
    layout = _LAYOUTS[task.name]
    text, digest = _read_text(path)
    # Quoting off, as in the GLUE readers; with it, reader.line_num is the 1-based line.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    columns = layout.columns
    if layout.has_header:
        header = next(reader, None)
        if header is None:
            raise HarnessError(f"{path} line 1: empty file (allowed: a header and data rows)")
        columns = _check_header(path, header, layout)
    texts: list[list[str]] = [[] for _ in layout.text_indices]
    labels: list[float | int] = []
    for row in reader:
        if len(row) != columns:
            raise HarnessError(
                f"{path} line {reader.line_num}: {len(row)} columns (allowed: {columns})"
            )
        for column, index in zip(texts, layout.text_indices):
            column.append(row[index])
        labels.append(_parse_label(path, reader.line_num, row[layout.label_index], layout))
    dtype = np.float32 if task.is_regression else np.int64
    return GlueSplit(
        task=task.name,
        split=split,
        text_a=texts[0],
        text_b=texts[1] if len(texts) > 1 else None,
        labels=np.asarray(labels, dtype=dtype),
        source=str(path),
        sha256=digest,
    )


# --------------------------------------------------------------------------- data dir


def resolve_data_dir(cli: str | None, env: str | None, study: str | None) -> Path | None:
    """The local GLUE folder to use, or None for the hub.

    The first given value wins: the ``--data-dir`` flag, then ``GLUE_DIR``, then the
    study file's ``data_dir``. An empty string counts as not given (``GLUE_DIR=`` in a
    shell unsets it in effect). ``~`` is expanded and the result made absolute, so it
    can be recorded as provenance. The chosen path must be an existing folder; a bad
    path is an error rather than a silent fall-through to the next source.
    """
    for origin, value in (("--data-dir", cli), ("GLUE_DIR", env), ("study data_dir", study)):
        if value is None or value == "":
            continue
        path = Path(value).expanduser().absolute()
        if not path.is_dir():
            state = "is not a folder" if path.exists() else "does not exist"
            raise HarnessError(
                f"GLUE data folder {path} from {origin} {state} "
                "(allowed: an existing folder holding <TASK>/train.tsv, dev.tsv, ...)"
            )
        return path
    return None


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
        raise ValueError(
            f"{task.name}: expected logits of shape ({n}, {task.num_labels}), "
            f"got {predictions.shape}"
        )
    return predictions.argmax(axis=-1)


def _regression_predictions(task: TaskSpec, predictions: np.ndarray, n: int) -> np.ndarray:
    """Scores from predictions of shape ``[n]`` or ``[n, 1]``, as float64."""
    if predictions.shape not in ((n,), (n, 1)):
        raise ValueError(
            f"{task.name}: expected predictions of shape ({n},) or ({n}, 1), "
            f"got {predictions.shape}"
        )
    return predictions.reshape(n).astype(np.float64)


def compute_metrics(
    task: TaskSpec, predictions: np.ndarray, labels: np.ndarray
) -> dict[str, float]:
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
