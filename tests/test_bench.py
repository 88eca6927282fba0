"""Smoke tests of bench.trial's pieces on a tiny model; no timing is asserted anywhere."""

from __future__ import annotations

import math
import re

import pytest
import torch

from bench.runs import PeakMemory, RunResult, reference_trainer_class
from bench.trial import Settings, bench, format_ratio, parse_args, study_config
from harness.distill.batches import to_batch
from harness.distill.experiment import Experiment
from harness.distill.losses import InterLayerLoss
from harness.distill.models import build_student
from harness.distill.train import Hyper, LossTerms, TeacherSignal
from harness.spec.methods import get_method
from harness.util.errors import HarnessError

RATIO_LINES = (
    r"ratio alp_trial/reference = (\d+\.\d{3}|inf|nan)",
    r"ratio alp_step/nkd_step = (\d+\.\d{3}|inf|nan)",
    r"ratio sweep_cost_to_best = (\d+\.\d{3}|inf|nan)",
)


@pytest.fixture(scope="module")
def bench_cache(tmp_path_factory):
    """One cache folder for the module, so the tiny teacher is fine-tuned once."""
    return tmp_path_factory.mktemp("bench-cache")


def tiny_settings(teacher, glue_dir, cache_dir, **overrides) -> Settings:
    values = dict(
        teacher=str(teacher),
        train_samples=32,
        epochs=1,
        max_seq_length=32,
        batch_size=16,
        teacher_train_samples=32,
        sweep_samples=16,
        sweep_epochs=2,
        sweep_lr=(1e-4,),
        sweep_eta=(0.5,),
        sweep_lambda=(0.2, 0.5),
        sweep_replays=3,
        data_dir=glue_dir,
        cache_dir=cache_dir,
    )
    values.update(overrides)
    return Settings(**values)


def test_format_ratio():
    assert format_ratio(0.41234) == "0.412"
    assert format_ratio(math.nan) == "nan"


def test_parse_args_defaults_and_bad_values(glue_dir):
    settings = parse_args(["--data-dir", str(glue_dir), "--skip-sweep", "--sweep-lr", "1e-5", "2e-5"])
    assert settings.skip_sweep and not settings.profile
    assert settings.sweep_lr == (1e-5, 2e-5) and settings.train_samples == Settings().train_samples
    assert settings.data_dir == glue_dir
    with pytest.raises(HarnessError, match="--epochs must be at least 1, got 0"):
        parse_args(["--data-dir", str(glue_dir), "--epochs", "0"])


def test_points_and_study_config(tmp_path):
    settings = Settings(cache_dir=tmp_path)
    assert settings.point("nkd") == {"lr": settings.lr, "eta": 0.0, "lambda": 0.0}
    assert settings.point("kd") == {"lr": settings.lr, "eta": settings.eta, "lambda": 0.0}
    assert settings.point("alp") == {"lr": settings.lr, "eta": settings.eta, "lambda": settings.lam}
    config = study_config(
        settings, "bench-tpe", 500, 2, sampler="tpe", pruner="median", lr=[1e-4], eta=[0.5], **{"lambda": [0.2]}
    )
    assert (config.search.sampler, config.search.pruner, config.fixed.max_train_samples) == ("tpe", "median", 500)
    assert config.fixed.teacher.max_train_samples == settings.teacher_train_samples


def test_peak_memory_sees_a_cpu_allocation():
    with PeakMemory(torch.device("cpu")) as memory:
        block = torch.ones(16 * 2**20)  # 64 MiB, touched
        assert block.sum() > 0
    assert memory.mib > 32


def test_reference_loss_is_our_alp_loss_with_a_live_teacher(tmp_path, tiny_bert, glue_dir, bench_cache):
    from transformers import TrainingArguments

    settings = tiny_settings(tiny_bert, glue_dir, bench_cache)
    experiment = Experiment(study_config(settings, "bench", 32, 1), glue_dir, bench_cache, progress=False)
    teacher = experiment.teacher.load_model()
    student = build_student(experiment.pretrained, 2, 2, "bottom", 42)
    for module in student.modules():  # no dropout, so the two losses see the same forward pass
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    inter = InterLayerLoss(get_method("alp"), 4, 2, 32, 32)
    hyper = Hyper(lr=1e-4, eta=0.5, lam=0.2)
    args = TrainingArguments(output_dir=str(tmp_path / "hf"), report_to="none", use_cpu=True)
    trainer = reference_trainer_class()(
        model=student, args=args, teacher=teacher, inter=inter, hyper=hyper, task=experiment.task
    )
    index = torch.arange(8).numpy()
    batch = to_batch(experiment.train, index, experiment.pad_token_id, torch.device("cpu"))
    student.train()
    reference = trainer.compute_loss(student, dict(batch))
    ours = LossTerms(experiment.task, hyper, inter, TeacherSignal(live=teacher), torch.device("cpu"))
    assert reference.item() == pytest.approx(ours.total(ours(student, dict(batch), index)).item(), rel=1e-5)


def test_bench_end_to_end_on_a_tiny_model(tiny_bert, glue_dir, bench_cache):
    lines: list[str] = []
    summary = bench(tiny_settings(tiny_bert, glue_dir, bench_cache, profile=True), log=lines.append)
    for line, pattern in zip(summary[-3:], RATIO_LINES):
        assert re.fullmatch(pattern, line), line
    assert summary[-2] != "ratio alp_step/nkd_step = nan" and summary[-1] != "ratio sweep_cost_to_best = nan"
    text = "\n".join(summary)
    for run in ("reference KD+ALP", "nkd trial", "kd trial", "alp trial"):
        assert run in text
    assert "Self CPU time total" in text and "optimizer.step" in text
    assert any("grid best" in line for line in lines)
    assert any(line.startswith("  TPE + median pruning: mean") for line in summary)
    assert any("over 3 replays" in line for line in summary)
    assert len(list((bench_cache / "teachers").glob("*/config.json"))) == 1  # the teacher is cached, and reused
    assert not (bench_cache / "teacher_outputs").exists()  # teacher outputs and the sweep lived in a temporary folder


def test_repeated_rounds_report_each_runs_median(tiny_bert, glue_dir, bench_cache):
    summary = bench(tiny_settings(tiny_bert, glue_dir, bench_cache, skip_sweep=True, repeats=2), log=lambda _: None)
    (line,) = [line for line in summary if line.startswith("medians of 2 rounds")]
    per_round = re.search(r"with the cache build: (.*); alp_step/nkd_step: (.*)$", line)
    assert len(per_round.group(1).split(", ")) == 2 and len(per_round.group(2).split(", ")) == 2
    assert re.fullmatch(RATIO_LINES[0], summary[-3]) and summary[-1] == "ratio sweep_cost_to_best = nan"


def test_the_median_of_runs_takes_every_measured_field():
    runs = [RunResult("alp trial", s, s / 2, 10, 100, s * 10, 0.5, s, 1.0) for s in (3.0, 1.0, 2.0)]
    median = RunResult.median(runs)
    assert (median.seconds, median.train_seconds, median.peak_mib, median.cpu_seconds) == (2.0, 1.0, 20.0, 2.0)
    assert (median.steps, median.cache_seconds, median.name) == (10, 1.0, "alp trial")
