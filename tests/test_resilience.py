"""Sweeps that survive: SIGKILL at any moment, parallel workers on SQLite and PostgreSQL, bad set-ups."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from harness.cli import main

from conftest import REPO, report_readme, run_cli, run_command, run_here, sweep_args, write_study

KILL_STUDY = {
    "methods": ["nkd", "alp"],
    "fixed": {
        "epochs": 2,
        "max_seq_length": 32,
        "max_train_samples": 64,
        "eval_batch_size": 256,
        "teacher": {"epochs": 3, "lr": 1e-4, "max_train_samples": 256},
    },
    "search": {"lr": [1e-4, 5e-5], "eta": [0.5], "lambda": [0.2]},
}


def best_values(storage: str) -> dict[str, float]:
    return {
        s.study_name: optuna.load_study(study_name=s.study_name, storage=storage).best_value
        for s in optuna.get_all_study_summaries(storage)
    }


def check_one_complete_per_point(storage: str, expected_points: int) -> None:
    for summary in optuna.get_all_study_summaries(storage):
        trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()
        states = Counter(t.state for t in trials)
        assert states[TrialState.RUNNING] == 0, summary.study_name
        # TPE tells a re-proposed point its earlier outcome (duplicate_of): not a second training
        complete = [t for t in trials if t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs]
        points = [t.user_attrs["point"] for t in complete]
        assert len(points) == len(set(points)) == expected_points, (summary.study_name, points)


def _wait_then_kill(process: subprocess.Popen, ready, limit: float) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and process.poll() is None:
        if ready():
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.05)
    process.wait()
    return False


@pytest.fixture(scope="module")
def uninterrupted_kill_sweep(tmp_path_factory, tiny_bert, glue_dir) -> dict:
    """The reference sweep: :data:`KILL_STUDY` run once without interruption, in this process, with its own cache
    (its own teacher fine-tuning); ``best`` the best value of each study, ``readme`` its report's main document
    (:func:`conftest.report_readme`). Shared by the grid and the TPE kill tests: TPE's budget is every valid point
    here (2 per method), and a trial is a function of its point and seed alone, so an uninterrupted TPE sweep has
    exactly these best values."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    study_file = write_study(folder / "kill.yaml", tiny_bert, **KILL_STUDY)
    storage = f"sqlite:///{folder / 'clean.db'}"
    assert main(["run", str(study_file), *sweep_args(storage, glue_dir, folder / "cache")]) == 0
    return {"best": best_values(storage), "readme": report_readme(storage, folder / "report")}


@pytest.mark.parametrize("sampler", ["grid", "tpe"])
def test_sigkill_at_random_moments_then_resume(tmp_path, tiny_bert, glue_dir, sampler, uninterrupted_kill_sweep):
    study = {**KILL_STUDY, "search": {**KILL_STUDY["search"], "sampler": sampler}}
    study_file = write_study(tmp_path / "kill.yaml", tiny_bert, **study)
    storage = f"sqlite:///{tmp_path / 'killed.db'}"
    cache = tmp_path / "cache"
    command = run_command(study_file, storage, glue_dir, cache)

    def start():
        return subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )

    rng = random.Random(7)
    started = time.monotonic()
    kills = {
        "inside teacher fine-tuning": lambda: any(cache.glob("teachers/*.ckpt")),
        "mid-trial (after an epoch checkpoint)": lambda: any(cache.glob("checkpoints/*/*.pt")),
        "at a random moment": lambda: time.monotonic() - started > rng.uniform(1.0, 4.0),
        "at another random moment": lambda: time.monotonic() - started > rng.uniform(1.0, 4.0),
    }
    killed = []
    for moment, ready in kills.items():
        started = time.monotonic()
        if _wait_then_kill(start(), ready, limit=240):
            killed.append(moment)
    assert killed[:2] == ["inside teacher fine-tuning", "mid-trial (after an epoch checkpoint)"], killed

    final = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr
    check_one_complete_per_point(storage, expected_points=2)

    assert best_values(storage) == uninterrupted_kill_sweep["best"]
    if sampler == "grid":  # the same study file: the report of the killed and resumed sweep is the same text (its
        # dead workers' trials, trial numbers and wall times are in runs.md); a TPE study file is another study file
        assert report_readme(storage, tmp_path / "report") == uninterrupted_kill_sweep["readme"]


