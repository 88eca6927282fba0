"""One training run: a student (or a teacher being fine-tuned) trained for a few epochs.

The loss is ``L = β·CE + η·KD + λ·L_inter`` with ``β = 1 − η − λ``. For regression (STS-B) the
task loss is MSE and KD is MSE on the logits. Training uses AdamW with a linear warm-up and decay
(``transformers.get_linear_schedule_with_warmup``). After every epoch the model is scored on the
dev split(s); the value of the run is the **best epoch's** primary metric on the selection split
(``select_split``: dev under the paper's protocol, a held-out slice of train under
``fixed.selection: holdout``; on MNLI dev means matched). The logits of the best epoch and of the
last epoch are kept (``History.predictions``), so that whichever epoch is reported can be stored.

Determinism: the data order and the dropout masks of epoch ``e`` are functions of ``(seed, e)``
alone (the torch RNG is re-seeded at the start of every epoch), so a run resumed from an epoch
checkpoint reproduces the uninterrupted run exactly (on the same device and thread count).

Batching: training batches group examples of similar length (chunks of 50 batches, sorted by
length, cut into batches, then the batches are shuffled; seeded) and are padded to their longest
member; evaluation runs in length order. Neither changes the mathematics, only the padding.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from harness.data.encoding import EncodedSplit
from harness.distill.batches import eval_batches, prefetch, to_batch, to_device, token_lengths, train_batches
from harness.distill.device import autocast_for, pick_device, synchronize
from harness.distill.last_layer import cls_only
from harness.distill.losses import InterLayerLoss, kd_loss, regression_kd_loss
from harness.distill.method_loss import MethodLoss, States, eager_attention
from harness.distill.models import load_checkpoint
from harness.distill.steplog import LossLog
from harness.spec.metrics import compute_metrics
from harness.spec.tasks import TaskSpec
from harness.util import signals
from harness.util.errors import HarnessError
from harness.util.files import atomic_write


@dataclass(frozen=True)
class Hyper:
    """The values of one run that are not the model or the data."""

    lr: float
    eta: float = 0.0
    lam: float = 0.0
    epochs: int = 1
    batch_size: int = 32
    eval_batch_size: int = 128
    seed: int = 42
    temperature: float = 1.0
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    precision: str = "auto"  # see autocast_for

    @property
    def beta(self) -> float:
        return 1.0 - self.eta - self.lam


@dataclass
class TeacherSignal:
    """What the student learns from, per training example (row ``i`` = example ``i``).

    ``logits`` is ``[n, C]``; ``cls`` is ``[n, N, H]``, the [CLS] vector of every teacher
    transformer layer (embedding output excluded). Either may be a memory-mapped array.
    ``live`` is the frozen teacher itself, for methods that need every token.
    """

    logits: np.ndarray | None = None
    cls: np.ndarray | None = None
    live: torch.nn.Module | None = None


@dataclass
class History:
    """What a run produced: one record per epoch, the best epoch's value, and the eval logits of
    the best and the last epoch (``predictions[epoch][split]``, float16). ``resumed_from``: the epochs
    restored from a checkpoint (0 for a run from scratch). ``best_state``: the model's weights after the
    best epoch (on the CPU), kept by ``fit(keep_best=True)`` and in its checkpoints."""

    epochs: list[dict] = field(default_factory=list)
    best_value: float = -math.inf
    best_epoch: int = -1
    predictions: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    resumed_from: int = 0
    best_state: dict | None = None  # the model's weights (CPU) after the best epoch, with fit(keep_best=True)

    def add(self, record: dict, value: float, predictions: dict[str, np.ndarray] | None = None) -> None:
        self.epochs.append(record)
        if value > self.best_value:
            self.best_value, self.best_epoch = value, record["epoch"]
        if predictions is not None:
            self.predictions[record["epoch"]] = {s: p.astype(np.float16) for s, p in predictions.items()}
        keep = {self.best_epoch, record["epoch"]}
        self.predictions = {e: p for e, p in self.predictions.items() if e in keep}


def layer_cls(hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """[B, L, H]: the [CLS] vector of each transformer layer (``hidden_states[0]`` is embeddings)."""
    return torch.stack([h[:, 0] for h in hidden_states[1:]], dim=1)


@torch.no_grad()
def predict(
    model,
    data: EncodedSplit,
    batch_size: int,
    pad_token_id: int,
    device: torch.device,
    states: bool = False,
    precision: str = "auto",
) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits for every example of ``data``, in the original order, and (``states``) the [CLS]
    vector of every transformer layer, ``[n, L, H]``."""
    model.eval()
    amp, _ = autocast_for(device, precision)
    lengths = token_lengths(data)
    out = np.zeros((len(data), model.config.num_labels), dtype=np.float32)
    cls = (
        np.zeros((len(data), model.config.num_hidden_layers, model.config.hidden_size), dtype=np.float32)
        if states
        else None
    )
    for index in eval_batches(lengths, batch_size):
        signals.check()
        batch = to_batch(data, index, pad_token_id, device)
        batch.pop("labels")
        with amp, cls_only(model):  # logits and [CLS] states read the top layer's [CLS] position only
            output = model(**batch, output_hidden_states=states)
        out[index] = output.logits.float().cpu().numpy()
        if states:
            cls[index] = layer_cls(output.hidden_states).float().cpu().numpy()
    return out, cls


