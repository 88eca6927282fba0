"""Export: a trial's student at its reported epoch as a Hugging Face folder that transformers alone loads
offline and that re-scores on dev to the stored value; kept when it is the best, re-trained otherwise."""

from __future__ import annotations

import csv
import json
from functools import partial

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState

from harness.spec.config import grid_rank

from conftest import GLUE_DIR, run_cli, run_here, sweep_args, write_study


def dev_accuracy_with_transformers_alone(folder, max_length: int) -> float:
    """Score an exported folder on SST-2 dev with nothing but transformers and the GLUE file."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    with (GLUE_DIR / "SST-2" / "dev.tsv").open(newline="") as stream:
        rows = list(csv.DictReader(stream, delimiter="\t", quoting=csv.QUOTE_NONE))
    labels = np.array([int(row["label"]) for row in rows])
    predictions = []
    with torch.no_grad():
        for start in range(0, len(rows), 128):
            batch = tokenizer(
                [row["sentence"] for row in rows[start : start + 128]],
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            predictions.append(model(**batch).logits.argmax(-1).numpy())
    return float((np.concatenate(predictions) == labels).mean())


@pytest.fixture(scope="module")
def swept(tmp_path_factory, tiny_bert, glue_dir):
    """A finished tiny sweep with the default keep_students: best."""
    folder = tmp_path_factory.mktemp("export")
    study_file = write_study(
        folder / "export.yaml", tiny_bert, methods=["nkd", "kd"], search={"lr": [2e-4, 5e-5], "eta": [0.5]}
    )
    storage = f"sqlite:///{folder / 'export.db'}"
    cache = folder / "cache"
    from harness.cli import main

    assert main(["run", str(study_file), *sweep_args(storage, glue_dir, cache)]) == 0  # in this process
    return folder, storage, cache


def _export(swept, glue_dir, out, *which, run=run_cli):
    folder, storage, cache = swept
    return run("export", *which, "--out", str(out), *sweep_args(storage, glue_dir, cache))


def test_the_best_student_is_kept_exported_and_reloads_to_its_stored_score(swept, glue_dir):
    folder, storage, cache = swept
    kept = [p for p in (cache / "students").glob("*/*") if p.is_dir()]
    assert len(kept) == 2  # keep_students: best — one per study, the others were removed
    out = folder / "best-kd"
    result = _export(swept, glue_dir, out, "--best", "--method", "kd")
    assert result.returncode == 0, result.stderr
    assert "copying its kept student" in result.stdout
    study = optuna.load_study(study_name="tiny/SST-2/kd", storage=storage)
    best = max((t for t in study.get_trials() if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    stored = best.user_attrs["epochs"][best.user_attrs["reported_epoch"] - 1]["metrics"]["dev"]["accuracy"]
    assert abs(dev_accuracy_with_transformers_alone(out, 32) - stored) <= 1 / 872 + 1e-9
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert (out / "model.safetensors").is_file()
    card = (out / "README.md").read_text()
    for part in ("SST-2", "dev accuracy", "kd", "lr / η / λ", "seed", "teacher", "Selection protocol", "export"):
        assert part in card, part


def test_a_student_that_was_not_kept_is_re_trained_to_the_same_weights(swept, glue_dir):
    folder, storage, _ = swept
    study = optuna.load_study(study_name="tiny/SST-2/nkd", storage=storage)
    complete = sorted((t for t in study.get_trials() if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    best = min(complete, key=lambda t: (-t.value, grid_rank(t.user_attrs)))  # keep_only_the_best's (ties: grid order)
    worst = next(t for t in complete if t.number != best.number)  # not the best: its student was removed
    out = folder / "worst-nkd"
    result = _export(swept, glue_dir, out, str(worst._trial_id))
    assert result.returncode == 0, result.stderr
    assert "re-training it deterministically" in result.stdout
    stored = worst.user_attrs["epochs"][worst.user_attrs["reported_epoch"] - 1]["metrics"]["dev"]["accuracy"]
    assert abs(dev_accuracy_with_transformers_alone(out, 32) - stored) <= 1 / 872 + 1e-9


def test_bad_export_requests_are_one_line(swept, glue_dir, capsys):
    folder, _, _ = swept
    (folder / "taken").mkdir()
    (folder / "taken" / "x").write_text("x")
    here = partial(run_here, capsys)
    for run, which, message in (
        (run_cli, ["999999"], "no trial with trial_id 999999"),
        (here, ["--best", "--method", "alp"], "no complete trial with method 'alp'"),
        (here, ["--best"], "exists and is not empty"),
    ):
        result = _export(swept, glue_dir, folder / "taken", *which, run=run)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr


def test_glue_submission_files_from_test_files_in_the_official_layout(swept, glue_dir, tmp_path):
    """`export --predict`: SST-2.tsv with index and 0/1 predictions for every test row, in the GLUE
    leaderboard format; a test file with the wrong header is one line and writes no folder."""
    tests = tmp_path / "glue-test"
    (tests / "SST-2").mkdir(parents=True)
    with (GLUE_DIR / "SST-2" / "dev.tsv").open(newline="") as stream:
        rows = list(csv.DictReader(stream, delimiter="\t", quoting=csv.QUOTE_NONE))[:50]
    lines = ["index\tsentence"] + [f"{i}\t{row['sentence']}" for i, row in enumerate(rows)]
    (tests / "SST-2" / "test.tsv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "submission"
    result = _export(swept, glue_dir, out, "--best", "--method", "kd", "--predict", str(tests))
    assert result.returncode == 0, result.stderr
    written = (out / "SST-2.tsv").read_text().splitlines()
    assert written[0] == "index\tprediction" and len(written) == 51
    assert [line.split("\t")[0] for line in written[1:]] == [str(i) for i in range(50)]
    assert {line.split("\t")[1] for line in written[1:]} <= {"0", "1"}

    (tests / "SST-2" / "test.tsv").write_text("id\ttext\n0\ta sentence\n")
    bad = _export(swept, glue_dir, tmp_path / "never", "--best", "--predict", str(tests))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "no column 'sentence'" in bad.stderr and not (tmp_path / "never").exists()


@pytest.mark.parametrize(
    ("task", "files"),
    [
        ("STS-B", {"test": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2"}),
        (
            "MNLI",
            {
                split: "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
                "sentence1_parse\tsentence2_parse\tsentence1\tsentence2"
                for split in ("test_matched", "test_mismatched")
            },
        ),
    ],
)
def test_submission_files_of_sts_b_are_clipped_scores_and_of_mnli_two_named_files(task, files, tiny_bert, tmp_path):
    """STS-B: one score per row, clipped to [0, 5] (a head biased to +50 and to −50 gives 5.000 and 0.000);
    MNLI: MNLI-m.tsv and MNLI-mm.tsv from test_matched/test_mismatched, classes as the official files name them."""
    from types import SimpleNamespace

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from harness.data.loading import prediction_labels
    from harness.spec.tasks import get_task
    from harness.tools.export import write_predictions

    spec = get_task(task)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert))
    experiment = SimpleNamespace(
        task=spec,
        tokenizer=tokenizer,
        pad_token_id=tokenizer.pad_token_id,
        config=SimpleNamespace(fixed=SimpleNamespace(max_seq_length=64, eval_batch_size=4)),
    )
    tests = tmp_path / "glue-test"
    (tests / task).mkdir(parents=True)
    for split, header in files.items():
        width = len(header.split("\t"))
        rows = [["x"] * (width - 2) + [f"a man plays {i}", f"someone plays {i}"] for i in range(7)]
        (tests / task / f"{split}.tsv").write_text(
            "\n".join([header] + ["\t".join([str(10 + i), *row[1:]]) for i, row in enumerate(rows)]) + "\n"
        )
    outputs = {}
    for bias in (50.0, -50.0):
        model = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=spec.num_labels)
        with torch.no_grad():
            model.classifier.bias.fill_(0.0)
            model.classifier.bias[-1] = bias  # STS-B: the score; MNLI: the last class wins or loses
        folder, out = tmp_path / f"student{bias}", tmp_path / f"out{bias}"
        model.save_pretrained(folder)
        written = write_predictions(experiment, folder, tests, out, log=lambda line: None)
        outputs[bias] = {path.name: path.read_text().splitlines() for path in written}

    names = {"STS-B": ["STS-B.tsv"], "MNLI": ["MNLI-m.tsv", "MNLI-mm.tsv"]}[task]
    for bias, by_file in outputs.items():
        assert sorted(by_file) == names
        for lines in by_file.values():
            assert lines[0] == "index\tprediction" and [line.split("\t")[0] for line in lines[1:]] == [
                str(10 + i) for i in range(7)
            ]
            values = {line.split("\t")[1] for line in lines[1:]}
            if task == "STS-B":
                assert values == {"5.000" if bias > 0 else "0.000"}
            else:
                classes = prediction_labels(spec)
                assert values == {classes[-1]} if bias > 0 else (classes[-1] not in values and values <= set(classes))
