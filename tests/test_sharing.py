"""Shared equivalent trials: every computation of a study file is trained once per seed, with grid or TPE
sampling, one or two workers, and seed confirmations; copies carry the owner's outcome."""

from __future__ import annotations

import time

import optuna
import pytest
from optuna.trial import TrialState

from harness.cli import main
from harness.spec.config import load_study
from harness.store.storage import Storage
from harness.sweep.sharing import computation, plan

from conftest import TINY_FIXED, run_command, sweep_args, write_study

METHODS = ["nkd", "kd", "alp", "ckd"]
SEARCH = {"lr": [1e-4], "eta": [0.0, 0.5], "lambda": [0.0, 0.2]}
FIXED = TINY_FIXED


def _sweep(tmp_path, tiny_bert, glue_dir, *extra, search=None):
    study_file = write_study(tmp_path / "tiny.yaml", tiny_bert, methods=METHODS, fixed=FIXED, search=search or SEARCH)
    storage = f"sqlite:///{tmp_path / 'sweep.db'}"
    common = sweep_args(storage, glue_dir, tmp_path / "cache")
    assert main(["run", str(study_file), *common, *extra]) == 0
    return load_study(study_file), storage, common


def _trials(storage: str) -> dict[str, list[optuna.trial.FrozenTrial]]:
    return {m: optuna.load_study(study_name=f"tiny/SST-2/{m}", storage=storage).get_trials() for m in METHODS}


def _check_trained_once(config, storage: str) -> tuple[int, int]:
    """Every finished trial is either trained, and then the only training of its (computation, seed,
    confirmation), or a copy of such a training with the same outcome. Returns (trained, copied)."""
    by_id = {t._trial_id: (m, t) for m, ts in _trials(storage).items() for t in ts}
    trained, copied = {}, 0
    for method, trial in by_id.values():
        if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED) or "duplicate_of" in trial.user_attrs:
            continue
        point = {k: trial.user_attrs[k] for k in ("lr", "eta", "lambda")}
        what = (
            computation(config, method, point),
            trial.user_attrs["seed"],
            bool(trial.user_attrs.get("confirmation")),
        )
        source_id = trial.user_attrs.get("equivalent_of")
        if source_id is None:
            assert what not in trained, f"{method} {point} trained twice"
            trained[what] = trial
            continue
        copied += 1
        source_method, source = by_id[source_id]
        assert "equivalent_of" not in source.user_attrs and source_method != method
        assert computation(config, source_method, point) == what[0]
        assert (trial.value, trial.state, trial.intermediate_values) == (
            source.value,
            source.state,
            source.intermediate_values,
        )
        assert trial.user_attrs["epochs"] == source.user_attrs["epochs"]
        assert trial.user_attrs["seconds"] == 0.0 and trial.user_attrs["method"] == method
    return len(trained), copied


