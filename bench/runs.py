"""One measured run for the trial benchmark: our trial, or the Hugging Face ``Trainer`` reference with the
same KD + ALP loss and a live teacher; wall time, step time, samples/s, peak memory and the dev score."""

from __future__ import annotations

import ctypes
import gc
import json
import math
import os
import resource
import statistics
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from harness.data.encoding import EncodedSplit
from harness.distill.device import autocast_for
from harness.distill.experiment import Experiment
from harness.distill.losses import InterLayerLoss, kd_loss, regression_kd_loss
from harness.distill.models import build_student
from harness.distill.train import Hyper, layer_cls
from harness.spec.methods import get_method
from harness.spec.metrics import compute_metrics
from harness.util.errors import HarnessError

# ---------------------------------------------------------------------------------------------- measuring


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as stream:
            return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the process-wide high-water mark is the best there is
        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _release_freed_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so the next phase's baseline is honest
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory of one phase, in MiB, as ``self.mib`` after the ``with`` block.

    CUDA: ``torch.cuda.max_memory_allocated`` since entry (tensors only, models included). CPU: the
    resident set size, sampled every 10 ms by a thread and once at exit, minus the RSS at entry.
    tracemalloc would miss torch's CPU allocations, and ``ru_maxrss`` is a process-wide high-water
    mark that never falls, so it cannot tell phases run one after another apart.
    """

    def __init__(self, device: torch.device, every: float = 0.01):
        self.device, self.every, self.mib = device, every, 0.0
        self._stop = threading.Event()
        self._peak = self._start = 0

    def __enter__(self) -> PeakMemory:
        _release_freed_memory()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self._start = self._peak = _rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.every):
            self._peak = max(self._peak, _rss_bytes())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20
            return
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, _rss_bytes())
        self.mib = (self._peak - self._start) / 2**20


@dataclass(frozen=True)
class RunResult:
    """One timed training run. ``seconds`` covers building the student, training and every epoch's
    evaluation; ``train_seconds`` the training steps alone; ``cache_seconds`` the teacher-output cache
    build that this run needed first (0 where none)."""

    name: str
    seconds: float
    train_seconds: float
    steps: int
    samples: int
    peak_mib: float
    dev: float
    cpu_seconds: float  # this process's CPU time over ``seconds``: less sensitive to other work on the machine
    cache_seconds: float = 0.0

    @property
    def step_ms(self) -> float:
        return 1000 * self.train_seconds / self.steps

    @staticmethod
    def median(runs: list[RunResult]) -> RunResult:
        """The runs of one name (``--repeats``) as one: the median of every measured field."""
        fields = ("seconds", "train_seconds", "peak_mib", "dev", "cpu_seconds")
        first = runs[0]
        medians = {name: statistics.median(getattr(r, name) for r in runs) for name in fields}
        return replace(first, **medians)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.train_seconds


@dataclass(frozen=True)
class CacheBuild:
    """The first build of what the trials read of the teacher, timed as ``prepare`` would build it."""

    outputs_seconds: float  # the teacher-output cache of the training set
    dev_seconds: float  # the α probe's dev [CLS] states (about 0 where they were in the teacher's folder)
    dev_made_by: str | None  # what made the dev states found in the teacher's folder; None: built here
    mib: float  # peak memory of the two

    @property
    def dev_kept(self) -> bool:
        return self.dev_made_by is not None

    def describe(self) -> str:
        dev = (
            f"the α probe's dev states were in the teacher's folder (made by {self.dev_made_by})"
            if self.dev_kept
            else f"the α probe's dev states built in {self.dev_seconds:.1f} s (a teacher cached without them)"
        )
        return f"teacher-output cache built in {self.outputs_seconds:.1f} s, {dev} (peak Δ {self.mib:.0f} MiB)"


def build_cache(experiment: Experiment) -> CacheBuild:
    """Build what ``prepare`` builds for the trials, before them: the teacher-output cache of the training set and
    the α probe's dev [CLS] states (kept with the teacher). A KD trial's first build is the first, an ALP
    trial's both."""
    manifest = experiment.teacher.dev_states_dir() / "manifest.json"
    made_by = json.loads(manifest.read_text()).get("made_by", "an older version") if manifest.is_file() else None
    with PeakMemory(experiment.device) as memory:
        started = time.perf_counter()
        experiment.teacher.signal(live=False)
        outputs = time.perf_counter() - started
        experiment.teacher.dev_cls()
        dev = time.perf_counter() - started - outputs
    return CacheBuild(outputs, dev, made_by, memory.mib)


def run_ours(experiment: Experiment, method: str, point: dict[str, float], cache_seconds: float = 0.0) -> RunResult:
    """One of our trials, exactly as a study runs it (without Optuna around it)."""
    with PeakMemory(experiment.device) as memory:
        started, cpu_started = time.perf_counter(), time.process_time()
        history = experiment.run_trial(method, point, desc=method)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    epochs = len(history.epochs)
    steps = epochs * math.ceil(len(experiment.train) / experiment.config.fixed.batch_size)
    return RunResult(
        f"{method} trial",
        seconds,
        sum(r["train_seconds"] for r in history.epochs),
        steps,
        epochs * len(experiment.train),
        memory.mib,
        history.best_value,
        cpu_seconds,
        cache_seconds,
    )