def evaluate(
    model,
    task: TaskSpec,
    evals: Mapping[str, EncodedSplit],
    batch_size: int,
    pad_token_id: int,
    device: torch.device,
    probe: Callable | None = None,
    precision: str = "auto",
) -> tuple[dict, dict[str, np.ndarray], dict]:
    """Metrics per eval split (e.g. ``{"dev": {"accuracy": 0.81}}``), the logits per split, and what
    ``probe(dev [CLS] states [n, L, H])`` returns for the first eval split (``{}`` without a probe)."""
    metrics, logits, probed = {}, {}, {}
    for number, (split, data) in enumerate(evals.items()):
        logits[split], cls = predict(
            model, data, batch_size, pad_token_id, device, states=probe is not None and number == 0, precision=precision
        )
        metrics[split] = compute_metrics(task, logits[split], data.labels)
        if cls is not None:
            probed = probe(cls)
    return metrics, logits, probed


def primary_value(task: TaskSpec, metrics: dict[str, dict[str, float]], split: str | None = None) -> float:
    """The number a trial is ranked by: the primary metric on ``split`` (default the first eval
    split; MNLI: matched)."""
    return metrics[split or task.eval_splits[0]][task.primary_metric]


class LossTerms:
    """Computes the three loss terms of one batch; ``teacher`` is ``None`` for NKD and teachers.

    ``inter`` is the method's own term (:class:`~harness.distill.method_loss.MethodLoss`); it gets
    :class:`~harness.distill.method_loss.States` of the student and the teacher holding the states it declared.
    """

    def __init__(
        self,
        task: TaskSpec,
        hyper: Hyper,
        inter: MethodLoss | None,
        teacher: TeacherSignal | None,
        device: torch.device,
    ):
        inter = MethodLoss.around(inter)  # a built-in's InterLayerLoss passed directly (tests, benchmarks)
        self.task, self.hyper, self.inter, self.teacher, self.device = task, hyper, inter, teacher, device
        self.needs_states = inter is not None and teacher is not None
        wanted = set(inter.states) if self.needs_states else set()
        self.hidden = bool(wanted & {"cls", "tokens"})
        self.attentions = "attentions" in wanted
        self.wanted = wanted
        self.top_cls_only = not wanted & {"tokens", "attentions"}  # harness.distill.last_layer

    def _states(self, outputs, batch: dict, logits: torch.Tensor) -> States:
        """The declared states of one forward pass (the model's ``output_hidden_states``/``output_attentions``)."""
        states = States(logits=logits)
        if "cls" in self.wanted:
            states.cls = layer_cls(outputs.hidden_states).float()
        if "tokens" in self.wanted:
            states.tokens = torch.stack(outputs.hidden_states[1:], dim=1).float()
        if "attentions" in self.wanted:
            if not outputs.attentions:
                raise HarnessError(
                    f"method {self.inter.spec.key!r} declares 'attentions' but the model gives none "
                    f"(attn_implementation {'sdpa or flash'}); "
                    "allowed: a model with eager attention"
                )
            states.attentions = torch.stack(outputs.attentions, dim=1).float()
        if self.wanted & {"tokens", "attentions"}:
            states.attention_mask = batch["attention_mask"]
        return states

    def _forward(self, model, batch: dict):
        if self.attentions:
            return model(**batch, output_hidden_states=self.hidden, output_attentions=True)
        with cls_only(model, enabled=self.top_cls_only):
            return model(**batch, output_hidden_states=self.hidden)

    def __call__(self, model, batch: dict, index: np.ndarray) -> dict[str, torch.Tensor]:
        labels = batch.pop("labels")
        outputs = self._forward(model, batch)
        logits = outputs.logits.float()
        if self.task.is_regression:
            terms = {"ce": F.mse_loss(logits.squeeze(-1), labels.float())}
        else:
            terms = {"ce": F.cross_entropy(logits, labels)}
        if self.teacher is None:
            return terms
        teacher = self._teacher_outputs(batch, index)
        if self.task.is_regression:
            terms["kd"] = regression_kd_loss(logits, teacher.logits)
        else:
            terms["kd"] = kd_loss(logits, teacher.logits, temperature=self.hyper.temperature)
        if self.needs_states:
            terms["inter"] = self.inter(self._states(outputs, batch, logits), teacher)
        return terms

    def _teacher_outputs(self, batch: dict, index: np.ndarray) -> States:
        if self.teacher.live is not None:
            with torch.no_grad():
                out = self._forward(self.teacher.live, batch)
            return self._states(out, batch, out.logits.float())
        sorted_index = np.sort(index)
        inverse = np.searchsorted(sorted_index, index)
        logits = torch.from_numpy(np.asarray(self.teacher.logits[sorted_index], dtype=np.float32)[inverse])
        states = States(logits=to_device(logits, self.device))
        if "cls" in self.wanted:
            cls = torch.from_numpy(np.asarray(self.teacher.cls[sorted_index], dtype=np.float32)[inverse])
            states.cls = to_device(cls, self.device)
        return states

    def total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        hyper = self.hyper
        loss = hyper.beta * terms["ce"]
        if "kd" in terms:
            loss = loss + hyper.eta * terms["kd"]
        if "inter" in terms:
            loss = loss + hyper.lam * terms["inter"]
        return loss


