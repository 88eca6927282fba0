"""Lost claims: a worker whose point was taken over stops at its next step and writes nothing more for it;
heartbeats that cannot be written are retried with back-off and, past the grace period, count as lost."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from harness.store.claims import Claim, Heartbeat, pid_scope
from harness.util import signals

from conftest import REPO, run_command, write_study

# Trials long enough (300 steps of a tiny BERT) for a claim to be stolen or the server restarted mid-trial.
SLOW_TRIALS = {
    "epochs": 3,
    "batch_size": 8,
    "max_seq_length": 32,
    "max_train_samples": 800,
    "eval_batch_size": 256,
    "teacher": {"epochs": 1, "lr": 1e-4, "max_train_samples": 64},
}


class FakeStorage:
    """Answers ``_update`` like :class:`harness.store.storage.Storage`: rows changed, or raises ``errors`` first."""

    def __init__(self, owned: bool = True, errors: int = 0):
        self.owned, self.errors, self.calls = owned, errors, []

    def _update(self, study_name, key, me, **values) -> int:
        self.calls.append(time.monotonic())
        if self.errors:
            self.errors -= 1
            raise sa.exc.OperationalError("UPDATE", {}, Exception("server closed the connection"))
        return int(self.owned)


def claim_on(storage: FakeStorage) -> Claim:
    return Claim(storage, "s/SST-2/alp", "lr=0.0001,eta=0.5,lambda=0.2", {}, "me")


def test_a_taken_over_claim_stops_the_trial_at_its_next_step():
    claim = claim_on(FakeStorage(owned=False))
    with Heartbeat(claim, every=0.05):
        assert claim.lost.wait(2.0)
        with pytest.raises(signals.ClaimLost, match="taken over by another worker"):
            signals.check()
    signals.check()  # outside the block nothing is watched any more


def test_heartbeat_errors_are_retried_with_back_off_and_recover():
    storage = FakeStorage(errors=3)
    claim = claim_on(storage)
    with Heartbeat(claim, every=1.5, grace=60, retry=0.1):
        time.sleep(4.2)
    assert not claim.lost.is_set() and storage.errors == 0
    gaps = [b - a for a, b in zip(storage.calls, storage.calls[1:])]
    # three failures retried after 0.1, 0.2 and 0.4 s, then the regular 1.5 s beat again
    assert [round(gap, 1) for gap in gaps[:3]] == [0.1, 0.2, 0.4], gaps
    assert gaps[3] > 1.4, gaps


def test_heartbeats_failing_past_the_grace_period_count_as_a_lost_claim():
    claim = claim_on(FakeStorage(errors=10**6))
    with Heartbeat(claim, every=0.05, grace=0.5):
        assert claim.lost.wait(5.0)
        with pytest.raises(signals.ClaimLost, match="no heartbeat could be written"):
            signals.check()
    assert "OperationalError" in claim.lost_reason


def _dead_local_worker() -> str:
    """The id of a worker on this host and in this pid namespace whose process has exited."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return f"{socket.gethostname()}:{dead.stdout.strip()}:1:{pid_scope()}"