def _duplicate_free_sweep(
    storage: str, workers: int, tmp_path: Path, tiny_bert: Path, glue_dir: Path, sampler: str = "grid"
) -> None:
    lrs = [1e-4, 8e-5, 6e-5, 5e-5]  # 8 points over 2 methods: enough for every worker to claim and race
    study_file = write_study(
        tmp_path / "par.yaml",
        tiny_bert,
        methods=["nkd", "kd"],
        fixed={
            "epochs": 1,
            "max_seq_length": 32,
            "max_train_samples": 32,
            "eval_batch_size": 512,
            "teacher": {"epochs": 1, "max_train_samples": 32},
        },
        search={"lr": lrs, "eta": [0.5], "sampler": sampler},
    )
    started = time.monotonic()
    result = run_cli(
        "run",
        str(study_file),
        "--storage",
        storage,
        "--data-dir",
        str(glue_dir),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--workers",
        str(workers),
    )
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "locked" not in result.stderr + result.stdout
    # the parent's one progress bar over its workers ends at every point of both methods; stderr is a pipe
    # here, not a terminal, so the bar writes once a minute (plus its opening and closing lines), not every 5 s
    assert "tiny/SST-2: 100%" in result.stderr and f"{2 * len(lrs)}/{2 * len(lrs)}" in result.stderr
    assert result.stderr.count("tiny/SST-2:") <= 4 + took // 60, result.stderr  # open, first, last, close
    check_one_complete_per_point(storage, expected_points=len(lrs))
    for summary in optuna.get_all_study_summaries(storage):
        trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()
        trials = [t for t in trials if "duplicate_of" not in t.user_attrs]  # TPE proposals of taken points
        assert all(t.state == TrialState.COMPLETE for t in trials)  # nothing failed, nothing ran twice
        assert len({t.user_attrs["worker"] for t in trials}) > 1  # the work was really shared


@pytest.mark.parametrize("sampler", ["grid", "tpe"])
def test_four_workers_on_sqlite_run_every_point_once(tmp_path, tiny_bert, glue_dir, sampler):
    _duplicate_free_sweep(f"sqlite:///{tmp_path / 'par.db'}", 4, tmp_path, tiny_bert, glue_dir, sampler)


def test_eight_workers_on_postgresql_run_every_point_once(tmp_path, tiny_bert, glue_dir, postgres_url):
    _duplicate_free_sweep(postgres_url, 8, tmp_path, tiny_bert, glue_dir)
    status = run_cli("status", "--storage", postgres_url)
    assert status.returncode == 0
    assert "not-shown" not in status.stdout + status.stderr
    assert "postgres:***@127.0.0.1" in status.stdout


def test_reused_name_with_other_setup_and_corrupt_checkpoint_are_one_line(tmp_path, tiny_bert, glue_dir, capsys):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    common = sweep_args(storage, glue_dir, tmp_path / "cache")
    fixed = {
        "epochs": 1,
        "max_seq_length": 32,
        "max_train_samples": 32,
        "eval_batch_size": 512,
        "teacher": {"epochs": 1, "max_train_samples": 32},
    }
    first = write_study(tmp_path / "a.yaml", tiny_bert, methods=["nkd"], fixed=fixed, search={"lr": [1e-4]})
    assert main(["run", str(first), *common]) == 0
    capsys.readouterr()

    changed = write_study(
        tmp_path / "b.yaml", tiny_bert, methods=["nkd"], fixed={**fixed, "epochs": 2}, search={"lr": [1e-4]}
    )
    assert main(["run", str(changed), *common]) == 2
    err = capsys.readouterr().err
    assert "study 'tiny/SST-2/nkd' already exists" in err and err.count("\n") == 1

    more = write_study(
        tmp_path / "c.yaml", tiny_bert, name="other", methods=["nkd"], fixed=fixed, search={"lr": [1e-4, 5e-5]}
    )
    # Run one of its two points, then plant a corrupt epoch checkpoint where the other will look for it.
    before = set((tmp_path / "cache" / "checkpoints").iterdir())
    assert main(["run", str(more), *common, "--n-trials", "1"]) == 0
    capsys.readouterr()
    (folder,) = set((tmp_path / "cache" / "checkpoints").iterdir()) - before
    (folder / "lr=5e-05,eta=0,lambda=0.pt").write_bytes(b"not a checkpoint")
    assert main(["run", str(more), *common]) == 2
    err = capsys.readouterr().err
    assert "is corrupt" in err and "lr=5e-05" in err and err.count("\n") == 1