def fit(
    model,
    task: TaskSpec,
    hyper: Hyper,
    train: EncodedSplit,
    evals: Mapping[str, EncodedSplit],
    pad_token_id: int,
    *,
    inter: MethodLoss | InterLayerLoss | None = None,  # None for methods without their own loss term
    teacher: TeacherSignal | None = None,
    checkpoint: Path | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    desc: str = "train",
    device: torch.device | None = None,
    progress: bool = True,
    compile_model: bool = False,
    select_split: str | None = None,
    probe: Callable[[np.ndarray], dict] | None = None,
    keep_best: bool = False,
    stop_after: int | None = None,
) -> History:
    """Train ``model`` (and the inter-layer loss's projections) and score it after every epoch.

    ``on_epoch(record)`` is called after each epoch (the study reports to Optuna there, and may
    raise ``optuna.TrialPruned``). With ``checkpoint`` set, the state after each epoch is saved
    atomically there and a later call with the same path resumes after the last saved epoch.
    A non-finite loss raises :class:`FloatingPointError` naming the term and the step (checked
    every :data:`~harness.distill.steplog.SYNC_EVERY` steps, see :class:`LossLog`). ``compile_model`` runs the training
    forward through ``torch.compile`` (off by default: it costs minutes of compilation per trial
    on CPU and only pays off for long GPU trials). ``select_split`` names the eval split whose
    primary metric is the epoch's value (default: the first). ``probe(cls)`` gets the student's dev
    [CLS] states after each epoch and returns JSON-able fields for the epoch record (ALP's α).
    ``keep_best`` keeps a CPU copy of the weights after the best epoch in ``History.best_state``;
    ``stop_after`` ends the run after that epoch (the schedule still spans ``hyper.epochs``).
    """
    device = device or pick_device()
    inter = MethodLoss.around(inter)  # a built-in's InterLayerLoss passed directly (tests, benchmarks)
    steps_per_epoch = math.ceil(len(train) / hyper.batch_size)
    step = Stepper(model, task, hyper, inter, teacher, device, steps_per_epoch * hyper.epochs)
    if compile_model:
        step.forward = torch.compile(model)
    history = History()
    start_epoch = 0

    trained = (model, inter, step.optimizer, step.scheduler, step.scaler)
    state = load_checkpoint(checkpoint) if checkpoint is not None else None
    if state is not None:
        history = _restore(state, *trained)
        start_epoch = history.resumed_from = len(history.epochs)
        for record in history.epochs:  # the resumed run reports the restored epochs again
            if on_epoch is not None:
                on_epoch(record)

    lengths = token_lengths(train)
    for epoch in range(start_epoch, min(stop_after or hyper.epochs, hyper.epochs)):
        started = time.perf_counter()
        torch.manual_seed(hyper.seed * 1000 + epoch)
        model.train()
        log = LossLog()
        batches = train_batches(lengths, hyper.batch_size, hyper.seed, epoch)
        # The next batches are collated (and, on CUDA, copied) on a background thread while this one trains.
        ready = prefetch(lambda index: (index, to_batch(train, index, pad_token_id, device)), batches)
        bar = tqdm(
            ready,
            total=len(batches),
            desc=f"{desc} epoch {epoch + 1}/{hyper.epochs}",
            leave=False,
            dynamic_ncols=True,
            disable=not progress,
        )
        for index, batch in bar:
            signals.check()  # SIGTERM or a lost claim: stop at this step (harness.util.signals)
            terms, loss, norm, lr = step(batch, index)
            if log.add(terms, loss, epoch + 1, lr=lr, grad_norm=norm):
                bar.set_postfix(loss=f"{log.last:.4f}", refresh=False)
        log.flush(epoch + 1)
        bar.close()
        ready.close()
        train_seconds = time.perf_counter() - started
        metrics, logits, probed = evaluate(
            model, task, evals, hyper.eval_batch_size, pad_token_id, device, probe, hyper.precision
        )
        value = primary_value(task, metrics, select_split)
        record = {
            "epoch": epoch + 1,
            "value": value,
            "metrics": metrics,
            "losses": log.means(len(batches)),
            "steps": log.trace,  # every SYNC_EVERY steps: unweighted terms, gradient norm, learning rate
            **probed,
            "train_seconds": train_seconds,
            "seconds": time.perf_counter() - started,
        }
        signals.check()  # a claim lost during the evaluation: write nothing more
        history.add(record, value, logits)
        if keep_best and history.best_epoch == record["epoch"]:
            history.best_state = {
                name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()
            }
        if checkpoint is not None:
            _save(checkpoint, history, *trained)
        if on_epoch is not None:
            on_epoch(record)
    return history


