"""The student you choose: ``student_from`` (another checkpoint, maybe narrower) and ``student_init`` (bottom, skip,
random, pretrained); the pooler and classifier always fresh; bad input one line, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel, BertTokenizer

from harness.distill.experiment import Experiment
from harness.distill.models import build_student
from harness.spec.config import parse_study
from harness.util.errors import HarnessError

from conftest import sweep_args


def study(teacher: Path, student_from: Path | None = None, init: str = "bottom", layers: int = 2) -> dict:
    return {
        "name": "student",
        "task": "RTE",
        "teacher": str(teacher),
        "student_layers": layers,
        **({} if student_from is None else {"student_from": str(student_from)}),
        "methods": ["alp"],
        "fixed": {
            "epochs": 1,
            "max_seq_length": 16,
            "max_train_samples": 32,
            "student_init": init,
            "teacher": {"epochs": 1, "max_train_samples": 32},
        },
        "search": {"lr": [1e-4], "eta": [0.3], "lambda": [0.3]},
    }


@pytest.fixture(scope="module")
def narrow(tiny_bert, tmp_path_factory) -> Path:
    """A 3-layer BERT of hidden size 16 with the teacher's tokenizer, built offline."""
    folder = tmp_path_factory.mktemp("narrow")
    config = BertConfig.from_pretrained(str(tiny_bert), hidden_size=16, num_hidden_layers=3, intermediate_size=32)
    torch.manual_seed(3)
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(tiny_bert)).save_pretrained(folder)
    return folder


def test_a_narrower_student_from_another_checkpoint_is_distilled_through_the_projection(
    tiny_bert, narrow, glue_dir, tmp_path
):
    experiment = Experiment(parse_study(study(tiny_bert, narrow)), glue_dir, tmp_path, progress=False)
    assert experiment.student_source == str(narrow.resolve())
    history = experiment.run_trial("alp", {"lr": 1e-4, "eta": 0.3, "lambda": 0.3}, save_to=tmp_path / "out")
    assert history.epochs and len(history.epochs[0]["alpha"]) == 2
    saved = torch.load(tmp_path / "out" / "inter_layer_loss.pt")
    assert saved["proj.weight"].shape == (32, 16)  # Linear(H_s=16, H_t=32), the documented projection
    student = BertForSequenceClassification.from_pretrained(str(tmp_path / "out"))
    assert student.config.hidden_size == 16 and student.config.num_hidden_layers == 2


def test_random_init_keeps_only_the_architecture_and_is_seeded(narrow):
    source = BertModel.from_pretrained(str(narrow))
    student = build_student(str(narrow), 5, 2, "random", seed=7)  # any depth
    assert student.config.num_hidden_layers == 5 and student.config.hidden_size == 16
    copied = source.encoder.layer[0].attention.self.query.weight
    assert not torch.equal(student.bert.encoder.layer[0].attention.self.query.weight, copied)
    assert not torch.equal(student.bert.embeddings.word_embeddings.weight, source.embeddings.word_embeddings.weight)
    again = build_student(str(narrow), 5, 2, "random", seed=7)
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), again.state_dict().values()))


def test_pretrained_init_keeps_every_layer_and_needs_its_depth(narrow):
    student = build_student(str(narrow), 3, 2, "pretrained", seed=0)
    source = BertModel.from_pretrained(str(narrow))
    assert torch.equal(student.bert.encoder.layer[2].output.dense.weight, source.encoder.layer[2].output.dense.weight)
    with pytest.raises(HarnessError, match=r"student_init: pretrained keeps all 3 layers .* student_layers=2"):
        build_student(str(narrow), 2, 2, "pretrained", seed=0)


@pytest.mark.parametrize("init", ["bottom", "skip", "pretrained"])
def test_pooler_and_classifier_are_fresh_even_from_a_fine_tuned_checkpoint(tiny_bert, tmp_path, init):
    config = BertConfig.from_pretrained(str(tiny_bert), num_labels=2)
    torch.manual_seed(1)
    tuned = BertForSequenceClassification(config)
    with torch.no_grad():  # a "fine-tuned" head: far from any fresh initialisation
        tuned.classifier.weight.fill_(0.5)
        tuned.bert.pooler.dense.weight.fill_(0.25)
    tuned.save_pretrained(tmp_path / "tuned")
    student = build_student(str(tmp_path / "tuned"), 4 if init == "pretrained" else 2, 2, init, seed=0)
    assert student.classifier.weight.abs().max() < 0.2 and student.bert.pooler.dense.weight.abs().max() < 0.2
    first = 1 if init == "skip" else 0  # skip: student layer 1 <- teacher layer 2 (1-based)
    copied = tuned.bert.encoder.layer[first].output.dense.weight
    assert torch.equal(student.bert.encoder.layer[0].output.dense.weight, copied)


def _cli_error(tmp_path: Path, capsys, data: dict, glue_dir: Path) -> str:
    from harness.cli import main

    study_file = tmp_path / "s.yaml"
    study_file.write_text(yaml.safe_dump(data))
    cache, db = tmp_path / "cache", tmp_path / "h.db"
    args = ["run", str(study_file), *sweep_args(f"sqlite:///{db}", glue_dir, cache)]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert not db.exists() and not cache.exists()
    return err


def test_a_student_from_with_another_tokenizer_is_refused(tiny_bert, glue_dir, tmp_path, capsys):
    folder = tmp_path / "other-vocab"
    folder.mkdir()
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "dog"]) + "\n")
    BertTokenizer(str(vocab)).save_pretrained(folder)
    config = BertConfig(vocab_size=7, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    BertModel(config).save_pretrained(folder)
    err = _cli_error(tmp_path, capsys, study(tiny_bert, folder), glue_dir)
    assert f"student_from '{folder}' has another tokenizer than the teacher" in err and "vocabulary" in err


def test_an_unknown_student_init_is_refused(tiny_bert, glue_dir, tmp_path, capsys):
    err = _cli_error(tmp_path, capsys, study(tiny_bert, init="middle"), glue_dir)
    assert "fixed.student_init" in err and "'random'" in err and "'pretrained'" in err and "'middle'" in err
    with pytest.raises(HarnessError, match="unknown student_init 'middle'"):
        build_student(str(tiny_bert), 2, 2, "middle", seed=0)
