"""The GPU a torch build has no kernels for stops ``run`` and ``plan`` with the fix (faked: no GPU here), and
``fixed.deterministic`` turns on torch's deterministic algorithms."""

from __future__ import annotations

import pytest
import torch

from harness.distill import device as device_module
from harness.distill.device import _runs_on, check_gpu_arch, set_deterministic
from harness.util.errors import HarnessError

NO_VOLTA = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]


def _fake_gpu(monkeypatch, capability, arches, name="Tesla V100-SXM2-16GB", version="2.13.0+cu130"):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: name)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: arches)
    monkeypatch.setattr(device_module.torch, "__version__", version)


def test_a_v100_without_volta_kernels_stops_with_the_cu126_pip_line(monkeypatch):
    _fake_gpu(monkeypatch, (7, 0), NO_VOLTA)
    with pytest.raises(HarnessError) as raised:
        check_gpu_arch()
    message = str(raised.value)
    assert "\n" not in message
    assert "Tesla V100-SXM2-16GB" in message and "compute capability 7.0" in message
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126" in message


@pytest.mark.parametrize(
    ("capability", "arches"),
    [
        ((7, 0), ["sm_70", "sm_80"]),  # the CUDA 12.6 build
        ((8, 6), NO_VOLTA),
        ((8, 9), ["sm_80", "sm_86"]),  # cubin of the same major, lower minor
        ((12, 1), ["sm_90", "compute_90"]),  # PTX, compiled by the driver
    ],
)
def test_a_gpu_the_build_runs_on_passes(monkeypatch, capability, arches):
    _fake_gpu(monkeypatch, capability, arches, name="some GPU")
    check_gpu_arch()


def test_runs_on_reads_cubins_and_ptx():
    assert not _runs_on((7, 0), NO_VOLTA)
    assert not _runs_on((8, 0), ["sm_86"])  # a newer minor's cubin does not run on an older minor
    assert not _runs_on((9, 0), ["sm_80"])  # nor another major's
    assert _runs_on((9, 0), ["compute_80"])


def test_run_stops_at_the_arch_check_before_reading_the_study_file(monkeypatch, tmp_path, capsys):
    from harness.cli import main

    _fake_gpu(monkeypatch, (7, 0), NO_VOLTA)
    for command in (["run", str(tmp_path / "missing.yaml")], ["plan", str(tmp_path / "missing.yaml")]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: GPU 0 (Tesla V100") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_no_cuda_nothing_to_check(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: pytest.fail("not asked without CUDA"))
    check_gpu_arch()


def test_deterministic_flag_sets_torch_and_cublas(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    calls = []
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda on, **kw: calls.append(on))
    set_deterministic(False)
    assert calls == [] and "CUBLAS_WORKSPACE_CONFIG" not in __import__("os").environ
    set_deterministic(True)
    assert calls == [True]
    assert __import__("os").environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_reproduction_tolerance_is_wider_only_for_a_nondeterministic_gpu_trial():
    from harness.distill.device import GPU_TOLERANCE, reproduction_tolerance

    assert reproduction_tolerance("cpu:cpu", False, "accuracy", 100) == (pytest.approx(0.01), "")
    assert reproduction_tolerance("cuda:NVIDIA H100", True, "accuracy", 100)[1] == ""
    tolerance, why = reproduction_tolerance("cuda:NVIDIA H100", False, "accuracy", 100)
    assert tolerance == GPU_TOLERANCE and "without fixed.deterministic" in why and f"{GPU_TOLERANCE:g}" in why
    assert reproduction_tolerance(None, False, "mcc", 100) == (2e-3, "")


def test_deterministic_false_keeps_the_fingerprint_true_changes_it():
    from harness.spec.config import parse_study

    base = {"name": "d", "task": "RTE", "teacher": "minilm-l6", "student_layers": 2, "methods": ["kd"]}
    plain = parse_study(base)
    assert plain.fixed.deterministic is False
    assert parse_study({**base, "fixed": {"deterministic": False}}).fingerprint("kd") == plain.fingerprint("kd")
    assert parse_study({**base, "fixed": {"deterministic": True}}).fingerprint("kd") != plain.fingerprint("kd")


def test_deterministic_study_runs_on_cpu_with_deterministic_algorithms(tiny_bert, glue_dir, tmp_path, monkeypatch):
    """``fixed.deterministic: true`` on the CPU: the teacher and a KD student train with torch's deterministic
    algorithms on, and two runs of the same trial give the same score."""
    from harness.distill.experiment import Experiment
    from harness.spec.config import parse_study

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    config = parse_study(
        {
            "name": "det",
            "task": "RTE",
            "teacher": str(tiny_bert),
            "student_layers": 1,
            "methods": ["kd"],
            "fixed": {
                "epochs": 1,
                "max_seq_length": 16,
                "max_train_samples": 32,
                "deterministic": True,
                "teacher": {"epochs": 1, "max_train_samples": 32},
            },
            "search": {"lr": [1e-4], "eta": [0.5]},
        }
    )
    try:
        experiment = Experiment(config, glue_dir, tmp_path, progress=False)
        assert torch.are_deterministic_algorithms_enabled()
        point = {"lr": 1e-4, "eta": 0.5, "lambda": 0.0}
        first = experiment.run_trial("kd", point).best_value
        assert experiment.run_trial("kd", point).best_value == first
    finally:
        torch.use_deterministic_algorithms(False)