def test_a_worker_whose_claim_is_stolen_stops_and_the_new_owner_resumes(tmp_path, tiny_bert, glue_dir):
    """Steal the point under a running worker: it stops within about one heartbeat interval, leaves the epoch
    checkpoint, moves on; the point's new owner (here the same process, taking over from the 'dead' thief)
    resumes from the checkpoint, and every point ends with exactly one COMPLETE trial."""
    study_file = write_study(
        tmp_path / "steal.yaml",
        tiny_bert,
        methods=["nkd"],
        fixed=SLOW_TRIALS,
        search={"lr": [1e-4, 5e-5], "eta": [0.0], "lambda": [0.0]},
    )
    storage = f"sqlite:///{tmp_path / 'steal.db'}"
    cache = tmp_path / "cache"
    every = 0.5
    env = {**os.environ, "HARNESS_HEARTBEAT_SECONDS": str(every)}
    process = subprocess.Popen(
        run_command(study_file, storage, glue_dir, cache),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: lines.extend((time.monotonic(), line) for line in process.stdout))
    reader.start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None and not any(cache.glob("checkpoints/*/*.pt")):
        time.sleep(0.02)
    assert process.poll() is None, "the sweep ended before a checkpoint was written"
    engine = sa.create_engine(storage)
    with engine.begin() as connection:
        stolen = connection.execute(
            sa.text("UPDATE harness_grid_points SET worker = :thief WHERE state = 'claimed' RETURNING point_key"),
            {"thief": _dead_local_worker()},
        ).scalar_one()
    stolen_at = time.monotonic()
    assert process.wait(timeout=300) == 0
    reader.join()
    output = "".join(line for _, line in lines)
    lost = [at for at, line in lines if "taken over by another worker" in line]
    assert lost, output
    assert lost[0] - stolen_at < 2 * every + 2.0, output  # about one interval, plus a step and the log write

    trials = optuna.load_study(study_name="tiny/SST-2/nkd", storage=storage).get_trials()
    states = Counter((t.user_attrs.get("point"), t.state) for t in trials)
    assert {point for point, state in states if state == TrialState.COMPLETE} == {
        "lr=0.0001,eta=0,lambda=0",
        "lr=5e-05,eta=0,lambda=0",
    }
    assert all(count == 1 for (_, state), count in states.items() if state == TrialState.COMPLETE)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    resumed = [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs["point"] == stolen]
    assert resumed[0].user_attrs.get("resumed_from_epoch", 0) >= 1, output  # from the zombie's checkpoint
    zombie = [t for t in trials if t.user_attrs.get("point") == stolen and t.state != TrialState.COMPLETE]
    assert zombie and all(t.state == TrialState.FAIL for t in zombie)
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT state FROM harness_results WHERE trial_id IN :ids").bindparams(
                sa.bindparam("ids", expanding=True)
            ),
            {"ids": [t._trial_id for t in zombie]},
        ).all()
        points = connection.execute(sa.text("SELECT state FROM harness_grid_points")).all()
    assert all(state != "COMPLETE" for (state,) in rows)  # the zombie never marked its row COMPLETE
    assert [state for (state,) in points] == ["done", "done"]