def test_reproduce_a_stored_trial(tmp_path, tiny_bert, glue_dir, capsys):
    """The sweep runs in this process; ``reproduce`` in a fresh one, from the database alone."""
    storage = f"sqlite:///{tmp_path / 'r.db'}"
    study_file = write_study(
        tmp_path / "r.yaml",
        tiny_bert,
        methods=["alp"],
        fixed={
            "epochs": 1,
            "max_seq_length": 32,
            "max_train_samples": 32,
            "eval_batch_size": 512,
            "teacher": {"epochs": 1, "max_train_samples": 32},
        },
        search={"lr": [1e-4], "eta": [0.5], "lambda": [0.2]},
    )
    assert main(["run", str(study_file), *sweep_args(storage, glue_dir, tmp_path / "cache")]) == 0
    trial = optuna.load_study(study_name="tiny/SST-2/alp", storage=storage).best_trial
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "run_study.py"),
            "reproduce",
            str(trial._trial_id),
            "--storage",
            storage,
            "--data-dir",
            str(glue_dir),
            "--cache-dir",
            str(tmp_path / "other"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert f"stored {trial.value}, reproduced {trial.value:.6f} (difference +0.00e+00)" in result.stdout
    missing = run_here(capsys, "reproduce", "999", "--storage", storage)
    assert missing.returncode == 2 and "no trial with trial_id 999" in missing.stderr


def test_optuna_dashboard_opens_the_same_database(tmp_path):
    """Our tables sit beside Optuna's without changing them: optuna-dashboard lists the studies and trials."""
    import io
    import json

    import optuna_dashboard

    from harness.spec.config import parse_study
    from harness.store.storage import Storage
    from harness.sweep.studies import open_study

    url = f"sqlite:///{tmp_path / 'd.db'}"
    storage = Storage(url)
    config = parse_study(
        {"name": "dash", "task": "RTE", "teacher": "minilm-l6", "student_layers": 2, "methods": ["alp"]}
    )
    study = open_study(storage, config, "alp")
    storage.ensure_points(study.study_name, {"p": {"lr": 1e-5, "eta": 0.0, "lambda": 0.0}})
    steps = {
        "columns": ["step", "ce", "total", "grad_norm", "lr"],
        "rows": [[50 * i, 0.7, 0.7, 1.2, 1e-5] for i in range(40)],
    }
    epoch = {"epoch": 1, "value": 0.61, "metrics": {"dev": {"accuracy": 0.61}}, "losses": {"ce": 0.7}, "steps": steps}
    study.add_trial(
        optuna.trial.create_trial(
            value=0.61,
            params={"lr": 1e-5},
            distributions={"lr": optuna.distributions.CategoricalDistribution([1e-5, 2e-5])},
            user_attrs={"epochs": [epoch]},
        )
    )
    app = optuna_dashboard.wsgi(url)

    def get(path: str) -> dict:
        status = []
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": path,
            "QUERY_STRING": "",
            "SERVER_NAME": "localhost",
            "SERVER_PORT": "80",
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(),
            "wsgi.errors": io.StringIO(),
            "SERVER_PROTOCOL": "HTTP/1.1",
        }
        body = b"".join(app(environ, lambda code, headers, *rest: status.append(code)))
        assert status[0].startswith("200"), (path, status)
        return json.loads(body)

    summaries = get("/api/studies")["study_summaries"]
    assert [s["study_name"] for s in summaries] == ["dash/RTE/alp"]
    detail = get(f"/api/studies/{summaries[0]['study_id']}")
    assert [t["values"] for t in detail["trials"]] == [[0.61]]
    # The step log is listed with the trial; the dashboard cuts long values at 1,024 characters (TensorBoard or
    # the database show it whole).
    shown = {a["key"]: a["value"] for a in detail["trials"][0]["user_attrs"]}
    assert shown["epochs"].startswith('[{"epoch": 1') and '"steps": {"columns"' in shown["epochs"]