class Stepper:
    """What one training step of :func:`fit` needs, set up once: the model (and a live teacher) on ``device``,
    eager attention where the method reads attention maps, the trained parameters (the model's and the inter-layer
    loss's), fused AdamW, the linear schedule over ``total_steps``, autocast and, for fp16, a gradient scaler.
    ``fit`` runs its steps through it, and so does ``plan``'s micro-run (:meth:`timed`), so the step that is timed
    is the step the sweep runs."""

    def __init__(self, model, task: TaskSpec, hyper: Hyper, inter, teacher, device: torch.device, total_steps: int):
        model.to(device)
        if inter is not None and inter.needs_attentions:  # sdpa/flash attention return no attention probabilities
            for net in (model, teacher.live if teacher is not None else None):
                if net is not None:
                    eager_attention(net)
        if inter is not None:
            inter.to(device)
        if teacher is not None and teacher.live is not None:
            teacher.live.to(device).eval()
        self.model, self.hyper, self.device = model, hyper, device
        self.forward = model  # fit's torch.compile'd model, with fixed.compile
        self.params = [p for p in model.parameters() if p.requires_grad]
        if inter is not None:
            self.params += [p for p in inter.parameters() if p.requires_grad]
        # fused AdamW: the same update in one pass per tensor (profiled: 5 ms instead of 57 ms per step on
        # CPU, most of it the 30k x H word embedding and its moments); see README, "Where the time goes".
        self.optimizer = torch.optim.AdamW(
            self.params, lr=hyper.lr, weight_decay=hyper.weight_decay, fused=device.type in ("cpu", "cuda")
        )
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, int(hyper.warmup_ratio * total_steps), total_steps
        )
        self.amp, amp_dtype = autocast_for(device, hyper.precision)
        self.scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
        self.losses = LossTerms(task, hyper, inter, teacher, device)

    def __call__(
        self, batch: dict, index: np.ndarray
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, float]:
        """One step on ``batch``: the loss terms, the loss, the gradient norm and the learning rate it used."""
        with self.amp:
            terms = self.losses(self.forward, batch, index)
            loss = self.losses.total(terms)
        norm, lr = _step(loss, self.params, self.optimizer, self.scheduler, self.scaler, self.hyper.max_grad_norm)
        return terms, loss, norm, lr

    def timed(self, data: EncodedSplit, pad_token_id: int, steps: int, warmup: int = 2) -> float:
        """Seconds per step (batch collation included, synchronised on CUDA) over ``steps`` steps on real batches
        of ``data``, after ``warmup`` untimed ones; a small training set is cycled."""
        batches = train_batches(token_lengths(data), self.hyper.batch_size, 0, 0)
        batches = (batches * (steps + warmup))[: steps + warmup]
        self.model.train()
        timed = []
        for number, index in enumerate(batches):
            synchronize(self.device)
            started = time.perf_counter()
            self(to_batch(data, index, pad_token_id, self.device), index)
            synchronize(self.device)
            if number >= warmup:
                timed.append(time.perf_counter() - started)
        return sum(timed) / len(timed)


