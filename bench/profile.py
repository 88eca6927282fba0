"""Where the time of one student step goes: ``python -m bench.trial --profile``.

:class:`StudentSteps` runs training steps of our student exactly as :func:`harness.distill.train.fit` does,
one at a time; :func:`profile_step` profiles a few of them with ``torch.profiler`` and times three
AdamW implementations on the same parameters. The README's "Where the time goes" reads its output.
"""

from __future__ import annotations

import statistics
import time

import torch

from harness.distill.batches import to_batch, token_lengths, train_batches
from harness.distill.experiment import Experiment
from harness.distill.losses import InterLayerLoss
from harness.distill.models import build_student, load_config
from harness.distill.train import Hyper, LossTerms
from harness.spec.methods import get_method


class StudentSteps:
    """Training steps of one of our students exactly as :func:`harness.distill.train.fit` runs them, one at a time."""

    def __init__(self, experiment: Experiment, method: str, point: dict[str, float]):
        config, fixed, self.device = experiment.config, experiment.config.fixed, experiment.device
        spec = get_method(method)
        self.student = (
            build_student(
                experiment.pretrained, config.student_layers, experiment.task.num_labels, fixed.student_init, fixed.seed
            )
            .to(self.device)
            .train()
        )
        inter = None
        if spec.inter is not None:
            teacher_config = load_config(str(experiment.teacher.prepare().path))
            inter = InterLayerLoss(
                spec,
                teacher_config.num_hidden_layers,
                config.student_layers,
                self.student.config.hidden_size,
                teacher_config.hidden_size,
                alp_scale=fixed.alp_scale,
            ).to(self.device)
        self.hyper = Hyper(
            lr=point["lr"], eta=point["eta"], lam=point["lambda"], batch_size=fixed.batch_size, seed=fixed.seed
        )
        signal = experiment.teacher.signal(live=False) if spec.searches_eta else None
        self.losses = LossTerms(experiment.task, self.hyper, inter, signal, self.device)
        self.params = [p for p in self.student.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=self.hyper.lr, weight_decay=self.hyper.weight_decay)
        self.batches = train_batches(token_lengths(experiment.train), fixed.batch_size, fixed.seed, 0)
        self.data, self.pad_token_id, self.done = experiment.train, experiment.pad_token_id, 0

    def run(self, steps: int) -> None:
        """``steps`` steps; the phases are labelled for torch.profiler."""
        from torch.profiler import record_function

        for _ in range(steps):
            index = self.batches[self.done % len(self.batches)]
            self.done += 1
            batch = to_batch(self.data, index, self.pad_token_id, self.device)
            with record_function("phase: forward + losses"):
                loss = self.losses.total(self.losses(self.student, batch, index))
            with record_function("phase: backward"):
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
            with record_function("phase: clip_grad_norm"):
                torch.nn.utils.clip_grad_norm_(self.params, self.hyper.max_grad_norm)
            with record_function("phase: optimizer.step"):
                self.optimizer.step()


def profile_step(experiment: Experiment, point: dict[str, float], steps: int = 3) -> str:
    """Profile ALP student steps on the cached teacher outputs and say where the time goes."""
    from torch.profiler import ProfilerActivity, profile

    steps_of = StudentSteps(experiment, "alp", point)
    steps_of.run(2)  # warm-up
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        steps_of.run(steps)
    events = prof.key_averages()
    phases = {e.key.removeprefix("phase: "): e.cpu_time_total for e in events if e.key.startswith("phase: ")}
    total = sum(phases.values())
    embedding = steps_of.student.get_input_embeddings().weight
    vocab_shape = list(embedding.shape)
    ops = [e for e in prof.key_averages(group_by_input_shape=True) if not e.key.startswith("phase: ")]
    op_total = sum(e.self_cpu_time_total for e in ops)
    on_vocab = sum(e.self_cpu_time_total for e in ops if vocab_shape in [list(s) for s in e.input_shapes])
    n_params = sum(p.numel() for p in steps_of.params)
    tokens = steps_of.hyper.batch_size * float(token_lengths(experiment.train).mean())
    return "\n".join(
        [
            f"profile: {steps} ALP student steps ({experiment.config.student_layers} layers, batch "
            f"{steps_of.hyper.batch_size}, cached teacher outputs) on {experiment.device.type}, "
            f"{torch.get_num_threads()} threads: {total / steps / 1000:.0f} ms per step",
            "  phases: " + ", ".join(f"{name} {100 * us / total:.0f}%" for name, us in phases.items()),
            f"  ops whose input is a {vocab_shape[0]}x{vocab_shape[1]} tensor (the word embedding, its dense gradient, "
            f"AdamW's moments): {100 * on_vocab / op_total:.0f}% of all op self time; the word embedding is "
            f"{100 * embedding.numel() / n_params:.0f}% of the {n_params / 1e6:.1f}M trainable parameters, while a "
            f"batch touches at most ~{tokens:.0f} of its {vocab_shape[0]} rows",
            events.table(sort_by="self_cpu_time_total", row_limit=12),
            *_optimizer_variants(steps_of.params, steps_of.hyper),
            *reading(on_vocab / op_total),
        ]
    )


def reading(vocab_share: float) -> list[str]:
    """What the profile says, and what could be done without changing the method's mathematics."""
    if vocab_share >= 0.4:
        head = [
            "  reading: the step is dominated not by the transformer layers but by per-step work over the whole",
            "  30k x H word-embedding matrix:",
        ]
    else:
        head = [
            f"  reading: the transformer layers' matmuls dominate here; work over the 30k x H word-embedding "
            f"matrix is {100 * vocab_share:.0f}%:"
        ]
    return head + [
        "  embedding_dense_backward zero-fills a dense 30k x H gradient (aten::fill_) and scatters the batch's few",
        "  hundred rows into it, clip_grad_norm reads all of it again, and for-loop AdamW makes ~7 element-wise",
        "  passes over it and its two moment buffers (lerp_, mul_, addcmul_, sqrt, div, addcdiv_, add_).",
        "  Same mathematics, less time: AdamW(fused=True) (one pass per tensor; optimizer.step() times above;",
        "  HF Trainer's default 'adamw_torch_fused' already does this) or a torch.compile'd optimizer step.",
        "  Not exact, so not proposed: sparse embedding gradients with SparseAdam/lazy Adam (untouched rows",
        "  would skip their momentum and weight-decay updates), frozen embeddings, or bigger batches.",
    ]


def _optimizer_variants(params: list[torch.nn.Parameter], hyper: Hyper, repeats: int = 5) -> list[str]:
    """Time ``optimizer.step()`` on the current gradients with AdamW's three implementations (same update)."""
    lines = ["  optimizer.step() alone, median of 5, same AdamW update, three implementations:"]
    for label, kwargs in (
        ("for-loop (PyTorch's default on CPU)", {"foreach": False}),
        ("foreach", {"foreach": True}),
        ("fused", {"fused": True}),
    ):
        try:
            optimizer = torch.optim.AdamW(params, lr=hyper.lr, weight_decay=hyper.weight_decay, **kwargs)
        except (RuntimeError, ValueError) as error:
            lines.append(f"    {label}: not available here ({str(error).splitlines()[0]})")
            continue
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            optimizer.step()
            times.append(time.perf_counter() - started)
        lines.append(f"    {label}: {1000 * statistics.median(times):.1f} ms")
    return lines
