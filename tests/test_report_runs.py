"""Issue 21: the report's main document is a function of the results alone; how the sweep ran is in runs.md.

Two databases hold the same results, written as two differently scheduled sweeps would write them (other trial
numbers and order, an interrupted trial and a dead worker's trial whose points were run again, other wall
times and workers): their README.md must be the same text, their runs.md not.
"""

from __future__ import annotations

import optuna
import pandas as pd
from optuna.trial import TrialState, create_trial

from harness.report.document import load, markdown_report, write_report
from harness.report.frame import best_trials, grid_order
from harness.store.storage import Storage

from test_report_statistics import _config, _table, build, correct_first, noisy

KD_LOW, KD_HIGH = "lr=1e-05,eta=0.5,lambda=0", "lr=5e-05,eta=0.5,lambda=0"
ALP, NKD = "lr=1e-05,eta=0.5,lambda=0.5", "lr=1e-05,eta=0,lambda=0"


def setup_module():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _params(point: str) -> dict:
    return {k: float(v) for k, v in (p.split("=") for p in point.split(","))}


def _trial(point, value, score=None, *, seed=42, seconds=60.0, worker="a:1", state=TrialState.COMPLETE, **attrs):
    """A trial as a worker stores it; ``value`` selects, ``score`` is its dev accuracy (default: the value)."""
    epochs = [
        {"epoch": 1, "value": value - 0.1, "metrics": {"dev": {"accuracy": (score or value) - 0.1}}, "seconds": 1.0},
        {"epoch": 2, "value": value, "metrics": {"dev": {"accuracy": score or value}}, "seconds": 1.0},
    ]
    user = {"point": point, **_params(point), "seed": seed, "worker": worker, "device": "cpu:2threads"}
    user.update(epochs=epochs, seconds=seconds, **attrs)
    if state == TrialState.COMPLETE:
        user["best_epoch"] = 2
    else:
        user["epochs"] = epochs[:1]
    return create_trial(state=state, value=value if state == TrialState.COMPLETE else None, user_attrs=user)


def _results() -> dict:
    """method → [(trial, dev predictions or None)]: the results of the sweep, in one local worker's order.

    kd's two grid points tie on the selection value (holdout) and differ on dev: which one the report takes is
    the tie-break's, and so are its dev score, the paired bootstrap against it and its equal-budget curve."""
    return {
        "nkd": [(_trial(NKD, 0.70), noisy(0.70, 1))],
        "kd": [
            (_trial(KD_LOW, 0.80, 0.74), correct_first(150)),
            (_trial(KD_HIGH, 0.80, 0.70), correct_first(140)),
        ]
        + [(_trial(KD_LOW, 0.8, 0.7 + s / 100, seed=s, confirmation=True), None) for s in (1, 2, 3)],
        "alp": [
            (_trial(ALP, 0.82, 0.76), noisy(0.76, 2)),
            (_trial("lr=5e-05,eta=0.5,lambda=0.5", 0.60), None),
            (_trial("lr=5e-05,eta=0,lambda=0.5", 0.50, state=TrialState.FAIL, fail_reason="RuntimeError: boom"), None),
        ]
        + [(_trial(ALP, 0.8, 0.72 + s / 100, seed=s, confirmation=True), None) for s in (1, 2, 3)],
    }


def _as_a_cluster_ran_it(rows: list) -> list:
    """The same results as another schedule leaves them: reversed order, other wall times and workers, and for
    each method an interrupted trial (preempted after one epoch, its point resumed) and a dead worker's trial."""
    moved = []
    for trial, predicted in reversed(rows):
        user = {**trial.user_attrs, "seconds": 3 * trial.user_attrs["seconds"] + 7, "worker": "node2:77"}
        moved.append((create_trial(state=trial.state, value=trial.value, user_attrs=user), predicted))
    first = rows[0][0].user_attrs
    stopped = _trial(first["point"], 0.0, state=TrialState.FAIL, fail_reason="interrupted", worker="node1:5")
    died = _trial(first["point"], 0.0, state=TrialState.FAIL, fail_reason="worker died (claim taken over)")
    died.user_attrs.update(epochs=[], device="cuda:NVIDIA H100")  # died before an epoch, on another device kind
    return [(stopped, None), *moved[:1], (died, None), *moved[1:]]


def _build(url: str, rows: dict) -> Storage:
    return build(url, rows, selection="holdout", epoch=2)  # predictions at the reported (last) epoch