def test_transient_database_errors_are_retried_and_others_are_not(monkeypatch):
    from harness.store import retry

    monkeypatch.setattr(retry.time, "sleep", lambda seconds: None)
    calls = []

    @retry.retrying
    def flaky(error):
        calls.append(error)
        if len(calls) < 3:
            raise error
        return "written"

    lost = sa.exc.OperationalError("UPDATE", {}, Exception("server closed the connection unexpectedly"))
    assert flaky(lost) == "written" and len(calls) == 3
    calls.clear()
    with pytest.raises(sa.exc.IntegrityError):
        flaky(sa.exc.IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert len(calls) == 1  # a constraint error is an answer, not a blip

    rdb = retry._retrying_rdb_class()
    cached = Path(optuna.storages._cached_storage.__file__).read_text()
    heartbeats = {"get_heartbeat_interval", "get_heartbeat_stale_trial_callback", "record_heartbeat"}  # unused
    calls = set(re.findall(r"self\._backend\.(\w+)", cached)) - heartbeats
    # every storage call a Study makes through Optuna's cache goes through the retries, private ones too
    assert calls and all(getattr(getattr(rdb, name), "retrying", False) for name in calls), calls

    wrapped = optuna.exceptions.StorageInternalError("An exception is raised during the commit.")
    wrapped.__cause__ = lost
    assert retry.transient(wrapped) and not retry.transient(ValueError("bad value"))
    # seen in CI: a restart mid-_get_trials leaves the session invalid, the commit then fails like this
    pending = optuna.exceptions.StorageInternalError("An exception is raised during the commit.")
    pending.__cause__ = sa.exc.PendingRollbackError("Can't reconnect until invalid transaction is rolled back.")
    assert retry.transient(pending)


def test_three_workers_survive_a_postgresql_restart(tmp_path, tiny_bert, glue_dir, postgres):
    """``pg_ctl restart -m fast`` twice mid-sweep: every worker reconnects (pool_pre_ping, retried calls) and
    the study ends with exactly one COMPLETE trial per point, no RUNNING trial, every point done."""
    from test_resilience import check_one_complete_per_point

    study_file = write_study(
        tmp_path / "restart.yaml",
        tiny_bert,
        methods=["nkd", "alp"],
        fixed=SLOW_TRIALS,
        search={"lr": [1e-4, 5e-5, 2e-5], "eta": [0.5], "lambda": [0.2]},
    )
    cache = tmp_path / "cache"
    env = {**os.environ, "HARNESS_HEARTBEAT_SECONDS": "0.5"}
    log = tmp_path / "sweep.log"  # a file, not a pipe: nobody reads a pipe while the test waits
    with log.open("w") as out:
        process = subprocess.Popen(
            run_command(study_file, postgres.url, glue_dir, cache, "--workers", "3"),
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    engine = sa.create_engine(postgres.url.replace(":not-shown", ""), pool_pre_ping=True)

    def done() -> int:
        try:
            with engine.connect() as connection:
                return connection.execute(
                    sa.text("SELECT count(*) FROM harness_results WHERE state = 'COMPLETE'")
                ).scalar()
        except sa.exc.SQLAlchemyError:  # the tables do not exist yet
            return 0

    restarts = 0
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and process.poll() is None and restarts < 2:
        if any(cache.glob("checkpoints/*/*.pt")) and done() >= restarts:  # mid-trial, once early, once later
            postgres.restart()
            restarts += 1
        time.sleep(0.1)
    process.wait(timeout=600)
    output = log.read_text()
    assert restarts == 2, output
    assert process.returncode == 0, output
    engine.dispose()
    check_one_complete_per_point(postgres.url, expected_points=3)
    engine = sa.create_engine(postgres.url)
    with engine.connect() as connection:
        points = connection.execute(sa.text("SELECT state FROM harness_grid_points")).all()
        results = connection.execute(sa.text("SELECT state FROM harness_results")).all()
    engine.dispose()
    assert [state for (state,) in points] == ["done"] * 6
    assert "RUNNING" not in {state for (state,) in results}


def test_running_trials_of_a_worker_on_another_host_are_failed_once_its_heartbeat_is_stale(tmp_path):
    """A worker on another machine that died (or lost touch) is judged by its claim's heartbeat: past the
    grace period its RUNNING trial is failed, so it stops counting against a TPE budget; a live one stays."""
    from harness.store.claims import GRACE_SECONDS
    from harness.store.storage import Storage
    from harness.sweep.settle import fail_orphans

    storage = Storage(f"sqlite:///{tmp_path / 'remote.db'}")
    study = optuna.create_study(study_name="s", storage=storage.optuna, direction="maximize")
    now = time.time()
    ids = {}
    for name, heartbeat in (("dead", now - GRACE_SECONDS - 60), ("alive", now)):
        worker = f"elsewhere-{name}:4242:1:0000.1"
        key = f"lr=0.0001,eta=0,lambda=0,{name}"
        trial = optuna.trial.create_trial(
            state=TrialState.RUNNING, user_attrs={"worker": worker, "claim": key}, params={}, distributions={}
        )
        trial.datetime_start = trial.datetime_start.fromtimestamp(now - GRACE_SECONDS - 120)
        study.add_trial(trial)
        ids[name] = study.get_trials()[-1]._trial_id
        storage.ensure_points("s", {key: {"lr": 1e-4, "eta": 0.0, "lambda": 0.0}})
        with storage.engine.begin() as connection:
            connection.execute(
                sa.text(
                    "UPDATE harness_grid_points SET state = 'claimed', worker = :w, trial_id = :t, heartbeat_at = :h "
                    "WHERE point_key = :k"
                ),
                {"w": worker, "t": ids[name], "h": heartbeat, "k": key},
            )
    fail_orphans(study, storage)
    states = {t._trial_id: t.state for t in study.get_trials()}
    assert states[ids["dead"]] == TrialState.FAIL and states[ids["alive"]] == TrialState.RUNNING


def test_a_claim_that_committed_while_its_connection_dropped_is_taken_back_on_the_retry(tmp_path):
    """The retried ``claim_next`` of a worker whose first try committed finds the point claimed by itself
    and takes it back (it asks only while holding no point of the study), so the point is not stranded."""
    from harness.store.storage import Storage

    storage = Storage(f"sqlite:///{tmp_path / 'retry.db'}", with_optuna=False)
    storage.ensure_points(
        "s", {"a": {"lr": 1e-4, "eta": 0.0, "lambda": 0.0}, "b": {"lr": 5e-5, "eta": 0.0, "lambda": 0.0}}
    )
    first = storage.claim_next("s", "host:1:1:x", max_attempts=3)  # committed, but say the answer was lost
    again = storage.claim_next("s", "host:1:1:x", max_attempts=3)
    assert again is not None and again.key == first.key and again.attempts == 1
    other = storage.claim_next("s", "host:2:1:x", max_attempts=3)
    assert other is not None and other.key != first.key
    assert storage.claim_next("s", "host:3:1:x", max_attempts=3) is None
