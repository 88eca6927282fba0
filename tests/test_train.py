"""The training loop: every method trains, runs are deterministic, and epoch checkpoints resume exactly."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from harness.data.encoding import encode_split
from harness.data.loading import load_split
from harness.distill.batches import to_batch, train_batches
from harness.distill.losses import InterLayerLoss
from harness.distill.models import build_student
from harness.distill.train import Hyper, LossTerms, TeacherSignal, fit
from harness.spec.methods import METHODS, get_method
from harness.spec.tasks import get_task, subsample

TASK = get_task("SST-2")


@pytest.fixture(scope="module")
def data(tiny_bert, glue_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert))
    train = encode_split(subsample(load_split(TASK, "train", glue_dir), 96, seed=0), tokenizer, 32)
    dev = encode_split(subsample(load_split(TASK, "dev", glue_dir), 64, seed=0), tokenizer, 32)
    return train, {"dev": dev}


@pytest.fixture(scope="module")
def teacher(tiny_bert):
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=2).eval()


def make_inter(method: str, student, teacher) -> InterLayerLoss | None:
    spec = get_method(method)
    if spec.inter is None:
        return None
    return InterLayerLoss(
        spec,
        teacher.config.num_hidden_layers,
        student.config.num_hidden_layers,
        student.config.hidden_size,
        teacher.config.hidden_size,
    )


def fit_alp(tiny_bert, teacher, data, hyper: Hyper, **options):
    """A fresh 2-layer student (seeded by ``hyper.seed``) distilled with ALP from the live tiny teacher."""
    train, evals = data
    student = build_student(str(tiny_bert), 2, 2, "bottom", seed=hyper.seed)
    inter = make_inter("alp", student, teacher)
    return fit(student, TASK, hyper, train, evals, 0, inter=inter, teacher=TeacherSignal(live=teacher), **options)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_two_steps_lower_the_loss_with_finite_grads(method, tiny_bert, data, teacher):
    train, _ = data
    student = build_student(str(tiny_bert), 2, 2, "bottom", seed=0).eval()  # eval: no dropout noise
    inter = make_inter(method, student, teacher)
    spec = get_method(method)
    # lr 3e-4: with the freshly initialised pooler (never the checkpoint's), 1e-3 overshoots on the first step
    hyper = Hyper(lr=3e-4, eta=0.5 if spec.searches_eta else 0.0, lam=0.3 if spec.searches_lambda else 0.0)
    signal = TeacherSignal(live=teacher) if spec.searches_eta else None
    losses = LossTerms(TASK, hyper, inter, signal, torch.device("cpu"))
    params = list(student.parameters()) + (list(inter.parameters()) if inter is not None else [])
    optimizer = torch.optim.AdamW(params, lr=hyper.lr)
    index = np.arange(16)
    seen = []
    for _ in range(3):
        batch = to_batch(train, index, 0, torch.device("cpu"))
        terms = losses(student, batch, index)
        assert set(terms) == {"ce"} | ({"kd"} if spec.searches_eta else set()) | ({"inter"} if spec.inter else set())
        loss = losses.total(terms)
        seen.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        for name, param in list(student.named_parameters()) + list(inter.named_parameters() if inter else []):
            if param.grad is not None:
                assert torch.isfinite(param.grad).all(), name
        if inter is not None:
            for name, param in inter.named_parameters():
                assert param.grad is not None and param.grad.abs().sum() > 0, f"{method}: {name} gets no gradient"
        optimizer.step()
    assert seen[2] < seen[0], f"{method}: loss did not go down: {seen}"


def test_ckd_projections_are_trained_by_fit(tiny_bert, data, teacher):
    train, evals = data
    student = build_student(str(tiny_bert), 2, 2, "bottom", seed=0)
    inter = make_inter("ckd", student, teacher)
    before = copy.deepcopy(inter.state_dict())
    assert before, "CKD must have projection parameters"
    fit(
        student,
        TASK,
        Hyper(lr=1e-3, eta=0.3, lam=0.5, epochs=1),
        train,
        evals,
        0,
        inter=inter,
        teacher=TeacherSignal(live=teacher),
    )
    after = inter.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_same_seed_same_number_and_resume_is_exact(tiny_bert, data, teacher, tmp_path):
    hyper = Hyper(lr=5e-4, eta=0.5, lam=0.2, epochs=2, seed=3)

    def run(checkpoint=None, stop_after=None):
        def on_epoch(record):
            if stop_after is not None and record["epoch"] == stop_after:
                raise KeyboardInterrupt  # stands in for a kill right after the checkpoint is written

        return fit_alp(tiny_bert, teacher, data, hyper, checkpoint=checkpoint, on_epoch=on_epoch)

    first, second = run(), run()
    assert [e["losses"]["total"] for e in first.epochs] == [e["losses"]["total"] for e in second.epochs]
    assert first.best_value == second.best_value
    ckpt = tmp_path / "trial.pt"
    with pytest.raises(KeyboardInterrupt):
        run(checkpoint=ckpt, stop_after=1)
    assert ckpt.exists()
    resumed = run(checkpoint=ckpt)
    assert [e["losses"] for e in resumed.epochs] == [e["losses"] for e in first.epochs]
    assert [e["value"] for e in resumed.epochs] == [e["value"] for e in first.epochs]


def test_batches_are_length_grouped_seeded_and_complete():
    lengths = np.random.default_rng(0).integers(5, 60, size=1000)
    a = train_batches(lengths, 32, seed=1, epoch=0)
    assert sorted(np.concatenate(a).tolist()) == list(range(1000))
    assert [b.tolist() for b in a] == [b.tolist() for b in train_batches(lengths, 32, seed=1, epoch=0)]
    assert [b.tolist() for b in a] != [b.tolist() for b in train_batches(lengths, 32, seed=1, epoch=1)]
    spread = np.mean([np.ptp(lengths[b]) for b in a])
    assert spread < 0.5 * np.ptp(lengths)  # grouped: far less padding than random batches


def test_student_init_bottom_and_skip_copy_pretrained_layers(tiny_bert):
    full = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=2)
    bottom = build_student(str(tiny_bert), 2, 2, "bottom", seed=0)
    skip = build_student(str(tiny_bert), 2, 2, "skip", seed=0)
    layers = full.base_model.encoder.layer

    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))

    assert same(bottom.base_model.encoder.layer[1], layers[1])
    assert same(skip.base_model.encoder.layer[0], layers[1]) and same(skip.base_model.encoder.layer[1], layers[3])
    assert skip.config.num_hidden_layers == 2 and len(skip.base_model.encoder.layer) == 2
    out = skip(input_ids=torch.tensor([[101, 2000, 102]]), output_hidden_states=True)
    assert len(out.hidden_states) == 3


def test_each_epoch_keeps_a_compact_step_log(tiny_bert, data, teacher, monkeypatch):
    """Every SYNC_EVERY steps one row: the step, each loss term unweighted and the total, the gradient
    norm before clipping, the learning rate; rows of two identical runs are equal."""
    from harness.distill import steplog

    monkeypatch.setattr(steplog, "SYNC_EVERY", 1)
    hyper = Hyper(lr=5e-4, eta=0.5, lam=0.2, epochs=2, seed=3, batch_size=8, warmup_ratio=0.5)

    def run():
        return fit_alp(tiny_bert, teacher, data, hyper)

    first = run()
    steps = -(-len(data[0]) // 8)
    for record in first.epochs:
        trace = record["steps"]
        assert trace["columns"] == ["step", "ce", "kd", "inter", "total", "grad_norm", "lr"]
        assert [row[0] for row in trace["rows"]] == list(range(1, steps + 1))
        assert all(row[5] > 0 and 0 <= row[6] <= 5e-4 for row in trace["rows"])  # the first step: warm-up from 0
        means = dict(zip(trace["columns"][1:5], np.mean([row[1:5] for row in trace["rows"]], axis=0)))
        assert means == pytest.approx(record["losses"], rel=1e-4)
    lrs = [row[6] for record in first.epochs for row in record["steps"]["rows"]]
    assert lrs[0] < max(lrs) and lrs[-1] < max(lrs)  # warm-up, then the linear decay
    assert [r["steps"] for r in run().epochs] == [r["steps"] for r in first.epochs]
