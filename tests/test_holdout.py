"""``selection: holdout``: a stratified, stable slice of train that nothing trains on chooses epoch and point."""

from __future__ import annotations

from collections import Counter

import numpy as np
import optuna
import pytest

from harness.cli import main
from harness.data.holdout import HOLDOUT_SPLIT, split_holdout
from harness.data.loading import load_split
from harness.distill.experiment import Experiment
from harness.report.document import load
from harness.spec.config import load_study
from harness.spec.tasks import get_task
from harness.store.storage import Storage

from conftest import sweep_args, write_study


def _rows(split) -> Counter:
    return Counter(zip(split.text_a, split.text_b or [None] * len(split), split.labels.tolist()))


@pytest.mark.parametrize("task", ["SST-2", "STS-B"])
def test_holdout_is_disjoint_stratified_and_stable(glue_dir, task):
    spec = get_task(task)
    train = load_split(spec, "train", glue_dir)
    rest, held = split_holdout(train, 0.1, seed=42, regression=spec.is_regression)
    assert len(rest) + len(held) == len(train) and len(held) == round(0.1 * len(train))
    assert held.split == HOLDOUT_SPLIT
    assert _rows(rest) + _rows(held) == _rows(train)  # a partition of the training file
    again_rest, again_held = split_holdout(train, 0.1, seed=42, regression=spec.is_regression)
    assert again_held.text_a == held.text_a and again_rest.text_a == rest.text_a  # a pure function of its inputs
    other = split_holdout(train, 0.1, seed=43, regression=spec.is_regression)[1]
    assert other.text_a != held.text_a
    if spec.is_regression:  # stratified by decile: the holdout's score distribution matches train's
        assert abs(np.median(held.labels) - np.median(train.labels)) < 0.3
    else:
        assert abs(held.labels.mean() - train.labels.mean()) < 0.005
    capped = split_holdout(train, 0.1, seed=42, max_samples=100, regression=spec.is_regression)[1]
    assert len(capped) == 100


def test_holdout_rows_never_reach_training(tmp_path, tiny_bert, glue_dir):
    path = write_study(
        tmp_path / "h.yaml",
        tiny_bert,
        fixed={
            "epochs": 2,
            "max_seq_length": 32,
            "max_train_samples": 200,
            "eval_batch_size": 256,
            "selection": "holdout",
            "holdout_fraction": 0.5,
            "holdout_max_samples": 150,
            "teacher": {"epochs": 1, "max_train_samples": 200},
        },
    )
    experiment = Experiment(load_study(path), glue_dir, tmp_path / "cache", progress=False)
    assert len(experiment.evals[HOLDOUT_SPLIT]) == 150 and experiment.select_split == HOLDOUT_SPLIT
    full = load_split(get_task("SST-2"), "train", glue_dir)
    _, held = split_holdout(full, 0.5, 42, 150)
    pool = _rows(experiment.teacher.full_train)  # what the teacher and the students' subsample are drawn from
    assert pool + _rows(held) == _rows(full)
    student = Counter(tuple(f["input_ids"]) for f in experiment.train.features)
    held_ids = Counter(tuple(f["input_ids"]) for f in experiment.evals[HOLDOUT_SPLIT].features)
    assert len(experiment.train) == 200
    # A holdout sentence in the student's training set can only be a sentence the file holds twice.
    assert sum((student & held_ids).values()) <= sum((_rows(held) & pool).values())


def test_holdout_sweep_selects_on_holdout_and_reads_dev_once(tmp_path, tiny_bert, glue_dir):
    fixed = {
        "epochs": 3,
        "max_seq_length": 32,
        "max_train_samples": 96,
        "eval_batch_size": 256,
        "selection": "holdout",
        "holdout_max_samples": 200,
        "teacher": {"epochs": 1, "max_train_samples": 96},
    }
    path = write_study(
        tmp_path / "h.yaml",
        tiny_bert,
        methods=["nkd", "alp"],
        fixed=fixed,
        search={"lr": [3e-4, 1e-3], "eta": [0.5], "lambda": [0.2]},
    )
    storage = f"sqlite:///{tmp_path / 'h.db'}"
    common = sweep_args(storage, glue_dir, tmp_path / "cache")
    assert main(["run", str(path), *common]) == 0
    for method in ("nkd", "alp"):
        for trial in optuna.load_study(study_name=f"tiny/SST-2/{method}", storage=storage).get_trials():
            epochs = trial.user_attrs["epochs"]
            holdout = [e["metrics"][HOLDOUT_SPLIT]["accuracy"] for e in epochs]
            chosen = int(np.argmax(holdout)) + 1
            assert trial.value == max(holdout) and trial.user_attrs["reported_epoch"] == chosen
    assert main(["confirm", "--top", "1", "--seeds", "2", "--name", "tiny", *common]) == 0
    snapshot = load(Storage(storage, create=False), "tiny")
    frame = snapshot.frame
    for _, row in frame[frame["state"] == "COMPLETE"].iterrows():
        epoch = next(e for e in row["epochs"] if e["epoch"] == row["reported_epoch"])
        assert row["score"] == epoch["metrics"]["dev"]["accuracy"]  # dev at the holdout-chosen epoch
    out = tmp_path / "report"
    assert main(["report", "--storage", storage, "--name", "tiny", "--out", str(out)]) == 0
    text = (out / "README.md").read_text()
    assert text.index("**Protocol: selection on a held-out slice of train.**") < text.index("| method |")
    assert "not optimistic" in text and "## Equal budget" in text and "## Paired comparisons" in text
