"""The prepared GPU check: ``make gpu-check`` (one GPU, ≤ 8 minutes, no network); ``ARGS=--cpu`` runs it tiny on CPU.

It prints, and writes to ``--out`` (default ``gpu-check.txt``):

1. device, torch, CUDA and cuDNN versions;
2. the tests marked ``gpu`` (``pytest -m gpu``; on a GPU they run on it, elsewhere on the CPU);
3. ALP trials, MiniLM-L6 teacher → student, on a slice of SST-2 (``--cpu``: RTE), in fp32, bf16 and fp16
   (+ gradient scaler), and on a GPU with ``torch.compile`` (bf16): step time, samples/s, peak memory, dev score and
   model FLOP utilisation (training FLOPs ≈ 6 × non-embedding parameters × tokens, the Kaplan et al.
   estimate; the peak from :data:`PEAK_TFLOPS` by device name, dense bf16/fp16 tensor-core numbers of the
   vendors' data sheets; none for CPUs);
4. the largest |α_bf16 − α_fp32| of ALP's attention on real teacher and student [CLS] states of dev, with
   bf16 einsum scores as unguarded autocast would compute them, and with the float32 guard the losses use;
5. ``run --workers 2`` against 1 worker on the same device: trials per hour.

Nothing here asserts a speed: it is a benchmark that prints, so that whoever has a GPU records the numbers.
"""

from __future__ import annotations

import argparse
import math
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.runs import PeakMemory
from harness.data.loading import resolve_data_dir
from harness.distill.device import check_gpu_arch
from harness.distill.experiment import Experiment
from harness.distill.losses import alp_attention
from harness.distill.models import build_student
from harness.distill.train import predict
from harness.spec.config import parse_study
from harness.util.errors import HarnessError
from harness.util.quiet import quiet_libraries

REPO_ROOT = Path(__file__).resolve().parents[1]
PEAK_TFLOPS = {
    "H200": 989,
    "H100": 989,
    "A100": 312,
    "A10G": 125,
    "A10": 125,
    "L40S": 362,
    "L4": 121,
    "V100": 125,
    "T4": 65,
    "RTX 4090": 165,
    "RTX 3090": 71,
}  # dense bf16/fp16 tensor-core TFLOP/s


def _config(args, name: str, precision: str, compile_model: bool = False, lrs=(5e-5,)):
    return parse_study(
        {
            "name": name,
            "task": args.task,
            "teacher": "minilm-l6",
            "student_layers": args.student_layers,
            "methods": ["alp"],
            "fixed": {
                "epochs": 1,
                "max_seq_length": args.max_seq_length,
                "max_train_samples": args.train_samples,
                "precision": precision,
                "compile": compile_model,
                "teacher": {"epochs": 1, "lr": 5e-5, "max_train_samples": args.teacher_samples},
            },
            "search": {"lr": list(lrs), "eta": [0.5], "lambda": [0.2]},
        }
    )


def _peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops for key, tflops in PEAK_TFLOPS.items() if key in name), None)


def trial_rows(args, device: torch.device, data_dir, cache: Path) -> list[str]:
    runs = [("fp32", "fp32", False), ("bf16", "bf16", False), ("fp16 + scaler", "fp16", False)]
    if device.type == "cuda":  # on CPU torch.compile was measured before: no gain, minutes of compilation
        runs.append(("bf16, torch.compile", "bf16", True))
    rows = ["| run | step ms | samples/s | peak MiB | dev acc | MFU |", "|---|---:|---:|---:|---:|---:|"]
    peak = _peak(device)
    for label, precision, compile_model in runs:
        experiment = Experiment(
            _config(args, "gpu-check", precision, compile_model), data_dir, cache, progress=False, device=device
        )
        experiment.prepare_shared()
        student = build_student(experiment.pretrained, args.student_layers, 2, "bottom", 0)
        params = sum(p.numel() for n, p in student.named_parameters() if "embeddings" not in n)
        tokens = float(np.mean([len(f["input_ids"]) for f in experiment.train.features])) * len(experiment.train)
        with PeakMemory(device) as memory:
            history = experiment.run_trial("alp", {"lr": 5e-5, "eta": 0.5, "lambda": 0.2}, seed=0)
        seconds = history.epochs[0]["train_seconds"]
        steps = math.ceil(len(experiment.train) / experiment.config.fixed.batch_size)
        mfu = "–" if peak is None else f"{6 * params * tokens / seconds / (peak * 1e12):.1%}"
        rows.append(
            f"| {label} | {1000 * seconds / steps:.1f} | {len(experiment.train) / seconds:.1f} | "
            f"{memory.mib:.0f} | {100 * history.best_value:.2f} | {mfu} |"
        )
    note = (
        "MFU: 6 × non-embedding parameters × tokens per second over the device's dense bf16/fp16 peak "
        f"({peak} TFLOP/s from the table in bench/gpu_check.py)"
        if peak
        else "MFU: no peak known for this device (CPUs are not in the table), so none is computed"
    )
    return rows + ["", note]


