"""run_study.py end to end on a tiny model and real SST-2 files: run, resume, report, bad input."""

from __future__ import annotations

import re
import shlex
from functools import partial

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from harness.cli import main
from harness.spec.config import grid_rank
from harness.sweep.tensorboard import run_folder

from conftest import read_scalars, run_cli, run_here, sweep_args, write_study


def test_run_resume_and_report(tmp_path, tiny_bert, glue_dir, capsys):
    """The first run, its resumption, the first report and the first confirmation are real processes; the
    commands after them, which only re-check what those did, run in this process (:func:`run_here`)."""
    here = partial(run_here, capsys)
    study_file = write_study(tmp_path / "tiny.yaml", tiny_bert)
    storage = f"sqlite:///{tmp_path / 'sweep.db'}"
    board = tmp_path / "tensorboard"
    common = sweep_args(storage, glue_dir, tmp_path / "cache")
    common += ["--tensorboard", str(board)]

    # An interrupted sweep: one trial per method only.
    first = run_cli("run", str(study_file), *common, "--n-trials", "1")
    assert first.returncode == 0, first.stderr
    assert "nkd: 2 grid points" in first.stdout
    assert "kd: 2 grid points" in first.stdout
    assert "alp: 2 grid points" in first.stdout  # η=0.5 with λ=0.7 is invalid (β < 0)
    kept = {
        s.study_name: s.get_trials()[0]
        for s in (optuna.load_study(study_name=f"tiny/SST-2/{m}", storage=storage) for m in ("nkd", "kd", "alp"))
    }

    # Running the same command again continues: finished trials are kept, nothing runs twice.
    second = run_cli("run", str(study_file), *common)
    assert second.returncode == 0, second.stderr
    assert "1 finished, 1 to run" in second.stdout
    for name, first_trial in kept.items():
        trials = optuna.load_study(study_name=name, storage=storage).get_trials()
        assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
        assert trials[0].value == first_trial.value and trials[0].params == first_trial.params
        assert len({(t.params["lr"], t.params["eta"], t.params["lambda"]) for t in trials}) == 2
        for trial in trials:
            assert 0.0 <= trial.value <= 1.0
            assert [e["epoch"] for e in trial.user_attrs["epochs"]] == [1, 2]
            assert trial.value == max(e["value"] for e in trial.user_attrs["epochs"])
            assert trial.user_attrs["epochs"][0]["metrics"]["dev"]["accuracy"] >= 0

    # A third run has nothing left to do.
    third = here("run", str(study_file), *common)
    assert third.returncode == 0 and "2 finished, 0 to run" in third.stdout

    out = tmp_path / "report"
    report = run_cli("report", "--storage", storage, "--out", str(out), "--name", "tiny")
    assert report.returncode == 0, report.stderr
    text = (out / "README.md").read_text()
    frame = pd.read_csv(out / "trials.csv")
    assert len(frame) == 6
    for method in ("nkd", "kd", "alp"):
        study = optuna.load_study(study_name=f"tiny/SST-2/{method}", storage=storage)
        grid = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if not t.user_attrs.get("confirmation")]
        best = min(grid, key=lambda t: (-t.value, grid_rank(t.user_attrs)))  # the report's tie-break: grid order
        row = next(line for line in text.split("## Studies", 1)[1].splitlines() if line.startswith(f"| {method} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == f"{100 * best.value:.2f}"
        assert float(cells[2]) == best.params["lr"]
        assert float(cells[3]) == best.params["eta"] and float(cells[4]) == best.params["lambda"]
    assert "| teacher |" in text
    # The report says how to export the section's best student; that command, as written, works.
    export = shlex.split(re.search(r"Export the student: `([^`]+)`", text).group(1))
    assert export[:5] == ["python", "run_study.py", "export", "--best", "--name"] and storage in export
    export[export.index("--out") + 1] = str(tmp_path / "student")
    exported = here(*export[2:], "--data-dir", str(glue_dir), "--cache-dir", str(tmp_path / "cache"))
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "student" / "model.safetensors").is_file() and (tmp_path / "student" / "README.md").is_file()
    again = tmp_path / "again"
    assert here("report", "--storage", storage, "--out", str(again), "--name", "tiny").returncode == 0
    assert (again / "README.md").read_text() == text

    # Seed confirmations of the best configuration: stored as flagged trials, resumable, never duplicated.
    for run in (run_cli, here):
        confirm = run(
            "confirm",
            "--top",
            "1",
            "--seeds",
            "2",
            "--storage",
            storage,
            "--name",
            "tiny",
            "--data-dir",
            str(glue_dir),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--tensorboard",
            str(board),
        )
        assert confirm.returncode == 0, confirm.stderr
    for method in ("nkd", "kd", "alp"):
        trials = optuna.load_study(study_name=f"tiny/SST-2/{method}", storage=storage).get_trials()
        grid = [t for t in trials if not t.user_attrs["confirmation"]]
        extra = [t for t in trials if t.user_attrs["confirmation"]]
        best = min(grid, key=lambda t: (-t.value, grid_rank(t.user_attrs)))  # ties (they happen here): grid order
        assert sorted(t.user_attrs["seed"] for t in extra) == [43, 44]
        assert {t.user_attrs["point"] for t in extra} == {best.user_attrs["point"]}
        assert all(t.state.name == "COMPLETE" for t in extra)

    # --tensorboard: one run per trial (grid points and confirmations), holding what the database stores.
    for method in ("nkd", "kd", "alp"):
        for trial in optuna.load_study(study_name=f"tiny/SST-2/{method}", storage=storage).get_trials():
            seed = trial.user_attrs["seed"] if trial.user_attrs["confirmation"] else None
            scalars = read_scalars(run_folder(board, f"tiny/SST-2/{method}", trial.user_attrs["point"], seed))
            epochs = trial.user_attrs["epochs"]
            stored = [row[-3] for record in epochs for row in record["steps"]["rows"]]  # the total loss
            assert [v for _, v in scalars["train/total"]] == pytest.approx(stored)
            assert [v for _, v in scalars["dev/accuracy"]] == pytest.approx(
                [record["metrics"]["dev"]["accuracy"] for record in epochs]
            )
    assert len(list(board.glob("*/*"))) == 6 + 3 * 2

    status = here("status", "--storage", storage)
    assert "tiny/SST-2/alp: grid 2, complete 4, running 0, failed 0, pruned 0, left 0" in status.stdout


BAD_INPUTS = [
    ({"task": "sst3"}, "task: unknown task 'sst3'"),
    ({"methods": ["nkd", "alp-x"]}, "unknown method 'alp-x'"),
    ({"search": {"eta": [0.7], "lambda": [0.5]}}, "method 'alp' has no valid grid point"),
    ({"student_layers": "two"}, "student_layers"),
    ({"colour": "blue"}, "colour: unknown key"),
    ({"fixed": {"epochs": 1, "batchsize": 8}}, "fixed.batchsize: unknown key"),
]


@pytest.mark.parametrize(("change", "message"), BAD_INPUTS)
def test_bad_study_file_is_one_line(tmp_path, tiny_bert, capsys, change, message):
    study_file = write_study(tmp_path / "bad.yaml", tiny_bert, **change)
    code = main(["run", str(study_file), "--storage", f"sqlite:///{tmp_path / 'x.db'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert not (tmp_path / "x.db").exists()


def test_missing_inputs_are_one_line(tmp_path, tiny_bert, capsys):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read study file" in capsys.readouterr().err
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    assert main(["run", str(tmp_path / "broken.yaml")]) == 2
    assert "is not valid YAML" in capsys.readouterr().err
    study_file = write_study(tmp_path / "ok.yaml", tiny_bert)
    assert main(["run", str(study_file), "--data-dir", str(tmp_path / "no-glue")]) == 2
    assert "no-glue" in capsys.readouterr().err
    empty = tmp_path / "empty-glue"
    empty.mkdir()
    code = main(
        [
            "run",
            str(study_file),
            "--data-dir",
            str(empty),
            "--storage",
            f"sqlite:///{tmp_path / 'y.db'}",
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    assert code == 2 and "SST-2" in capsys.readouterr().err
    assert not (tmp_path / "y.db").exists()  # nothing half-written: the database is opened after the inputs check


def test_student_deeper_than_teacher_is_refused_before_fine_tuning(tmp_path, tiny_bert, glue_dir, capsys):
    study_file = write_study(tmp_path / "deep.yaml", tiny_bert, student_layers=5)
    code = main(
        [
            "run",
            str(study_file),
            "--storage",
            f"sqlite:///{tmp_path / 'x.db'}",
            "--data-dir",
            str(glue_dir),
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    assert code == 2
    assert "student_layers=5 exceeds the teacher's 4 layers (allowed: 1..4)" in capsys.readouterr().err
    assert not (tmp_path / "cache" / "teachers").exists() and not (tmp_path / "x.db").exists()


def test_bad_storage_url_is_one_line_without_traceback(tmp_path, tiny_bert, capsys):
    study_file = write_study(tmp_path / "ok.yaml", tiny_bert)
    for run, url, expected in [
        (run_cli, "nosuchdb://x", "unsupported storage URL"),  # one real process: no traceback there either
        (partial(run_here, capsys), "not a url", "malformed storage URL"),
        (partial(run_here, capsys), f"sqlite:///{tmp_path}/missing/dir/x.db", "does not exist"),
    ]:
        result = run("run", str(study_file), "--storage", url)
        assert result.returncode == 2
        assert expected in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_reading_commands_never_create_a_database(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'typo.db'}"
    here = partial(run_here, capsys)
    for run, args in (
        (run_cli, ["report", "--out", str(tmp_path / "out")]),
        (here, ["status"]),
        (here, ["confirm"]),
        (here, ["reproduce", "1"]),
    ):
        result = run(*args, "--storage", url)
        assert result.returncode == 2 and "Traceback" not in result.stderr, args
        assert (
            result.stderr.strip() == f"error: no database at '{tmp_path / 'typo.db'}' (running a study creates "
            "it; check --storage)"
        )
    assert list(tmp_path.iterdir()) == []


def test_tpe_sweep_evaluates_each_point_once_and_respects_the_budget(tmp_path, tiny_bert, glue_dir):
    study_file = write_study(
        tmp_path / "tpe.yaml",
        tiny_bert,
        methods=["alp"],
        fixed={
            "epochs": 1,
            "max_seq_length": 32,
            "max_train_samples": 32,
            "eval_batch_size": 512,
            "teacher": {"epochs": 1, "max_train_samples": 32},
        },
        search={"sampler": "tpe", "n_trials": 3, "lr": [1e-4, 5e-5], "eta": [0.2, 0.5], "lambda": [0.2]},
    )
    storage = f"sqlite:///{tmp_path / 'tpe.db'}"
    assert main(["run", str(study_file), *sweep_args(storage, glue_dir, tmp_path / "cache")]) == 0
    trials = optuna.load_study(study_name="tiny/SST-2/alp", storage=storage).get_trials()
    trained = [t for t in trials if "duplicate_of" not in t.user_attrs]
    assert len(trained) == 3 and all(t.state.name == "COMPLETE" for t in trained)
    assert len({t.user_attrs["point"] for t in trained}) == 3  # no point trained twice
    for duplicate in (t for t in trials if "duplicate_of" in t.user_attrs):
        original = next(t for t in trials if t.number == duplicate.user_attrs["duplicate_of"])
        assert duplicate.value == original.value and duplicate.user_attrs["point"] == original.user_attrs["point"]


def test_bad_input_catalogue_is_one_line_and_writes_no_database(tmp_path, tiny_bert, glue_dir, capsys):
    """A study file that is not UTF-8, a GLUE file with a header and no rows, and ``lr: [7]`` (meant as 7e-5):
    each one line on stderr, exit 2, no traceback, no database, no teacher fine-tuned."""
    import shutil

    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("name: d\n# r\xe9sum\xe9\ntask: SST-2\n".encode("latin-1"))
    seven = write_study(tmp_path / "seven.yaml", tiny_bert, search={"lr": [7], "eta": [0.5], "lambda": [0.2]})
    empty_glue = tmp_path / "glue"
    shutil.copytree(glue_dir / "SST-2", empty_glue / "SST-2")
    (empty_glue / "SST-2" / "dev.tsv").write_text("sentence\tlabel\n")
    ok = write_study(tmp_path / "ok.yaml", tiny_bert)
    here = partial(run_here, capsys)
    cases = [
        (run_cli, [str(latin)], f"study file '{latin}' line 2: not UTF-8 text (allowed: a UTF-8 YAML file)"),
        (
            here,
            [str(seven)],
            "search.lr: learning rates must be positive and below 1 (e.g. 5.0e-5 for 5e-5), got [7.0]",
        ),
        (here, [str(ok), "--data-dir", str(empty_glue)], "dev.tsv: no data rows after the header"),
    ]
    for run, args, expected in cases:
        url = f"sqlite:///{tmp_path / 'never.db'}"
        result = run("run", *args, "--storage", url, "--cache-dir", str(tmp_path / "cache"))
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert expected in result.stderr
        assert not (tmp_path / "never.db").exists() and not (tmp_path / "cache" / "teachers").exists()
