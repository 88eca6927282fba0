"""A teacher used as it is (``fixed.teacher.finetune: false``): no fine-tuning, head checked against the task,
scored on dev once, identified by its weights' sha256, refused at chance unless the study file goes on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from harness.distill import teacher as teacher_module
from harness.distill.experiment import Experiment
from harness.spec.config import parse_study
from harness.util.errors import HarnessError
from harness.util.hashing import sha256_file

from conftest import sweep_args


def study(teacher, task="SST-2", student_layers=1, methods=("kd",), **teacher_recipe) -> dict:
    return {
        "name": "given",
        "task": task,
        "teacher": str(teacher),
        "student_layers": student_layers,
        "methods": list(methods),
        "fixed": {
            "epochs": 1,
            "max_seq_length": 32,
            "max_train_samples": 32,
            "eval_batch_size": 512,
            "teacher": {"epochs": 1, "lr": 1e-4, "max_train_samples": 256, **teacher_recipe},
        },
        "search": {"lr": [1e-4], "eta": [0.5]},
    }


def classifier_folder(tmp_path: Path, tiny_bert: Path, labels: dict[int, str] | None, num_labels: int = 2) -> Path:
    """A tiny random BERT saved as a sequence classifier (MiniLM's tokenizer)."""
    config = BertConfig.from_pretrained(str(tiny_bert), num_labels=num_labels)
    if labels is not None:
        config.id2label, config.label2id = labels, {v: k for k, v in labels.items()}
    torch.manual_seed(1)
    folder = tmp_path / f"classifier-{num_labels}"
    BertForSequenceClassification(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(tiny_bert)).save_pretrained(folder)
    return folder


def test_a_teacher_fine_tuned_by_the_harness_is_used_as_it_is(glue_dir, tmp_path, monkeypatch):
    """End to end on the offline MiniLM: fine-tune once with the harness, then the same folder with
    ``finetune: false`` in a second study file: no teacher training, the same dev score, a student distilled
    from it whose pooler and classifier are fresh (not the fine-tuned teacher's)."""
    # RTE (277 dev pairs) and 64 teacher examples keep it short; such a teacher is near chance, hence allow_chance
    recipe = {"max_train_samples": 64}
    first = Experiment(parse_study(study("minilm-l6", "RTE", **recipe)), glue_dir, tmp_path / "cache-a", progress=False)
    tuned = first.teacher.prepare()
    labels = json.loads((tuned.path / "config.json").read_text())["id2label"]
    assert labels == {"0": "entailment", "1": "not_entailment"}

    def no_training(*args, **kwargs):
        raise AssertionError("a teacher with finetune: false is never trained")

    monkeypatch.setattr(teacher_module, "fit", no_training)
    config = parse_study(study(tuned.path, "RTE", finetune=False, allow_chance=True, **recipe))
    second = Experiment(config, glue_dir, tmp_path / "cache-b", progress=False)
    given = second.teacher.prepare()
    assert given.value == pytest.approx(tuned.value, abs=1e-9)
    assert given.path == tuned.path
    info = json.loads((second.teacher.folder() / teacher_module.TEACHER_INFO).read_text())
    assert info["weights_sha256"] == sha256_file(tuned.path / "model.safetensors") and info["finetune"] is False
    assert not list((tmp_path / "cache-b" / "teachers").glob("*/model.safetensors"))  # weights not copied

    history = second.run_trial("kd", {"lr": 1e-4, "eta": 0.5, "lambda": 0.0})
    assert history.epochs
    from harness.distill.models import build_student

    student = build_student(str(tuned.path), 1, 2, "bottom", seed=42)
    teacher = second.teacher.load_model()
    for name in ("classifier.weight", "bert.pooler.dense.weight"):
        assert not torch.equal(student.state_dict()[name], teacher.state_dict()[name]), name


def test_identity_is_the_weights_sha256(tiny_bert, glue_dir, tmp_path):
    folder = classifier_folder(tmp_path, tiny_bert, {0: "negative", 1: "positive"})
    config = parse_study(study(folder, finetune=False, allow_chance=True))
    key = Experiment(config, glue_dir, tmp_path / "cache", progress=False).teacher.key()
    assert key == Experiment(config, glue_dir, tmp_path / "cache", progress=False).teacher.key()
    BertForSequenceClassification.from_pretrained(str(folder)).bert.pooler.dense.bias.data.add_(1.0)
    model = BertForSequenceClassification.from_pretrained(str(folder))
    with torch.no_grad():
        model.classifier.bias.add_(1.0)
    model.save_pretrained(folder)
    assert Experiment(config, glue_dir, tmp_path / "cache", progress=False).teacher.key() != key


def test_a_teacher_at_chance_is_refused_unless_the_study_goes_on(tiny_bert, glue_dir, tmp_path):
    folder = classifier_folder(tmp_path, tiny_bert, None)  # random head: at chance on SST-2
    refused = Experiment(parse_study(study(folder, finetune=False)), glue_dir, tmp_path / "cache", progress=False)
    with pytest.raises(HarnessError, match=r"at chance .*allow_chance: true") as raised:
        refused.teacher.prepare()
    assert "\n" not in str(raised.value)
    assert not (refused.teacher.folder() / teacher_module.TEACHER_INFO).exists()
    config = parse_study(study(folder, finetune=False, allow_chance=True))
    kept = Experiment(config, glue_dir, tmp_path / "cache", progress=False).teacher.prepare()
    assert 0.0 <= kept.value <= 0.6


@pytest.mark.parametrize(
    ("labels", "num_labels", "match"),
    [
        (
            {0: "entailment", 1: "neutral", 2: "contradiction"},
            3,
            r"3-output head \(entailment, neutral, contradiction\)",
        ),
        ({0: "positive", 1: "negative"}, 2, r"\(positive, negative\), SST-2 needs 2 \(negative, positive\)"),
    ],
)
def test_a_head_for_other_labels_is_one_line_before_anything_is_written(
    tiny_bert, glue_dir, tmp_path, capsys, labels, num_labels, match
):
    from harness.cli import main

    folder = classifier_folder(tmp_path, tiny_bert, labels, num_labels)
    with pytest.raises(HarnessError, match=match):
        Experiment(parse_study(study(folder, finetune=False)), glue_dir, tmp_path / "cache", progress=False)
    study_file = tmp_path / "s.yaml"
    study_file.write_text(yaml.safe_dump(study(folder, finetune=False)))
    cache, db = tmp_path / "cli-cache", tmp_path / "h.db"
    args = ["run", str(study_file), *sweep_args(f"sqlite:///{db}", glue_dir, cache)]
    capsys.readouterr()  # the progress bars of saving the folder
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: teacher") and "SST-2 needs 2" in err and err.count("\n") == 1
    assert not db.exists() and not (cache / "teachers").exists()


def test_finetune_false_on_a_checkpoint_without_a_head(glue_dir, tmp_path):
    with pytest.raises(HarnessError, match=r"has no classification head .*BertModel"):
        Experiment(parse_study(study("minilm-l6", finetune=False)), glue_dir, tmp_path, progress=False)


def test_a_teacher_folder_without_weights(tiny_bert, glue_dir, tmp_path, capsys):
    from harness.cli import main

    folder = tmp_path / "no-weights"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_bert / "config.json").read_text())
    study_file = tmp_path / "s.yaml"
    study_file.write_text(yaml.safe_dump(study(folder, finetune=False)))
    db = tmp_path / "h.db"
    args = ["run", str(study_file), "--data-dir", str(glue_dir), "--cache-dir", str(tmp_path / "c"), "--storage"]
    capsys.readouterr()
    assert main([*args, f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: teacher folder '{folder}' has no weights (expected one of model.safetensors")
    assert err.count("\n") == 1 and not db.exists() and not (tmp_path / "c").exists()
