"""`plan`: grid sizes, trainings after sharing, a measured time estimate and the disk, without a database."""

from __future__ import annotations

import re

from harness.cli import main

from conftest import run_cli, sweep_args, write_study


def test_plan_sizes_a_sweep_without_creating_a_database(tmp_path, tiny_bert, glue_dir):
    study_file = write_study(
        tmp_path / "plan.yaml", tiny_bert, search={"lr": [1e-4], "eta": [0.0, 0.5], "lambda": [0.0, 0.5]}
    )
    result = run_cli("plan", str(study_file), "--data-dir", str(glue_dir), "--cache-dir", str(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "7 grid points, 4 trainings" in out
    assert "per trial: 64 training examples × 2 epoch(s) = 4 steps of 32" in out
    assert re.search(r"measured here in \d+ s \(6 timed steps of the student and of the teacher", out), out
    assert re.search(r"4 trainings ≈ \d+ (s|min)", out) and "teacher fine-tuning ≈" in out
    assert re.search(r"teacher-output cache 0\.\d\d GB, kept students \(best\) 0\.\d\d GB", out), out
    assert not list(tmp_path.rglob("*.db")) and not (tmp_path / "cache" / "teachers").exists()


def test_plan_warns_when_the_cache_folder_is_short_of_space(tmp_path, tiny_bert, glue_dir, capsys, monkeypatch):
    from harness.tools import plan

    usage = plan.shutil.disk_usage
    monkeypatch.setattr(plan.shutil, "disk_usage", lambda path: usage(path)._replace(free=10))
    study_file = write_study(tmp_path / "plan.yaml", tiny_bert)
    code = main(["plan", str(study_file), "--data-dir", str(glue_dir), "--cache-dir", str(tmp_path), "--no-measure"])
    out = capsys.readouterr().out
    assert code == 0 and "time not measured" in out
    assert re.search(r"warning: only 0\.00 GB free in .*, 0\.\d\d GB needed: use another --cache-dir", out), out


def test_status_shows_an_eta_from_the_measured_trial_time(tmp_path, tiny_bert, glue_dir):
    study_file = write_study(tmp_path / "eta.yaml", tiny_bert, methods=["nkd"], search={"lr": [1e-4, 5e-5, 2e-5]})
    storage = f"sqlite:///{tmp_path / 'eta.db'}"
    where = sweep_args(storage, glue_dir, tmp_path / "cache")
    assert run_cli("run", str(study_file), *where, "--n-trials", "1").returncode == 0
    status = run_cli("status", "--storage", storage)
    assert status.returncode == 0, status.stderr
    assert re.search(
        r"tiny/SST-2/nkd: grid 3, complete 1, .*left 2, ETA ~\d+ s \(2 to train × mean \d+ s over 1 trained\)",
        status.stdout,
    ), status.stdout


def test_plan_says_when_it_measured_on_a_busy_machine(tmp_path, tiny_bert, glue_dir, capsys, monkeypatch):
    from harness.tools import plan

    study_file = write_study(tmp_path / "plan.yaml", tiny_bert, methods=["nkd"], search={"lr": [1e-4]})
    args = ["plan", str(study_file), "--data-dir", str(glue_dir), "--cache-dir", str(tmp_path / "cache")]
    for busy, said in ((0.9, True), (0.05, False)):
        monkeypatch.setattr(plan, "cpu_busy", lambda busy=busy: busy)
        assert main(args) == 0
        out = capsys.readouterr().out
        assert ("note: other work used 90% of this machine's CPUs" in out) is said, out


def test_cpu_busy_reads_a_fraction_of_the_cpus():
    from harness.tools.plan import cpu_busy

    busy = cpu_busy(0.05)
    assert busy is not None and 0.0 <= busy <= 1.0  # Linux: /proc/stat