def _step(loss, params, optimizer, scheduler, scaler, max_grad_norm: float) -> tuple[torch.Tensor, float]:
    """One optimizer step on ``loss`` (scaled for fp16), the gradients clipped to ``max_grad_norm``; returns the
    gradient norm before clipping (a device tensor: read with the step log, not here) and the rate it used."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
    lr = scheduler.get_last_lr()[0]
    scheduler.step()
    return norm, lr


# The epoch checkpoint: what _save writes, _restore reads back, key for key.
def _save(checkpoint: Path, history: History, model, inter, optimizer, scheduler, scaler) -> None:
    """The state after an epoch, written atomically (a kill leaves the previous epoch's checkpoint)."""
    state = {
        "model": model.state_dict(),
        "inter": inter.state_dict() if inter is not None else None,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "history": history,
    }
    atomic_write(checkpoint, functools.partial(torch.save, state))


def _restore(state: dict, model, inter, optimizer, scheduler, scaler) -> History:
    """Load a checkpoint's state into the run's objects; returns its history (the epochs already done)."""
    model.load_state_dict(state["model"])
    if inter is not None:
        inter.load_state_dict(state["inter"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler") is not None:
        scaler.load_state_dict(state["scaler"])
    history = state["history"]
    if not hasattr(history, "predictions"):  # a checkpoint written before predictions were kept
        history.predictions = {}
    return history