# ---------------------------------------------------------------------------------------------- reference


def _records(data: EncodedSplit) -> list[dict]:
    """The split as a list of feature dicts with ``labels``: a map-style dataset for ``Trainer``."""
    return [{**feature, "labels": label.item()} for feature, label in zip(data.features, data.labels)]


def reference_trainer_class():
    """``DistillTrainer``, defined on first use so that importing this module does not need accelerate."""
    from transformers import Trainer

    class DistillTrainer(Trainer):
        """KD + ALP with a live teacher, written the way a ``Trainer`` user would."""

        def __init__(self, *args, teacher, inter: InterLayerLoss, hyper: Hyper, task, **kwargs):
            super().__init__(*args, **kwargs)
            self.teacher = teacher.to(self.args.device).eval()
            self.inter = inter.to(self.args.device)
            self.hyper, self.task = hyper, task
            self.eval_seconds, self.scores = 0.0, []

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not model.training:  # evaluation scores the student alone; no teacher run
                outputs = model(**inputs)
                return (outputs.loss, outputs) if return_outputs else outputs.loss
            inputs = dict(inputs)
            labels = inputs.pop("labels")
            outputs = model(**inputs, output_hidden_states=True)
            with torch.no_grad():
                teacher = self.teacher(**inputs, output_hidden_states=True)
            logits, teacher_logits = outputs.logits.float(), teacher.logits.float()
            if self.task.is_regression:
                ce = F.mse_loss(logits.squeeze(-1), labels.float())
                kd = regression_kd_loss(logits, teacher_logits)
            else:
                ce = F.cross_entropy(logits, labels)
                kd = kd_loss(logits, teacher_logits, temperature=self.hyper.temperature)
            inter = self.inter(layer_cls(outputs.hidden_states).float(), layer_cls(teacher.hidden_states).float())
            loss = self.hyper.beta * ce + self.hyper.eta * kd + self.hyper.lam * inter
            return (loss, outputs) if return_outputs else loss

        def evaluate(self, *args, **kwargs):
            started = time.perf_counter()
            metrics = super().evaluate(*args, **kwargs)
            self.eval_seconds += time.perf_counter() - started
            self.scores.append(metrics[f"eval_{self.task.primary_metric}"])
            return metrics

    return DistillTrainer


def run_reference(experiment: Experiment, point: dict[str, float], out_dir: Path) -> RunResult:
    """The reference KD + ALP trainer on the experiment's data, student init and hyper-parameters."""
    try:
        import accelerate  # noqa: F401 - transformers.Trainer refuses to run without it
    except ImportError:
        raise HarnessError("the reference trainer needs the 'accelerate' package (pip install accelerate)") from None
    from transformers import DataCollatorWithPadding, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    config, fixed, task, device = experiment.config, experiment.config.fixed, experiment.task, experiment.device
    hyper = experiment.hyper(point, fixed.seed)  # the same values as our trial, precision included
    total_steps = fixed.epochs * math.ceil(len(experiment.train) / fixed.batch_size)
    _, amp_dtype = autocast_for(device, hyper.precision)
    with PeakMemory(device) as memory:
        started, cpu_started = time.perf_counter(), time.process_time()
        student = build_student(
            experiment.pretrained, config.student_layers, task.num_labels, fixed.student_init, fixed.seed
        )
        teacher = experiment.teacher.load_model()
        inter = InterLayerLoss(
            get_method("alp"),
            teacher.config.num_hidden_layers,
            config.student_layers,
            student.config.hidden_size,
            teacher.config.hidden_size,
            alp_scale=fixed.alp_scale,
        )
        assert not list(inter.parameters()), "students share the teacher's hidden size, so ALP has no projection"
        args = TrainingArguments(
            output_dir=str(out_dir),
            per_device_train_batch_size=fixed.batch_size,
            per_device_eval_batch_size=fixed.eval_batch_size,
            learning_rate=hyper.lr,
            num_train_epochs=fixed.epochs,
            warmup_steps=int(fixed.warmup_ratio * total_steps),
            weight_decay=fixed.weight_decay,
            max_grad_norm=fixed.max_grad_norm,
            lr_scheduler_type="linear",
            eval_strategy="epoch",
            save_strategy="no",
            logging_strategy="no",
            report_to="none",
            seed=fixed.seed,
            disable_tqdm=True,
            use_cpu=device.type == "cpu",
            bf16=amp_dtype == torch.bfloat16,
            fp16=amp_dtype == torch.float16,
        )
        eval_split = experiment.evals[task.eval_splits[0]]
        trainer = reference_trainer_class()(
            model=student,
            args=args,
            train_dataset=_records(experiment.train),
            eval_dataset=_records(eval_split),
            data_collator=DataCollatorWithPadding(experiment.tokenizer),
            compute_metrics=lambda prediction: compute_metrics(task, prediction.predictions, prediction.label_ids),
            teacher=teacher,
            inter=inter,
            hyper=hyper,
            task=task,
        )
        trainer.remove_callback(PrinterCallback)  # keep the console to the bench's own lines
        train_started = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - train_started - trainer.eval_seconds
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return RunResult(
        "reference KD+ALP",
        seconds,
        train_seconds,
        trainer.state.global_step,
        fixed.epochs * len(experiment.train),
        memory.mib,
        max(trainer.scores),
        cpu_seconds,
    )
