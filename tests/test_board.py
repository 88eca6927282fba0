"""TensorBoard event files (``--tensorboard``): what each trial's run holds, and that a resumed trial's run
holds every epoch once."""

from __future__ import annotations

import sys

import pytest

from harness.cli import main
from harness.sweep.tensorboard import TrialBoard, run_folder

from conftest import read_scalars, write_study


def epoch_record(epoch: int, steps: int) -> dict:
    rows = [[s, 0.5 / (epoch * s), 0.1, 0.6 / (epoch * s), 1.5, 1e-4 * s] for s in range(1, steps + 1)]
    return {
        "epoch": epoch,
        "value": 0.5 + epoch / 10,
        "metrics": {"dev": {"accuracy": 0.5 + epoch / 10}, "holdout": {"accuracy": 0.4 + epoch / 10}},
        "losses": {"ce": 0.5 / epoch, "total": 0.6 / epoch},
        "steps": {"columns": ["step", "ce", "kd", "total", "grad_norm", "lr"], "rows": rows},
        "alpha_entropy": 0.1 * epoch,
    }


def test_run_folder_is_named_by_study_and_point(tmp_path):
    folder = run_folder(tmp_path, "offline-glue/SST-2/alp", "lr=2e-05,eta=0.5,lambda=0.5")
    assert folder == tmp_path / "offline-glue__SST-2__alp" / "lr=2e-05,eta=0.5,lambda=0.5"
    assert run_folder(tmp_path, "a/b", "p", seed=43).name == "p,seed=43"


def test_steps_continue_over_epochs_and_a_resumed_trial_is_written_once(tmp_path):
    folder = tmp_path / "run"
    records = [epoch_record(1, 3), epoch_record(2, 3)]
    board = TrialBoard(folder, {"method": "kd"})
    board.epoch(records[0])
    board.close()  # killed after epoch 1; the resumed attempt reports epoch 1 again, then epoch 2
    board = TrialBoard(folder, {"method": "kd"})
    for record in records:
        board.epoch(record)
    board.close()

    scalars = read_scalars(folder)
    assert {"train/ce", "train/kd", "train/total", "train/grad_norm", "train/lr"} <= set(scalars)
    assert [step for step, _ in scalars["train/ce"]] == [1, 2, 3, 4, 5, 6]
    assert [v for _, v in scalars["train/ce"]] == pytest.approx([r[1] for rec in records for r in rec["steps"]["rows"]])
    assert scalars["dev/accuracy"] == [(3, pytest.approx(0.6)), (6, pytest.approx(0.7))]
    assert scalars["holdout/accuracy"] == [(3, pytest.approx(0.5)), (6, pytest.approx(0.6))]
    assert [step for step, _ in scalars["epoch/total"]] == [3, 6]
    assert scalars["alp/alpha_entropy"] == [(3, pytest.approx(0.1)), (6, pytest.approx(0.2))]


def test_without_the_tensorboard_package_run_stops_in_one_line_before_anything(
    tmp_path, tiny_bert, glue_dir, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    study_file = write_study(tmp_path / "s.yaml", tiny_bert)
    storage = tmp_path / "s.db"
    code = main(
        ["run", str(study_file), "--storage", f"sqlite:///{storage}", "--data-dir", str(glue_dir)]
        + ["--cache-dir", str(tmp_path / "cache"), "--tensorboard", str(tmp_path / "tb")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: --tensorboard needs the 'tensorboard' package") and "pip install" in err[0]
    assert not storage.exists() and not (tmp_path / "cache").exists()
