"""Grid claims: atomic, resumable, and safe under concurrent workers."""

from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys

import pytest

from harness.store.claims import worker_is_dead
from harness.store.storage import Storage, mask_url
from harness.util.errors import HarnessError

POINTS = {f"p{i}": {"lr": 1e-5 * (i + 1), "eta": 0.0, "lambda": 0.0} for i in range(12)}


def test_mask_url_hides_password():
    assert mask_url("postgresql://alice:s3cret@db.example/sweeps") == "postgresql://alice:***@db.example/sweeps"
    assert "s3cret" not in mask_url("postgresql+psycopg2://u:s3cret@h:5432/d")


def test_claims_cover_every_point_once(tmp_path):
    storage = Storage(f"sqlite:///{tmp_path / 'c.db'}")
    storage.ensure_points("s", POINTS)
    storage.ensure_points("s", POINTS)  # idempotent
    claimed = []
    while (claim := storage.claim_next("s", "host:1", max_attempts=3)) is not None:
        claimed.append(claim.key)
        claim.done()
    assert sorted(claimed) == sorted(POINTS)
    assert {row["state"] for row in storage.points("s")} == {"done"}


def test_released_point_is_retried_up_to_max_attempts(tmp_path):
    storage = Storage(f"sqlite:///{tmp_path / 'c.db'}")
    storage.ensure_points("s", {"only": POINTS["p0"]})
    for attempt in range(2):
        claim = storage.claim_next("s", "me:1", max_attempts=2)
        assert claim is not None and claim.key == "only"
        claim.release(f"boom {attempt}", max_attempts=2)
    assert storage.claim_next("s", "me:1", max_attempts=2) is None
    (row,) = storage.points("s")
    assert row["attempts"] == 2 and row["last_error"] == "boom 1" and row["state"] == "failed"


