"""Precision that cannot change the method: the inter-layer losses compute in float32 under autocast, and the
fp32, bf16 and fp16 (+ gradient scaler) training paths all run on CPU with finite losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.distill.losses import alp_attention, alp_loss, alp_tokens_loss, ckd_loss, pkd_loss


def _inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(8, 1, 64, generator=generator) * 4  # correlated layers, dot products in the hundreds
    student = (base + 0.3 * torch.randn(8, 3, 64, generator=generator)).requires_grad_()
    teacher = base + 0.3 * torch.randn(8, 6, 64, generator=generator)
    return student, teacher


LOSSES = {
    "alp_attention": lambda s, t: alp_attention(s, t).pow(2).sum(),
    "alp_loss": lambda s, t: alp_loss(s, t),
    "alp_tokens_loss": lambda s, t: alp_tokens_loss(
        s[:, :, None].expand(-1, -1, 5, -1), t[:, :, None].expand(-1, -1, 5, -1), torch.ones(8, 5)
    ),
    "pkd_loss": lambda s, t: pkd_loss(s, t[:, :3]),
    "ckd_loss": lambda s, t: ckd_loss([s[:, 0], s[:, 1]], [t[:, 0], t[:, 1]]),
}


@pytest.mark.parametrize("name", list(LOSSES))
def test_inter_layer_losses_are_float32_under_bf16_autocast(name):
    loss = LOSSES[name]
    student, teacher = _inputs()
    reference = loss(student, teacher)
    (expected,) = torch.autograd.grad(reference, student)
    student, teacher = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(student, teacher)
    (grad,) = torch.autograd.grad(value, student)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(reference.item(), abs=1e-6, rel=1e-6)
    assert torch.allclose(grad, expected, atol=1e-6, rtol=1e-6)


def test_without_the_upcast_bf16_would_move_alp_attention():
    """The reason for the float32 rule: in bf16 the attention of correlated layers changes."""
    student, teacher = _inputs()
    exact = alp_attention(student, teacher)
    rounded = torch.softmax(torch.einsum("bmh,bnh->bmn", student.bfloat16(), teacher.bfloat16()).float(), dim=-1)
    assert (rounded - exact).abs().max() > 1e-2


def test_workers_are_placed_round_robin_over_the_gpus():
    from harness.sweep.workers import assign_devices, parse_devices
    from harness.util.errors import HarnessError

    assert assign_devices(3, visible=0) == ["cpu", "cpu", "cpu"]
    assert assign_devices(5, visible=2) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]
    assert assign_devices(3, visible=4, chosen=[2, 3]) == ["cuda:2", "cuda:3", "cuda:2"]
    assert assign_devices(1, visible=8) == ["cuda:0"]
    with pytest.raises(HarnessError, match="GPU 2 is not visible"):
        assign_devices(2, visible=2, chosen=[0, 2])
    with pytest.raises(HarnessError, match="shows no GPU"):
        assign_devices(1, visible=0, chosen=[0])
    assert parse_devices("0,1") == [0, 1] and parse_devices(None) is None
    for bad in ("", "0,0", "a", "-1"):
        with pytest.raises(HarnessError, match="expected distinct GPU indices"):
            parse_devices(bad)


@pytest.fixture(scope="module")
def precision_runs(tmp_path_factory, tiny_bert, glue_dir):
    import math

    from harness.distill.experiment import Experiment
    from harness.spec.config import load_study

    from conftest import TINY_FIXED, write_study

    folder = tmp_path_factory.mktemp("precision")
    runs = {}
    for precision in ("fp32", "bf16", "fp16"):
        fixed = {**TINY_FIXED, "precision": precision}
        path = write_study(folder / f"{precision}.yaml", tiny_bert, fixed=fixed)
        experiment = Experiment(load_study(path), glue_dir, folder / "cache", progress=False)
        history = experiment.run_trial("alp", {"lr": 5e-4, "eta": 0.5, "lambda": 0.2}, seed=3)
        assert all(math.isfinite(v) for e in history.epochs for v in e["losses"].values()), precision
        runs[precision] = history
    return runs


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_paths_run_on_cpu_within_a_point_of_fp32(precision_runs, precision):
    """bf16 autocast and fp16 autocast with a gradient scaler (torch.amp.GradScaler("cpu")): the GPU code
    paths, exercised on the CPU. The dev score stays within 1 point of fp32's."""
    ours, reference = precision_runs[precision], precision_runs["fp32"]
    assert abs(ours.best_value - reference.best_value) <= 0.01
    assert ours.epochs[0]["losses"] != reference.epochs[0]["losses"]  # it really ran in another precision
    alpha, expected = (np.array(run.epochs[0]["alpha"]) for run in (ours, reference))
    assert np.abs(alpha - expected).max() <= 0.05