def test_continuing_a_study_with_other_data_is_refused(tmp_path, tiny_bert, glue_dir, capsys):
    """A study is tied to its teacher checkpoint and data files: other GLUE files mean another teacher."""
    storage = f"sqlite:///{tmp_path / 's.db'}"
    study_file = write_study(
        tmp_path / "a.yaml",
        tiny_bert,
        methods=["nkd"],
        search={"lr": [1e-4, 5e-5]},
        fixed={
            "epochs": 1,
            "max_seq_length": 32,
            "max_train_samples": 32,
            "eval_batch_size": 512,
            "teacher": {"epochs": 1, "max_train_samples": 32},
        },
    )
    common = ["--storage", storage, "--cache-dir", str(tmp_path / "cache")]
    assert main(["run", str(study_file), *common, "--data-dir", str(glue_dir), "--n-trials", "1"]) == 0
    other = tmp_path / "glue"
    (other / "SST-2").mkdir(parents=True)
    for split in ("train", "dev"):
        lines = (glue_dir / "SST-2" / f"{split}.tsv").read_text().splitlines()
        (other / "SST-2" / f"{split}.tsv").write_text("\n".join(lines[:-1]) + "\n")  # one row fewer
    capsys.readouterr()
    assert main(["run", str(study_file), *common, "--data-dir", str(other)]) == 2
    err = capsys.readouterr().err
    assert "was run with teacher checkpoint" in err and err.count("\n") == 1


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_gives_the_point_back_like_ctrl_c(tmp_path, tiny_bert, glue_dir, workers):
    """SLURM preemption, ``docker stop``, systemd: SIGTERM mid-trial frees the point at once (trial FAIL
    "interrupted", no attempt used, checkpoint kept), exit 143; the next run finishes every point once."""
    study_file = write_study(tmp_path / "term.yaml", tiny_bert, **KILL_STUDY)
    storage = f"sqlite:///{tmp_path / 'term.db'}"
    cache = tmp_path / "cache"
    command = run_command(study_file, storage, glue_dir, cache, "--workers", str(workers))
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None and not any(cache.glob("checkpoints/*/*.pt")):
        time.sleep(0.05)
    assert process.poll() is None, "the sweep ended before a checkpoint was written"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "terminated (SIGTERM)" in stderr and "Traceback" not in stderr
    engine = sa.create_engine(storage)
    with engine.connect() as connection:
        points = connection.execute(sa.text("SELECT state, attempts FROM harness_grid_points")).all()
    assert all(state in ("free", "done") for state, _ in points) and any(state == "free" for state, _ in points)
    assert all(attempts <= 1 and (state == "done") == (attempts == 1) for state, attempts in points)
    trials = [
        t
        for s in optuna.get_all_study_summaries(storage)
        for t in optuna.load_study(study_name=s.study_name, storage=storage).get_trials()
    ]
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert any(t.state == TrialState.FAIL and t.user_attrs.get("fail_reason") == "interrupted" for t in trials)
    assert any(cache.glob("checkpoints/*/*.pt"))  # kept for the next run
    final = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr
    check_one_complete_per_point(storage, expected_points=2)
