"""Where and in what precision a run computes: the device, autocast, the GPU arch check, deterministic kernels.

``fixed.precision`` picks the autocast dtype (:func:`autocast_for`); the inter-layer losses stay float32
whatever it says (:func:`harness.distill.losses.float32`). The step log is :mod:`harness.distill.steplog`, the
batches and their prefetching :mod:`harness.distill.batches`.
"""

from __future__ import annotations

import contextlib
import os

import torch

from harness.util.errors import HarnessError


def runtime_info(device: torch.device, compile_model: bool = False, precision: str = "auto") -> dict:
    """How a run executes, stored with each trial."""
    _, dtype = autocast_for(device, precision)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {
        "device": f"{device.type}:{name}",
        "precision": str(dtype).removeprefix("torch.") if dtype else "float32",
        "compiled": compile_model,
        "threads": torch.get_num_threads(),
    }


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


LEGACY_CUDA = "cu126"  # the last CUDA build of PyPI's torch with Volta (sm_70) kernels (pytorch/pytorch#172352)


def _runs_on(capability: tuple[int, int], arches: list[str]) -> bool:
    """Whether a build with ``arches`` (``torch.cuda.get_arch_list()``) runs on a GPU of ``capability``.

    A cubin ``sm_XY`` runs on the same major version with a minor ≥ Y; PTX ``compute_XY`` is compiled
    by the driver for any capability ≥ XY."""
    major, minor = capability
    for arch in arches:
        kind, _, number = arch.partition("_")
        if not number.isdigit():
            continue
        a_major, a_minor = int(number[:-1]), int(number[-1])
        if kind == "sm" and a_major == major and a_minor <= minor:
            return True
        if kind == "compute" and (a_major, a_minor) <= (major, minor):
            return True
    return False


def check_gpu_arch() -> None:
    """Stop with one line when a visible GPU's compute capability has no kernels in this torch build.

    PyPI's CUDA wheels dropped Volta (sm_70, the V100) in torch 2.11; the CUDA 12.6 build of the same
    version keeps it. Called at the start of ``run``, ``plan`` and the GPU check, before any kernel runs
    (else the first kernel fails with "no kernel image is available"). Nothing to check without CUDA.
    """
    if not torch.cuda.is_available():
        return
    arches = list(torch.cuda.get_arch_list())
    for index in range(torch.cuda.device_count()):
        capability = tuple(torch.cuda.get_device_capability(index))
        if _runs_on(capability, arches):
            continue
        version = torch.__version__.split("+")[0]
        raise HarnessError(
            f"GPU {index} ({torch.cuda.get_device_name(index)}, compute capability {capability[0]}.{capability[1]}) "
            f"has no kernels in this torch {torch.__version__} build (it has {' '.join(arches) or 'none'}); install "
            f"the CUDA 12.6 build of the same version: pip install torch=={version} "
            f"--index-url https://download.pytorch.org/whl/{LEGACY_CUDA}"
        )


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def synchronize(device) -> None:
    """Wait for the work queued on a CUDA ``device`` (a no-op elsewhere): a timing must not stop the clock while
    the kernels still run."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def autocast_for(
    device: torch.device, precision: str = "auto"
) -> tuple[contextlib.AbstractContextManager, torch.dtype | None]:
    """The autocast context of ``precision`` (``fixed.precision``) on ``device``, and its dtype (None: fp32).

    ``auto``: bf16 on CUDA where supported, else fp16 (trained with a gradient scaler); fp32 on CPU.
    ``bf16`` / ``fp16`` run autocast on CPU too (slow there, but the same code path as on a GPU). The
    inter-layer losses stay float32 whatever this says (:func:`harness.distill.losses.float32`).
    """
    if precision == "auto":
        if device.type != "cuda":
            return contextlib.nullcontext(), None
        precision = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    if precision == "fp32":
        return contextlib.nullcontext(), None
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device.type, dtype=dtype), dtype


CUBLAS_WORKSPACE = ":4096:8"  # what cuBLAS needs for reproducible results (CUDA docs, "Results reproducibility")


def set_deterministic(on: bool) -> None:
    """``fixed.deterministic``: deterministic kernels for the teacher and the students of this process.

    Sets ``CUBLAS_WORKSPACE_CONFIG`` (unless already set) before any cuBLAS handle exists, turns on
    ``torch.use_deterministic_algorithms`` (an op without a deterministic kernel then raises) and turns off
    cuDNN's benchmark autotuner. ``False`` leaves torch's defaults alone. On the CPU the kernels are
    deterministic anyway; the flag costs GPU speed (measured: not yet, no GPU was lent).
    """
    if not on:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


GPU_TOLERANCE = 0.02  # chosen, not measured: 2 points of the primary metric for a re-run with nondeterministic kernels


def reproduction_tolerance(device: str | None, deterministic: bool, metric: str, n: int) -> tuple[float, str]:
    """How far ``export`` and ``reproduce`` may land from a trial's stored score, and why (``""``: exact).

    One example's worth of accuracy (else 2e-3) for a trial that ran on the CPU or with
    ``fixed.deterministic``; a trial that ran on a GPU without it used nondeterministic kernels (atomic
    adds in cuBLAS/cuDNN), so a re-run differs by chance and :data:`GPU_TOLERANCE` is allowed."""
    exact = 1.0 / n + 1e-9 if metric == "accuracy" else 2e-3
    if not (device or "").startswith("cuda") or deterministic:
        return exact, ""
    return max(exact, GPU_TOLERANCE), (
        f"the trial ran on {device} without fixed.deterministic, so a difference up to {GPU_TOLERANCE:g} in "
        f"{metric} is expected (nondeterministic GPU kernels)"
    )