def test_taking_over_a_dead_workers_claim_uses_no_attempt(tmp_path):
    storage = Storage(f"sqlite:///{tmp_path / 'c.db'}")
    storage.ensure_points("s", {"only": POINTS["p0"]})
    for _ in range(5):  # five kills in a row never exhaust a point with max_attempts=1
        dead = subprocess.run(
            [sys.executable, "-c", "from harness.store.claims import worker_id; print(worker_id())"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        claim = storage.claim_next("s", dead, max_attempts=1)
        assert claim is not None and claim.key == "only"
    (row,) = storage.points("s")
    assert row["attempts"] == 1


def test_reused_pid_is_not_mistaken_for_the_dead_worker():
    import os

    from harness.store.claims import worker_id

    me = worker_id()
    assert not worker_is_dead(me)
    host, pid, start, scope = me.split(":")
    assert worker_is_dead(f"{host}:{pid}:{int(start) + 1}")  # same pid, another process
    assert not worker_is_dead(f"elsewhere:{os.getpid()}:1")  # other hosts: judged by heartbeat


def test_claim_of_dead_local_worker_is_taken_over(tmp_path):
    storage = Storage(f"sqlite:///{tmp_path / 'c.db'}")
    storage.ensure_points("s", {"only": POINTS["p0"]})
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    ghost = f"{socket.gethostname()}:{dead.stdout.strip()}"
    assert worker_is_dead(ghost)
    first = storage.claim_next("s", ghost, max_attempts=3)
    first.attach(41)
    second = storage.claim_next("s", "other-host:2", max_attempts=3)
    assert second is not None and second.key == "only"
    assert second.stale_trial_id == 41 and second.stale_worker == ghost  # whose trial to mark FAIL
    (row,) = storage.points("s")
    assert row["worker"] == "other-host:2" and row["attempts"] == 1  # a kill uses up no attempt


def test_live_claim_is_not_taken(tmp_path):
    import os
    import socket

    storage = Storage(f"sqlite:///{tmp_path / 'c.db'}")
    storage.ensure_points("s", {"only": POINTS["p0"]})
    me = f"{socket.gethostname()}:{os.getpid()}"
    assert storage.claim_next("s", me, max_attempts=3) is not None
    assert storage.claim_next("s", "other-host:1", max_attempts=3) is None


def _claimer(url: str, worker: str, out) -> None:
    storage = Storage(url)
    got = []
    while (claim := storage.claim_next("s", worker, max_attempts=1)) is not None:
        got.append(claim.key)
        claim.done()
    out.put(got)


def test_concurrent_claimers_never_share_a_point(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    points = {f"q{i:03d}": POINTS["p0"] for i in range(60)}
    Storage(url).ensure_points("s", points)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(url, f"w{i}:{i}", out)) for i in range(4)]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    flat = [key for got in results for key in got]
    assert sorted(flat) == sorted(points)  # every point exactly once


def test_storage_errors_are_one_line(tmp_path):
    with pytest.raises(HarnessError, match="does not exist"):
        Storage(f"sqlite:///{tmp_path}/nope/x.db")
    with pytest.raises(HarnessError, match="cannot use storage 'postgresql://u:\\*\\*\\*@127.0.0.1:1/x'"):
        Storage("postgresql://u:pw@127.0.0.1:1/x")


def test_only_a_run_creates_a_database(tmp_path):
    missing = tmp_path / "typo.db"
    with pytest.raises(HarnessError, match=r"no database at '.*typo\.db' \(running a study creates it"):
        Storage(f"sqlite:///{missing}", create=False)
    assert not missing.exists()
    Storage(f"sqlite:///{missing}")  # what `run` does
    assert Storage(f"sqlite:///{missing}", create=False).masked.endswith("typo.db")


def test_interrupt_uses_no_attempt_and_give_up_and_retry(tmp_path):
    storage = Storage(f"sqlite:///{tmp_path / 'c.db'}")
    storage.ensure_points("s", {"a": POINTS["p0"], "b": POINTS["p1"]})
    claim = storage.claim_next("s", "me:1", max_attempts=3, keys={"a"})
    claim.interrupt()
    rows = {row["point_key"]: row for row in storage.points("s")}
    assert (rows["a"]["state"], rows["a"]["attempts"]) == ("free", 0)
    storage.claim_next("s", "me:1", max_attempts=3, keys={"b"}).give_up("killed again and again")
    rows = {row["point_key"]: row for row in storage.points("s")}
    assert (rows["b"]["state"], rows["b"]["last_error"]) == ("failed", "killed again and again")
    assert storage.claim_next("s", "me:1", max_attempts=3, keys={"b"}) is None
    assert storage.retry_failed("s") == 1
    assert storage.claim_next("s", "me:1", max_attempts=3, keys={"b"}).attempts == 1


def _one_point_study(tmp_path):
    import optuna

    from harness.spec.config import grid_points, parse_study, point_key
    from harness.sweep.studies import open_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = Storage(f"sqlite:///{tmp_path / 'd.db'}")
    config = parse_study(
        {
            "name": "d",
            "task": "SST-2",
            "teacher": "synthetic",
            "student_layers": 2,
            "methods": ["nkd"],
            "search": {"lr": [1e-4]},
        }
    )
    study = open_study(storage, config, "nkd")
    key = point_key(grid_points(config, "nkd")[0])
    storage.ensure_points(study.study_name, {key: grid_points(config, "nkd")[0]})
    return storage, config, study, key


def test_a_point_whose_worker_keeps_dying_before_an_epoch_is_given_up(tmp_path):
    import socket

    import optuna
    from optuna.trial import TrialState

    from harness.sweep.driver import Runner, RunOptions
    from harness.sweep.settle import MAX_SILENT_DEATHS, silent_deaths

    storage, config, study, key = _one_point_study(tmp_path)

    def died(epochs=(), reason="worker died (claim taken over)"):
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.FAIL, user_attrs={"claim": key, "fail_reason": reason, "epochs": list(epochs)}
            )
        )

    died(epochs=[{"epoch": 1}])  # made progress: ends the run of silent deaths
    for _ in range(MAX_SILENT_DEATHS - 1):
        died()
    assert silent_deaths(study, key) == MAX_SILENT_DEATHS - 1
    died(reason="interrupted")
    assert silent_deaths(study, key) == 0
    for _ in range(MAX_SILENT_DEATHS):
        died()
    dead = f"{socket.gethostname()}:999999999:0"  # no such process on this host
    storage.claim_next(study.study_name, dead, max_attempts=3)  # held by a worker that is gone
    lines = []
    Runner(config, storage, None, RunOptions(cache_dir=tmp_path), log=lines.append).run_points(
        study, "nkd", {key}, None
    )  # gives up before building anything: no experiment needed
    (row,) = storage.points(study.study_name)
    assert row["state"] == "failed" and f"died {MAX_SILENT_DEATHS} times in a row" in row["last_error"]
    assert any("giving up" in line and "--retry-failed" in line for line in lines)
    from harness.tools.status import study_status

    assert any(
        line.startswith(f"    given up: {key} after 1 attempt(s): its worker died") for line in study_status(storage)
    )


