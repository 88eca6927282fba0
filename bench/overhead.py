"""Benchmark: the harness's own overhead per trial (storage + bookkeeping) as a fraction of trial time.

``python -m bench.overhead [--storage URL] [--train-samples N] [--trials-per-method K]``

Runs a small real sweep (MiniLM-L6 teacher, SST-2, NKD/KD/ALP) through the same :class:`Runner`
that ``run_study.py run`` uses and splits each trial's wall time into

* compute: inside ``Experiment.run_trial`` (training and evaluation), minus the epoch callbacks;
* overhead: everything else in the worker loop — claiming the grid point, creating the Optuna
  trial, user attributes, the results table, per-epoch reports, the heartbeat, ``tell``.

Teacher fine-tuning and the one-off teacher-output cache are excluded (they are shared by all
trials). Prints one line per trial and the totals; the target is overhead ≤ 2 % of trial time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from harness.cli import REPO_ROOT
from harness.distill.experiment import Experiment
from harness.spec.config import parse_study
from harness.store.storage import Storage
from harness.sweep.driver import Runner, RunOptions
from harness.util.quiet import quiet_libraries


class TimedExperiment(Experiment):
    """An :class:`Experiment` that records how long each trial computes, callbacks excluded."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.compute: list[float] = []

    def run_trial(self, *args, on_epoch=None, **kwargs):
        in_callbacks = 0.0

        def timed(record):
            nonlocal in_callbacks
            started = time.perf_counter()
            try:
                on_epoch(record)
            finally:
                in_callbacks += time.perf_counter() - started

        started = time.perf_counter()
        history = super().run_trial(*args, on_epoch=timed if on_epoch else None, **kwargs)
        self.compute.append(time.perf_counter() - started - in_callbacks)
        return history


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default=None, help="SQLAlchemy URL (default: a fresh SQLite file)")
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT.parent / "shared" / "glue")
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--trials-per-method", type=int, default=2)
    args = parser.parse_args(argv)
    quiet_libraries(transformers=True)

    lrs = [5e-5, 2e-5, 1e-5][: args.trials_per_method]
    config = parse_study(
        {
            "name": "overhead",
            "task": "SST-2",
            "teacher": "minilm-l6",
            "student_layers": 2,
            "methods": ["nkd", "kd", "alp"],
            # The demo's teacher recipe, so that a teacher cached by `make demo` is reused.
            "fixed": {
                "epochs": 1,
                "max_seq_length": 64,
                "max_train_samples": args.train_samples,
                "teacher": {"epochs": 1, "lr": 5e-5, "max_train_samples": 8000},
            },
            "search": {"lr": lrs, "eta": [0.5], "lambda": [0.2]},
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        url = args.storage or f"sqlite:///{tmp}/overhead.db"
        storage = Storage(url)
        experiment = TimedExperiment(config, args.data_dir, REPO_ROOT / ".cache", progress=False)
        experiment.prepare_shared()
        options = RunOptions(cache_dir=Path(tmp))
        walls: list[float] = []
        runner = Runner(config, storage, experiment, options, log=lambda line: None)
        original = runner._run_one

        def timed_run_one(*a, **k):
            started = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                walls.append(time.perf_counter() - started)

        runner._run_one = timed_run_one
        started = time.perf_counter()
        runner.run()
        total = time.perf_counter() - started
    compute = sum(experiment.compute)
    print(f"storage {storage.masked}; {len(experiment.compute)} trials, {args.train_samples} training examples each")
    for i, (wall, comp) in enumerate(zip(walls, experiment.compute)):
        print(f"trial {i}: {wall:8.2f} s in the trial, {comp:8.2f} s computing, overhead {wall - comp:6.3f} s")
    print(f"whole sweep loop: {total:.2f} s, computing {compute:.2f} s")
    print(f"overhead per trial = {(total - compute) / len(experiment.compute):.3f} s")
    print(f"overhead fraction = {(total - compute) / total:.4%} (target <= 2 %)")


if __name__ == "__main__":
    main()
