"""Reading GLUE splits: local files in the official layout, or the Hugging Face hub.

Local files follow the layout written by the official ``download_glue_data.py``
(``<data_dir>/<TASK>/train.tsv``, ``dev.tsv``; MNLI ``dev_matched.tsv`` and
``dev_mismatched.tsv``). They are read as the GLUE reference readers read them: tab
separated, quoting off (``csv.QUOTE_NONE``), every field a string, empty strings kept.
Labels are mapped to the hub's label ids, so a model trained on local files and one
trained on hub data agree on what class ``k`` means.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.spec.tasks import HUB_DATASET, TRAIN_SPLIT, GlueSplit, TaskSpec
from harness.util.errors import HarnessError


def _allowed_splits(task: TaskSpec) -> tuple[str, ...]:
    """The splits ``load_split`` accepts for a task: train and the labelled eval splits."""
    return (TRAIN_SPLIT, *task.eval_splits)


def _check_split(task: TaskSpec, split: str) -> None:
    """Raise HarnessError for a split the task does not have (test splits have no labels)."""
    allowed = _allowed_splits(task)
    if split not in allowed:
        raise HarnessError(f"unknown split {split!r} for {task.name} (allowed: {', '.join(allowed)})")


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
            f"{where} has label id {int(bad[0])} (allowed: 0..{task.num_labels - 1} for {', '.join(task.label_names)})"
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
    "MRPC": _TsvLayout(True, 5, (3, 4), 0, {0: "Quality", 3: "#1 String", 4: "#2 String"}, _BINARY),
    "STS-B": _TsvLayout(True, 10, (7, 8), 9, {7: "sentence1", 8: "sentence2", 9: "score"}, None),
    "QQP": _TsvLayout(True, 6, (3, 4), 5, {3: "question1", 4: "question2", 5: "is_duplicate"}, _BINARY),
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
            f"missing GLUE file {path} (expected {split}.tsv of {task.name} in the official download layout)"
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
        raise HarnessError(f"{path} line 1: header has {len(header)} columns (allowed: {columns})")
    for index, name in layout.header.items():
        position = index if index >= 0 else len(header) + index
        found = header[position] if 0 <= position < len(header) else ""
        if found != name:
            raise HarnessError(f"{path} line 1: header column {position + 1} is {_shorten(found)} (allowed: {name!r})")
    return columns


def _parse_label(path: Path, line: int, value: str, layout: _TsvLayout) -> float | int:
    """A file label as a hub label id, or a finite STS-B score within ``STS_B_RANGE``."""
    if layout.file_labels is not None:
        if value not in layout.file_labels:
            raise HarnessError(
                f"{path} line {line}: unknown label {_shorten(value)} (allowed: {', '.join(layout.file_labels)})"
            )
        return layout.file_labels.index(value)
    try:
        score = float(value)
    except ValueError:
        score = math.nan
    low, high = STS_B_RANGE
    if not low <= score <= high:  # also rejects NaN and infinities
        raise HarnessError(f"{path} line {line}: score {_shorten(value)} (allowed: a number from {low:g} to {high:g})")
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
            raise HarnessError(f"{path} line {reader.line_num}: {len(row)} columns (allowed: {columns})")
        for column, index in zip(texts, layout.text_indices):
            column.append(row[index])
        labels.append(_parse_label(path, reader.line_num, row[layout.label_index], layout))
    if not labels:
        raise HarnessError(f"{path}: no data rows after the header (allowed: a header and at least one data row)")
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


# --------------------------------------------------------------------------- test files (no labels)

# The text columns of the official test.tsv files, by header name, and the file names the GLUE leaderboard
# expects for a task's predictions (MNLI has two test files).
_TEST_TEXTS: dict[str, tuple[str, ...]] = {
    "CoLA": ("sentence",),
    "SST-2": ("sentence",),
    "MRPC": ("#1 String", "#2 String"),
    "STS-B": ("sentence1", "sentence2"),
    "QQP": ("question1", "question2"),
    "MNLI": ("sentence1", "sentence2"),
    "QNLI": ("question", "sentence"),
    "RTE": ("sentence1", "sentence2"),
}
TEST_FILES: dict[str, tuple[tuple[str, str], ...]] = {
    "MNLI": (("test_matched", "MNLI-m"), ("test_mismatched", "MNLI-mm")),
}


def test_files(task: TaskSpec) -> tuple[tuple[str, str], ...]:
    """(test split, leaderboard file name) pairs of a task: ``test`` → ``<TASK>.tsv``, MNLI's two."""
    return TEST_FILES.get(task.name, (("test", task.name),))


def load_test(task: TaskSpec, split: str, folder: Path) -> tuple[list[str], GlueSplit]:
    """The ``index`` column and the texts of an official test file, ``<folder>/<TASK>/<split>.tsv`` (or
    ``<folder>/<split>.tsv``); its labels are zeros. A missing file or column is a one-line error."""
    path = folder / task.name / f"{split}.tsv"
    if not path.is_file():
        path = folder / f"{split}.tsv"
    if not path.is_file():
        raise HarnessError(f"missing GLUE test file {folder / task.name / f'{split}.tsv'} (nor {path})")
    text, digest = _read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(reader, None) or []
    wanted = ("index" if "index" in header else "id", *_TEST_TEXTS[task.name])
    missing = [name for name in wanted if name not in header]
    if missing:
        raise HarnessError(
            f"{path} line 1: no column {missing[0]!r} (allowed: a GLUE test header with {', '.join(wanted)})"
        )
    where = [header.index(name) for name in wanted]
    rows = []
    for row in reader:
        if len(row) != len(header):
            raise HarnessError(f"{path} line {reader.line_num}: {len(row)} columns (allowed: {len(header)})")
        rows.append([row[i] for i in where])
    if not rows:
        raise HarnessError(f"{path}: no data rows after the header (allowed: a header and at least one data row)")
    columns = list(zip(*rows))
    split_data = GlueSplit(
        task=task.name,
        split=split,
        text_a=list(columns[1]),
        text_b=list(columns[2]) if len(columns) > 2 else None,
        labels=np.zeros(len(rows), dtype=np.float32 if task.is_regression else np.int64),
        source=str(path),
        sha256=digest,
    )
    return list(columns[0]), split_data


def prediction_labels(task: TaskSpec) -> tuple[str, ...] | None:
    """How the leaderboard writes each class (the strings of the official files, in label-id order);
    ``None`` for STS-B's scores."""
    return _LAYOUTS[task.name].file_labels


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