def test_the_main_document_depends_on_the_results_alone_and_runs_md_on_the_run(tmp_path):
    local = _results()
    cluster = {method: _as_a_cluster_ran_it(rows) for method, rows in local.items()}
    documents = {}
    for name, rows in (("local", local), ("cluster", cluster)):
        url = f"sqlite:///{tmp_path / name}.db"
        command = f"python run_study.py report --storage {url}"
        readme = write_report(_build(url, rows), tmp_path / name, None, command, workers=1)
        documents[name] = (readme.read_text().replace(url, "DB"), (readme.parent / "runs.md").read_text())
    (local_readme, local_runs), (cluster_readme, cluster_runs) = documents["local"], documents["cluster"]
    assert local_readme == cluster_readme
    # the tie went to the first point in grid order (lr 1e-05), in both: its dev score, not the other's 70.00
    assert {r[0]: r for r in _table(local_readme, "## Comparison")}["kd"][1] == "74.00"
    assert "3 studies, 12 trials: 11 complete, 1 failed, 0 pruned, 0 running." in local_readme
    assert "Note" not in local_readme  # the dead worker's trial on another device trained nothing that counts
    # runs.md: the same counts with the interrupted trials beside them, the trial numbers, other hours
    assert "3 studies, 12 trials: 11 complete, 1 failed, 0 interrupted, 0 pruned, 0 running." in local_runs
    assert "3 studies, 18 trials: 11 complete, 1 failed, 6 interrupted, 0 pruned, 0 running." in cluster_runs
    kd = {name: {r[0]: r for r in _table(runs, "### s / SST-2")}["kd"] for name, (_, runs) in documents.items()}
    assert kd["local"][1:4] == ["0", KD_LOW, "2"] and kd["local"][5] == "0"
    assert kd["cluster"][1:4] == ["6", KD_LOW, "2"] and kd["cluster"][5] == "2"  # the last trial of this order
    assert kd["local"][9] == "1" and kd["cluster"][9] == "3"  # workers
    assert local_runs != cluster_runs


def test_a_tie_between_grid_points_goes_to_the_first_in_grid_order_whatever_the_trial_order(tmp_path):
    # Old rule: the earliest trial, so the order the workers happened to finish in chose the grid point. The
    # selections outside the report (confirm --top, export --best, keep_students: best) break ties the same way.
    from harness.sweep.confirm import confirmation_points
    from harness.tools.export import _best

    tied = [(_trial(KD_HIGH, 0.8, 0.70), None), (_trial(KD_LOW, 0.8, 0.74), None)]
    cells = []
    for name, rows in (("forward", tied), ("backward", tied[::-1])):
        storage = _build(f"sqlite:///{tmp_path / name}.db", {"kd": rows})
        snapshot = load(storage)
        assert best_trials(snapshot.frame, ["task", "method"]).iloc[0]["point"] == KD_LOW
        assert _best(storage, None, None, None)[0].user_attrs["point"] == KD_LOW
        study = optuna.load_study(study_name="s/SST-2/kd", storage=storage.optuna)
        assert list(confirmation_points(_config("SST-2", ["kd"], "holdout"), study, 1, 1)) == [f"{KD_LOW},seed=43"]
        text = markdown_report(snapshot, "python run_study.py report", budget=2)
        cells.append(({r[0]: r for r in _table(text, "## Comparison")}["kd"][1], _table(text, "## Equal budget")[2][1]))
    assert cells == [("74.00", "74.00 ± 0.00 (2)")] * 2


def test_grid_order_is_lr_eta_lambda_then_the_extra_value_then_the_seed():
    points = [
        ("lr=1e-05,eta=0.5,lambda=0,temperature=10", 1),
        ("lr=1e-05,eta=0.5,lambda=0,temperature=2", 2),
        ("lr=1e-05,eta=0.5,lambda=0,temperature=2", 1),
        ("lr=1e-05,eta=0,lambda=0.5,temperature=4", 1),
        ("lr=5e-06,eta=0.5,lambda=0,temperature=4", 1),
    ]
    frame = pd.DataFrame(
        [{"study": "s", "point": p, **_params(p), "seed": seed, "number": n} for n, (p, seed) in enumerate(points)]
    )
    assert list(grid_order(frame)["number"]) == [4, 3, 2, 1, 0]


def test_a_point_given_up_after_its_workers_died_stays_a_failure_in_the_main_document(tmp_path):
    """Stopped trials are left out of the main document only when another trial finished their point: a point
    whose worker was killed three times (the out-of-memory killer) and given up is a result, and says so."""
    died = [(_trial(KD_HIGH, 0.0, state=TrialState.FAIL, fail_reason="worker died (claim taken over)"), None)] * 3
    rows = {"kd": [(_trial(KD_LOW, 0.80, 0.74), correct_first(150)), *died]}
    url = f"sqlite:///{tmp_path / 'oom.db'}"
    readme = write_report(_build(url, rows), tmp_path / "oom", None, "python run_study.py report", workers=1)
    assert "1 studies, 4 trials: 1 complete, 3 failed, 0 pruned, 0 running." in readme.read_text()
    assert "1 complete, 3 failed, 0 interrupted" in (readme.parent / "runs.md").read_text()
