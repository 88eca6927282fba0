"""Benchmark: how long the report takes on a synthetic database of about 1,000 trials.

``python -m bench.report`` builds, in a temporary folder, an SQLite database through the
harness's own storage and study API: four tasks × every method on the paper's grids (996 grid
trials, some failed or pruned), four trials still RUNNING, and three confirmation seeds for
nkd, kd and alp per task. It then times :func:`harness.report.document.write_report` and prints the
numbers: drawn in one process, drawn by one process per CPU, and re-rendered into the same
folder (nothing changed, so nothing is redrawn). It is a benchmark that prints, not a test.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState, create_trial

from harness.report import render
from harness.report.document import write_report
from harness.spec.config import grid_points, parse_study, point_key
from harness.spec.methods import METHODS
from harness.spec.tasks import TASKS
from harness.store.storage import Storage
from harness.sweep.studies import open_study

BENCH_TASKS = ("SST-2", "MRPC", "MNLI", "STS-B")
SEEDS = (1, 2, 3)
CONFIRMED = ("nkd", "kd", "alp")


def _epochs(task: str, final: float, n: int, rng: np.random.Generator) -> list[dict]:
    spec, records = TASKS[task], []
    for epoch in range(1, n + 1):
        value = final - 0.02 * (n - epoch) + rng.normal(0, 0.003)
        metrics = {
            split: {metric: float(np.clip(value + rng.normal(0, 0.01), 0, 1)) for metric in spec.metrics}
            for split in spec.eval_splits
        }
        metrics[spec.eval_splits[0]][spec.primary_metric] = float(value)
        records.append(
            {
                "epoch": epoch,
                "value": float(value),
                "metrics": metrics,
                "losses": {"ce": 0.5 / epoch, "kd": 0.3 / epoch, "inter": 0.1, "total": 0.9 / epoch},
                "train_seconds": 50.0,
                "seconds": 60.0,
            }
        )
    return records


def _trial(
    task: str,
    method: str,
    point: dict,
    number: int,
    rng: np.random.Generator,
    seed: int = 42,
    confirmation: bool = False,
    state: TrialState | None = None,
) -> optuna.trial.FrozenTrial:
    quality = 0.80 + 0.01 * list(METHODS).index(method) - 200 * abs(point["lr"] - 2e-5) + rng.normal(0, 0.01)
    if state is None:
        draw = rng.random()
        state = TrialState.FAIL if draw < 0.03 else TrialState.PRUNED if draw < 0.08 else TrialState.COMPLETE
    epochs = [] if state == TrialState.FAIL else _epochs(task, quality, 3 if state == TrialState.COMPLETE else 1, rng)
    attrs = {
        "method": method,
        "point": point_key(point),
        "lr": point["lr"],
        "eta": point["eta"],
        "lambda": point["lambda"],
        "seed": seed,
        "worker": f"bench:{number % 4}",
        "device": "cuda:NVIDIA H100" if number % 5 == 0 else "cpu:2threads",
        "epochs": epochs,
    }
    if confirmation:
        attrs["confirmation"] = True
    if state == TrialState.FAIL:
        attrs["fail_reason"] = "RuntimeError: synthetic failure"
    elif state != TrialState.RUNNING:
        attrs["seconds"] = float(sum(e["seconds"] for e in epochs))
    best = max(epochs, key=lambda e: e["value"]) if epochs else None
    if state == TrialState.COMPLETE:
        attrs["best_epoch"] = best["epoch"]
    value = best["value"] if state in (TrialState.COMPLETE, TrialState.PRUNED) else None
    return create_trial(
        state=state, value=value, user_attrs=attrs, intermediate_values={e["epoch"]: e["value"] for e in epochs}
    )


def build(folder: Path) -> tuple[Storage, int]:
    """The synthetic database; returns the storage and its number of trials."""
    storage, rng, total = Storage(f"sqlite:///{folder / 'bench.db'}"), np.random.default_rng(0), 0
    for task in BENCH_TASKS:
        config = parse_study(
            {"name": "bench", "task": task, "teacher": "synthetic", "student_layers": 4, "methods": list(METHODS)}
        )
        for method in METHODS:
            study = open_study(storage, config, method)
            study.set_user_attr(
                "teacher",
                {
                    "key": "t",
                    "value": 0.9,
                    "metrics": {split: {m: 0.9 for m in TASKS[task].metrics} for split in TASKS[task].eval_splits},
                },
            )
            points = grid_points(config, method)
            trials = [_trial(task, method, p, i, rng) for i, p in enumerate(points)]
            if method == "alp":
                trials.append(_trial(task, method, points[0], len(trials), rng, state=TrialState.RUNNING))
            if method in CONFIRMED:
                best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
                point = {
                    "lr": best.user_attrs["lr"],
                    "eta": best.user_attrs["eta"],
                    "lambda": best.user_attrs["lambda"],
                }
                trials += [
                    _trial(
                        task, method, point, len(trials) + s, rng, seed=s, confirmation=True, state=TrialState.COMPLETE
                    )
                    for s in SEEDS
                ]
            study.add_trials(trials)
            total += len(trials)
    return storage, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workers", type=int, default=None, help="processes drawing the figures (default: one per usable CPU on Linux)"
    )
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        storage, total = build(folder)
        print(
            f"built {total} trials in {len(BENCH_TASKS) * len(METHODS)} studies in "
            f"{time.perf_counter() - started:.1f} s; load average {os.getloadavg()[0]:.2f}"
        )
        workers = args.workers or render.default_workers()
        runs = [
            ("one drawing process, all figures drawn", "one", 1),
            (f"{workers} drawing processes, all figures drawn", "all", workers),
            ("again into the same folder: figures unchanged, none redrawn", "all", workers),
        ]
        for label, target, workers in runs:
            wall, cpu = time.perf_counter(), time.process_time()
            write_report(storage, folder / target, None, "python -m bench.report", workers=workers)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            figures = len(list((folder / target / "figures").glob("*.png")))
            print(
                f"report of {total} trials, {figures} figures, {label}: {wall:.2f} s wall "
                f"({cpu:.2f} s CPU in the main process)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