def test_grid_sweep_trains_each_computation_once(tmp_path, tiny_bert, glue_dir, capsys):
    config, storage, common = _sweep(tmp_path, tiny_bert, glue_dir)
    out = capsys.readouterr().out
    assert "11 grid points, 6 trainings: 5 (45.5%) are the same computation" in out
    assert plan(config) == {"nkd": (1, 1), "kd": (2, 1), "alp": (4, 2), "ckd": (4, 2)}
    trials = _trials(storage)
    assert {m: len(ts) for m, ts in trials.items()} == {"nkd": 1, "kd": 2, "alp": 4, "ckd": 4}
    assert all(t.state == TrialState.COMPLETE for ts in trials.values() for t in ts)
    assert _check_trained_once(config, storage) == (6, 5)

    # Every trial has its dev logits at the reported epoch; the labels are stored once per study.
    db = Storage(storage, create=False)
    ids = [t._trial_id for ts in trials.values() for t in ts]
    stored = db.predictions(ids)
    assert set(stored) == set(ids)
    assert all(stored[t]["dev"][1].shape == (872, 2) for t in ids)
    assert set(db.labels()) == {f"tiny/SST-2/{m}" for m in METHODS}
    # ALP's attention is stored per epoch for its trained trials (student 2 × teacher 4 layers); CKD has none.
    for trial in trials["alp"]:
        alpha = trial.user_attrs["epochs"][0].get("alpha")
        assert (alpha is None) == (trial.user_attrs["lambda"] == 0)
        if alpha is not None:
            assert len(alpha) == 2 and all(len(row) == 4 and sum(row) == pytest.approx(1) for row in alpha)
    assert all("alpha" not in t.user_attrs["epochs"][0] for t in trials["ckd"])

    assert main(["status", "--storage", storage]) == 0
    status = capsys.readouterr().out
    assert "tiny/SST-2/alp: grid 4, complete 4, running 0, failed 0, pruned 0, left 0, shared 2" in status
    assert "tiny/SST-2/nkd: grid 1, complete 1, running 0, failed 0, pruned 0, left 0\n" in status

    # Again: nothing runs. Then seed confirmations: shared the same way.
    assert main(["run", str(tmp_path / "tiny.yaml"), *common]) == 0
    assert {m: len(ts) for m, ts in _trials(storage).items()} == {"nkd": 1, "kd": 2, "alp": 4, "ckd": 4}
    assert main(["confirm", "--top", "2", "--seeds", "2", "--name", "tiny", *common]) == 0
    trials = _trials(storage)
    assert {m: sum(bool(t.user_attrs.get("confirmation")) for t in ts) for m, ts in trials.items()} == {
        "nkd": 2,
        "kd": 4,
        "alp": 4,
        "ckd": 4,
    }
    trained, copied = _check_trained_once(config, storage)
    assert trained + copied == 11 + 14 and copied > 5  # confirmations shared too


def test_two_workers_share_without_training_twice(tmp_path, tiny_bert, glue_dir):
    config, storage, _ = _sweep(tmp_path, tiny_bert, glue_dir, "--workers", "2")
    trials = _trials(storage)
    assert {m: len(ts) for m, ts in trials.items()} == {"nkd": 1, "kd": 2, "alp": 4, "ckd": 4}
    assert _check_trained_once(config, storage) == (6, 5)


def test_tpe_shares_finished_equivalent_trials(tmp_path, tiny_bert, glue_dir):
    search = {**SEARCH, "sampler": "tpe", "n_trials": 4}
    config, storage, _ = _sweep(tmp_path, tiny_bert, glue_dir, search=search)
    trained, copied = _check_trained_once(config, storage)
    assert copied >= 1  # NKD runs first, so KD's η = 0 proposal (if any) and every later η = λ = 0 are copies
    assert trained + copied == sum(
        sum(t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs for t in ts)
        for ts in _trials(storage).values()
    )


def test_kills_at_random_moments_leave_one_training_per_computation(tmp_path, tiny_bert, glue_dir):
    import random
    import subprocess

    from conftest import REPO
    from test_resilience import _wait_then_kill, best_values

    study_file = write_study(
        tmp_path / "tiny.yaml", tiny_bert, methods=METHODS, fixed={**FIXED, "epochs": 2}, search=SEARCH
    )
    storage = f"sqlite:///{tmp_path / 'killed.db'}"
    command = run_command(study_file, storage, glue_dir, tmp_path / "cache")
    rng = random.Random(11)
    for _ in range(2):
        started, wait = time.monotonic(), rng.uniform(4.0, 9.0)
        process = subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        _wait_then_kill(process, lambda started=started, wait=wait: time.monotonic() - started > wait, limit=240)
    final = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr
    config = load_study(study_file)
    for method, trials in _trials(storage).items():
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        assert len(complete) == plan(config)[method][0] and not any(t.state == TrialState.RUNNING for t in trials)
    trained = sum(
        "equivalent_of" not in t.user_attrs
        for ts in _trials(storage).values()
        for t in ts
        if t.state == TrialState.COMPLETE
    )
    assert trained == 6 and _check_trained_once(config, storage) == (6, 5)
    clean = f"sqlite:///{tmp_path / 'clean.db'}"
    assert (
        main(
            [
                "run",
                str(study_file),
                "--storage",
                clean,
                "--data-dir",
                str(glue_dir),
                "--cache-dir",
                str(tmp_path / "clean-cache"),
            ]
        )
        == 0
    )
    assert best_values(storage) == best_values(clean)  # resumed trials give the uninterrupted numbers