def test_loss_log_reads_once_per_window_and_names_a_non_finite_term():
    from harness.distill.steplog import LossLog

    log = LossLog(every=3)
    for step in range(7):
        terms = {"ce": torch.tensor(float(step)), "kd": torch.tensor(1.0)}
        assert log.add(terms, torch.tensor(2.0 * step), epoch=1) == (step in (2, 5))
    log.flush(epoch=1)
    assert log.means(7) == {"ce": 3.0, "kd": 1.0, "total": 6.0}
    bad = LossLog(every=4)
    bad.add({"ce": torch.tensor(0.5), "inter": torch.tensor(1.0)}, torch.tensor(1.5), epoch=2)
    bad.add({"ce": torch.tensor(0.5), "inter": torch.tensor(float("nan"))}, torch.tensor(float("nan")), epoch=2)
    with pytest.raises(FloatingPointError, match=r"non-finite inter loss nan at epoch 2, step 2"):
        bad.flush(epoch=2)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_half_precision_training_step_on_the_best_device(precision, tiny_bert, glue_dir):
    """On a GPU when one is visible (``make gpu-check``), else on the CPU: two ALP steps in half precision,
    finite, with the inter-layer loss in float32 and, for fp16, the gradient scaler."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from harness.data.encoding import encode_split
    from harness.data.loading import load_split
    from harness.distill.batches import to_batch
    from harness.distill.device import autocast_for, pick_device
    from harness.distill.losses import InterLayerLoss
    from harness.distill.models import build_student
    from harness.distill.train import Hyper, LossTerms, TeacherSignal
    from harness.spec.methods import get_method
    from harness.spec.tasks import get_task, subsample

    device = pick_device()
    task = get_task("SST-2")
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert))
    train = encode_split(subsample(load_split(task, "train", glue_dir), 32, seed=0), tokenizer, 32)
    teacher = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=2).to(device).eval()
    student = build_student(str(tiny_bert), 2, 2, "bottom", seed=0).to(device)
    inter = InterLayerLoss(get_method("alp"), 4, 2, 32, 32).to(device)
    losses = LossTerms(task, Hyper(lr=1e-3, eta=0.5, lam=0.3), inter, TeacherSignal(live=teacher), device)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    amp, dtype = autocast_for(device, precision)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    for _ in range(2):
        index = np.arange(16)
        with amp:
            terms = losses(student, to_batch(train, index, 0, device), index)
            loss = losses.total(terms)
        assert terms["inter"].dtype == torch.float32 and torch.isfinite(loss)
        optimizer.zero_grad()
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()


def test_prefetch_keeps_order_raises_errors_and_stops_early():
    import threading

    from harness.distill.batches import prefetch

    assert list(prefetch(lambda x: x * x, range(7))) == [x * x for x in range(7)]

    def broken(x):
        if x == 3:
            raise ValueError("bad item 3")
        return x

    seen = []
    with pytest.raises(ValueError, match="bad item 3"):
        for value in prefetch(broken, range(10)):
            seen.append(value)
    assert seen == [0, 1, 2]
    before = threading.active_count()
    stream = prefetch(lambda x: x, range(1000), depth=2)
    assert next(stream) == 0
    stream.close()  # a consumer that stops early (pruned, failed) stops the producer thread
    assert threading.active_count() == before
