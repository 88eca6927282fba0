"""Seed confirmations (``run_study.py confirm --top K --seeds S``): re-run the best configurations of every
method with fresh seeds, claimed like grid points (resumable, safe with several workers), shared between
methods where the computation and the seed are the same (:mod:`harness.sweep.sharing`)."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from harness.distill.experiment import Experiment
from harness.spec.config import StudyConfig, best_first
from harness.store.storage import Storage
from harness.sweep.driver import Runner, RunOptions
from harness.sweep.settle import fail_orphans
from harness.sweep.sharing import owner_points
from harness.sweep.studies import open_study, record_teacher
from harness.sweep.trial import grid_trials
from harness.util.errors import HarnessError
from harness.util.hashing import fingerprint


def confirm_method(runner: Runner, method: str, top: int, seeds: int) -> None:
    """Re-run the ``top`` best grid configurations of a method with ``seeds`` fresh seeds each.

    Confirmation trials live in the method's study, flagged ``confirmation=True``; their seeds
    are ``fixed.seed + 1 … fixed.seed + seeds``. They are claimed like grid points, so this is
    resumable and safe with several workers. They are never pruned. A confirmation that is the
    same computation (and seed) as another method's is trained once and shared.
    """
    study = open_study(runner.storage, runner.config, method)
    record_teacher(study, runner.experiment)
    points = confirmation_points(runner.config, study, top, seeds)
    if not points:
        raise HarnessError(f"study '{study.study_name}' has no complete trial to confirm; run it first")
    every = {method: points}
    for other in runner.config.methods:
        if other != method and runner.study_exists(other):
            every[other] = confirmation_points(
                runner.config, open_study(runner.storage, runner.config, other), top, seeds
            )
    links = {
        key: (runner.config.study_name(owner), owner_key)
        for (m, key), (owner, owner_key) in owner_points(runner.config, every).items()
        if m == method and owner != method
    }
    runner.storage.ensure_points(study.study_name, points)
    runner.storage.link_points(study.study_name, links)
    fail_orphans(study, runner.storage)
    runner.log(
        f"{study.study_name}: confirming the top {len(points) // seeds} configuration(s) with {seeds} "
        f"seed(s) each" + (f" ({len(links)} shared with other methods)" if links else "")
    )
    runner.run_points(study, method, set(points), None)


def confirmation_points(config: StudyConfig, study: optuna.Study, top: int, seeds: int) -> dict[str, dict]:
    """The confirmation points of a study: its ``top`` best grid configurations × ``seeds`` fresh seeds (equal
    values in grid order, :func:`~harness.spec.config.grid_rank`, as the report ranks them)."""
    grid = grid_trials(study, (TrialState.COMPLETE,))
    points = {}
    for trial in sorted(grid, key=best_first)[:top]:
        for offset in range(1, seeds + 1):
            seed = config.fixed.seed + offset
            points[f"{trial.user_attrs['point']},seed={seed}"] = {
                "lr": trial.user_attrs["lr"],
                "eta": trial.user_attrs["eta"],
                "lambda": trial.user_attrs["lambda"],
                **{k: trial.user_attrs[k] for k in config.search.extra if k in trial.user_attrs},  # an extra axis
                "seed": seed,
            }
    return points


def confirm_studies(
    storage: Storage, name: str | None, top: int, seeds: int, data_dir: Path | None, options: RunOptions, log=print
) -> None:
    """Seed confirmations for every study in the database (optionally of one study file), from the DB alone."""
    from harness.spec.config import parse_study
    from harness.sweep.studies import plugin_dirs

    groups: dict[str, tuple[StudyConfig, list[str]]] = {}
    for summary in sorted(
        optuna.get_all_study_summaries(storage.optuna, include_best_trial=False), key=lambda s: s.study_name
    ):
        attrs = summary.user_attrs
        if "config" not in attrs or (name is not None and summary.study_name.split("/")[0] != name):
            continue
        config = parse_study(attrs["config"], source=f"study {summary.study_name}", base_dir=plugin_dirs(storage))
        key = fingerprint({**config.model_dump(mode="json", by_alias=True), "methods": None})
        groups.setdefault(key, (config, []))[1].append(attrs["method"])
    if not groups:
        raise HarnessError(f"no studies{f' named {name!r}' if name else ''} in {storage.masked}")
    for config, methods in groups.values():
        experiment = Experiment(config, data_dir, options.cache_dir)
        runner = Runner(config, storage, experiment, options, log=log)
        experiment.teacher.prepare()
        for method in methods:
            confirm_method(runner, method, top, seeds)