def alpha_lines(args, device: torch.device, data_dir, cache: Path) -> list[str]:
    experiment = Experiment(_config(args, "gpu-check", "fp32"), data_dir, cache, progress=False, device=device)
    teacher = torch.from_numpy(experiment.teacher.dev_cls()).to(device)
    student_model = build_student(experiment.pretrained, args.student_layers, 2, "bottom", 0).to(device)
    dev = experiment.evals["dev"]
    _, student = predict(student_model, dev, 128, experiment.pad_token_id, device, states=True, precision="fp32")
    student = torch.from_numpy(student).to(device)
    exact = alp_attention(student, teacher)
    unguarded = torch.softmax(torch.einsum("bmh,bnh->bmn", student.bfloat16(), teacher.bfloat16()).float(), -1)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        guarded = alp_attention(student, teacher)
    changed = (unguarded.argmax(-1) != exact.argmax(-1)).float().mean().item()
    return [
        f"ALP α on {len(dev)} dev examples (student layers {args.student_layers}, teacher 6, [CLS]):",
        f"  max |α_bf16 − α_fp32| with bf16 scores (unguarded autocast): {(unguarded - exact).abs().max():.4f}; "
        f"arg-max teacher layer changed in {changed:.1%} of rows",
        f"  max |α − α_fp32| under bf16 autocast with the float32 guard: {(guarded - exact).abs().max():.2e}",
    ]


def workers_lines(args, data_dir, cache: Path) -> list[str]:
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        study = Path(tmp) / "w.yaml"
        lrs = [5e-5, 4e-5, 3e-5, 2e-5][: args.worker_points]
        import yaml

        study.write_text(
            yaml.safe_dump(_config(args, "workers", "auto", lrs=lrs).model_dump(mode="json", by_alias=True))
        )
        for workers in (1, 2):
            command = [
                sys.executable,
                str(REPO_ROOT / "run_study.py"),
                "run",
                str(study),
                "--storage",
                f"sqlite:///{tmp}/w{workers}.db",
                "--cache-dir",
                str(cache),
                "--workers",
                str(workers),
            ]
            if data_dir is not None:
                command += ["--data-dir", str(data_dir)]
            started = time.perf_counter()
            done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
            wall = time.perf_counter() - started
            status = "ok" if done.returncode == 0 else f"failed: {done.stderr.strip().splitlines()[-1:]}"
            lines.append(
                f"  --workers {workers}: {len(lrs)} trials in {wall:.1f} s = "
                f"{3600 * len(lrs) / wall:.0f} trials/hour ({status})"
            )
    return ["run --workers on one device (wall time includes start-up):", *lines]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU (< 2 minutes), to test the check")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "gpu-check.txt")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    tiny = args.cpu or not torch.cuda.is_available()
    # --cpu: RTE (277 dev pairs) instead of SST-2 (872), so that it ends in about two minutes
    args.task = "RTE" if tiny else "SST-2"
    args.train_samples, args.teacher_samples = (96, 128) if tiny else (8000, 8000)
    args.student_layers, args.max_seq_length = (2, 32) if tiny else (4, 128)
    args.worker_points = 2 if tiny else 4
    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")
    quiet_libraries(transformers=True)
    try:
        check_gpu_arch()
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    data_dir = resolve_data_dir(args.data_dir, None, str(REPO_ROOT.parent / "shared" / "glue"))
    cache = REPO_ROOT / ".cache"
    lines: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    say(f"# GPU check, {time.strftime('%Y-%m-%d %H:%M')} ({'--cpu, tiny sizes' if tiny else 'full sizes'})")
    cuda = torch.version.cuda or "none"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    say(
        f"device {device} ({name}); torch {torch.__version__}; CUDA {cuda}; "
        f"cuDNN {torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else 'none'}"
    )
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    say(f"tests marked gpu: {(tests.stdout.strip().splitlines() or ['(no output)'])[-1]}")
    say("")
    for row in [
        f"ALP trials (MiniLM-L6 teacher, {args.task} slice):",
        *trial_rows(args, device, data_dir, cache),
    ]:
        say(row)
    say("")
    for line in alpha_lines(args, device, data_dir, cache):
        say(line)
    say("")
    worker = workers_lines(args, data_dir, cache)
    for line in worker:
        say(line)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"written to {args.out}")
    return 0 if tests.returncode == 0 and all("(ok)" in line for line in worker[1:]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