def test_ctrl_c_frees_the_point_without_using_an_attempt(tmp_path):
    from types import SimpleNamespace

    from optuna.trial import TrialState

    from harness.sweep.driver import Runner, RunOptions

    storage, config, study, key = _one_point_study(tmp_path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    experiment = SimpleNamespace(
        teacher=SimpleNamespace(prepared=SimpleNamespace(key="t")), data_hashes={}, run_trial=interrupted
    )
    with pytest.raises(KeyboardInterrupt):
        Runner(config, storage, experiment, RunOptions(cache_dir=tmp_path), log=lambda line: None).run_points(
            study, "nkd", {key}, None
        )
    (row,) = storage.points(study.study_name)
    assert (row["state"], row["attempts"]) == ("free", 0)
    (trial,) = study.get_trials()
    assert trial.state == TrialState.FAIL and trial.user_attrs["fail_reason"] == "interrupted"


def test_status_reads_the_same_as_optunas_api(tmp_path):
    """``status`` reads Optuna's tables with plain SQL; its counts equal what Optuna's own API says."""
    import optuna
    from optuna.trial import TrialState, create_trial

    from harness.tools.status import study_status

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path / 's.db'}"
    storage = Storage(url)
    states = {
        "a/SST-2/kd": [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED],
        "a/SST-2/alp": [TrialState.COMPLETE, TrialState.RUNNING, TrialState.FAIL],
    }
    for name, kinds in states.items():
        study = optuna.create_study(study_name=name, storage=url)
        study.set_user_attr("grid_size", 5)
        for number, state in enumerate(kinds):
            attrs = {"point": f"p{number}", "worker": "host:1:2"}
            if name.endswith("alp") and number == 0:
                attrs["equivalent_of"] = 1
            study.add_trial(
                create_trial(state=state, value=0.5 if state == TrialState.COMPLETE else None, user_attrs=attrs)
            )
    running = optuna.load_study(study_name="a/SST-2/alp", storage=url).ask()  # started now
    running.set_user_attr("point", "p9")
    lines = study_status(Storage(url, create=False, with_optuna=False))
    summaries = sorted(optuna.get_all_study_summaries(url, include_best_trial=False), key=lambda s: s.study_name)
    heads = [line for line in lines if not line.startswith("    ")]
    assert len(heads) == len(summaries) == 2
    for head, summary in zip(heads, summaries):
        trials = storage.optuna.get_all_trials(summary._study_id, deepcopy=False)
        n = {s: sum(t.state == s for t in trials) for s in TrialState}
        shared = sum("equivalent_of" in t.user_attrs for t in trials)
        expected = (
            f"{summary.study_name}: grid 5, complete {n[TrialState.COMPLETE]}, running {n[TrialState.RUNNING]}, "
            f"failed {n[TrialState.FAIL]}, pruned {n[TrialState.PRUNED]}, "
            f"left {5 - n[TrialState.COMPLETE] - n[TrialState.PRUNED]}"
        )
        assert head == expected + (f", shared {shared} (copied from equivalent trials, not trained)" if shared else "")
    shown = [line for line in lines if line.startswith("    running:")]
    ids = [t._trial_id for t in storage.optuna.get_all_trials(summaries[0]._study_id) if t.state == TrialState.RUNNING]
    assert [line.split(" s")[0].rsplit(",", 1)[0] for line in shown] == [
        f"    running: trial_id {ids[0]} p1 on host:1:2",
        f"    running: trial_id {ids[1]} p9 on ?",
    ]
    assert 0 <= int(shown[1].rsplit(", ", 1)[1].split()[0]) <= 5  # its age: it was asked a moment ago


def test_a_worker_in_another_pid_namespace_is_judged_by_its_heartbeat(tmp_path):
    """Containers sharing a hostname: a pid missing *here* says nothing about a worker in another pid
    namespace, so its claim is taken over only when its heartbeat is older than the grace period."""
    import socket
    import time

    from harness.store.claims import GRACE_SECONDS, pid_scope, worker_id

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    here = f"{socket.gethostname()}:{dead.stdout.strip()}:1:{pid_scope()}"
    there = f"{socket.gethostname()}:{dead.stdout.strip()}:1:0000000000.4026531999"  # same host, other namespace
    assert worker_is_dead(here) and not worker_is_dead(there)
    assert worker_id().endswith(":" + pid_scope()) and pid_scope() != "0"
    storage = Storage(f"sqlite:///{tmp_path / 'ns.db'}")
    storage.ensure_points("s", {"only": POINTS["p0"]})
    storage.claim_next("s", there, max_attempts=3)
    assert storage.claim_next("s", "me:1", max_attempts=3) is None  # its heartbeat is fresh: it is alive
    import sqlalchemy as sa

    with storage.engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE harness_grid_points SET heartbeat_at = :t"), {"t": time.time() - GRACE_SECONDS - 1}
        )
    taken = storage.claim_next("s", "me:1", max_attempts=3)
    assert taken is not None and taken.stale_worker == there
