"""Everything the trials of one study file share: task data, tokenizer, the teacher, ALP's α probe.

:class:`Experiment` is built once per worker process and then runs any number of trials. The teacher's
life cycle (fine-tuning, the teacher-output cache, its dev states) is :class:`harness.distill.teacher.Teacher`.
A method whose declared teacher states (``register_method(states=…)``) include one the cache does not hold
(``tokens``, ``attentions``; built-in ALP with ``alp_tokens: all``) uses the live teacher
(:func:`harness.spec.methods.needs_live_teacher`), and so does every method with ``fixed.teacher_outputs: live``;
the others read the cached logits and [CLS] states.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from harness.data.encoding import EncodedSplit, encode_split
from harness.data.holdout import HOLDOUT_SPLIT, split_holdout
from harness.data.loading import load_split
from harness.distill.batches import to_batch
from harness.distill.device import pick_device, set_deterministic
from harness.distill.method_loss import MethodContext, MethodLoss, eager_attention
from harness.distill.models import (
    build_student,
    check_same_tokenizer,
    check_student_depth,
    load_config,
    load_tokenizer,
    resolve_pretrained,
)
from harness.distill.teacher import Teacher
from harness.distill.teacher_checks import check_head
from harness.distill.train import History, Hyper, LossTerms, TeacherSignal, fit
from harness.spec.config import StudyConfig, probes_alpha, uses_live_teacher
from harness.spec.methods import get_method
from harness.spec.tasks import get_task, subsample
from harness.util.errors import HarnessError
from harness.util.files import atomic_folder


def _extra_value(spec, point: dict, fixed) -> object:
    """The value of ``spec``'s extra axis at ``point``: the point's, else its declared default, else ``fixed``'s."""
    if spec.extra is None:
        return None
    name, default = spec.extra
    if name in point:
        return point[name]
    return default if default is not None else getattr(fixed, name, None)


def _scale_text(value: object) -> str:
    """``alp_scale`` as the text InterLayerLoss takes (a grid value or a point key may give the number 1)."""
    return "1" if isinstance(value, (int, float)) and value == 1 else str(value)


class Experiment:
    """The shared state of one study file in one worker process."""

    def __init__(
        self,
        config: StudyConfig,
        data_dir: Path | None,
        cache_dir: Path,
        progress: bool = True,
        device: torch.device | None = None,
    ):
        """``device``: where this process trains (default: the first CUDA device, else the CPU)."""
        self.config = config
        self.cache_dir = cache_dir
        self.progress = progress
        self.task = get_task(config.task)
        self.device = device or pick_device()
        set_deterministic(config.fixed.deterministic)  # before the teacher or a student runs a kernel
        self.pretrained = resolve_pretrained(config.teacher)
        self.tokenizer = load_tokenizer(self.pretrained)
        # where the student comes from: student_from (same tokenizer as the teacher), else the teacher's source
        self.student_source = self.pretrained
        if config.student_from is not None:
            self.student_source = resolve_pretrained(config.student_from, "student_from")
            check_same_tokenizer(
                load_tokenizer(self.student_source), self.tokenizer, config.student_from, config.teacher
            )
        check_student_depth(self.student_source, config.student_layers, config.fixed.student_init)  # before fine-tuning
        if not config.fixed.teacher.finetune:  # a teacher used as it is needs a head for this task
            check_head(load_config(self.pretrained), self.task, config.teacher)
        self.pad_token_id = self.tokenizer.pad_token_id or 0
        fixed = config.fixed
        train = load_split(self.task, "train", data_dir)
        self.data_hashes = {"train": train.sha256}
        self.evals: dict[str, EncodedSplit] = {}
        for split in self.task.eval_splits:
            loaded = load_split(self.task, split, data_dir)
            self.data_hashes[split] = loaded.sha256
            self.evals[split] = encode_split(loaded, self.tokenizer, fixed.max_seq_length)
        # The split whose score chooses the epoch and the grid point (see harness.data.holdout).
        self.select_split = self.task.eval_splits[0]
        if fixed.selection == "holdout":
            train, held = split_holdout(
                train, fixed.holdout_fraction, fixed.seed, fixed.holdout_max_samples, regression=self.task.is_regression
            )
            self.evals[HOLDOUT_SPLIT] = encode_split(held, self.tokenizer, fixed.max_seq_length)
            self.select_split = HOLDOUT_SPLIT
        self.train = encode_split(
            subsample(train, fixed.max_train_samples, fixed.seed), self.tokenizer, fixed.max_seq_length
        )
        self.teacher = Teacher(
            config,
            self.task,
            self.pretrained,
            self.tokenizer,
            self.data_hashes,
            train,  # without the holdout slice, if any
            self.train,
            self.evals,
            cache_dir,
            self.device,
            progress,
        )

    def alpha_probe(self, inter: MethodLoss):
        """After each epoch: ALP's mean attention α over dev ``[M × N]``, its mean entropy (nats), and per student
        layer the mean over examples of the largest α (``alpha_top``) and the share of examples whose arg-max
        teacher layer is not the most common one (``alpha_switch``): a mean α of 0.6 with ``alpha_top`` ≈ 1 is
        one-hot attention that switches layers on about 40 % of the examples."""
        teacher = torch.from_numpy(self.teacher.dev_cls())

        @torch.no_grad()
        def probe(student_cls: np.ndarray) -> dict:
            student = torch.from_numpy(student_cls)
            alpha = torch.cat(
                [
                    inter.attention(s.to(self.device), t.to(self.device)).float().cpu()
                    for s, t in zip(student.split(1024), teacher.split(1024))
                ]
            )
            entropy = torch.special.entr(alpha).sum(-1).mean()
            top = alpha.argmax(-1)  # [n, M]: each example's arg-max teacher layer per student layer
            switch = (top != top.mode(0).values).float().mean(0)  # share of examples off the most common one
            return {
                "alpha": alpha.mean(0).tolist(),
                "alpha_entropy": float(entropy),
                "alpha_top": alpha.max(-1).values.mean(0).tolist(),  # mean over examples of the largest α
                "alpha_switch": switch.tolist(),
            }

        return probe

    # ------------------------------------------------------------------ trials
    def method_loss(self, method: str, point: dict, teacher_config, student_hidden: int) -> MethodLoss | None:
        """The method's own loss term at ``point`` (its extra searched value, if any), between a teacher of
        ``teacher_config``'s shape and a student of ``student_hidden``; ``None`` for a method without one."""
        spec, fixed = get_method(method), self.config.fixed
        if not spec.searches_eta or spec.loss is None:
            return None
        context = MethodContext(
            method,
            teacher_config.num_hidden_layers,
            self.config.student_layers,
            student_hidden,
            teacher_config.hidden_size,
            alp_scale=_scale_text(point.get("alp_scale", fixed.alp_scale)),  # ALP's extra axis, if searched
            alp_tokens=fixed.alp_tokens,
            extra=_extra_value(spec, point, fixed),
        )
        return MethodLoss(spec, context)

    def hyper(self, point: dict[str, float], seed: int) -> Hyper:
        """A student run's values at one grid point: the point's lr, η, λ and the study file's fixed set-up."""
        fixed = self.config.fixed
        return Hyper(
            lr=point["lr"],
            eta=point["eta"],
            lam=point["lambda"],
            epochs=fixed.epochs,
            batch_size=fixed.batch_size,
            eval_batch_size=fixed.eval_batch_size,
            seed=seed,
            temperature=float(point.get("temperature", fixed.temperature)),  # KD's extra axis, if searched
            warmup_ratio=fixed.warmup_ratio,
            weight_decay=fixed.weight_decay,
            max_grad_norm=fixed.max_grad_norm,
            precision=fixed.precision,
        )

    def run_trial(
        self,
        method: str,
        point: dict[str, float],
        seed: int | None = None,
        checkpoint: Path | None = None,
        on_epoch=None,
        desc: str | None = None,
        save_to: Path | None = None,
        save_epoch: str = "best",
        epochs: int | None = None,
    ) -> History:
        """Distil the teacher into a fresh student with one grid point's values.

        With ``save_to``, the trained student after its ``save_epoch`` (``best``, or ``last``) is published
        there atomically as a Hugging Face folder (``save_pretrained``: weights, config with the task's
        label names, tokenizer), with the inter-layer loss's trained parameters (CKD's projections)
        as ``inter_layer_loss.pt`` (those are of the last epoch). ``epochs`` stops the run after that many
        epochs of the study's schedule (the learning-rate schedule still spans ``fixed.epochs``), which
        gives exactly the weights an uninterrupted trial had after that epoch.
        """
        fixed = self.config.fixed
        spec = get_method(method)
        seed = fixed.seed if seed is None else seed
        teacher = self.teacher.prepare()
        teacher_config = load_config(str(teacher.path))
        student = build_student(
            self.student_source, self.config.student_layers, self.task.num_labels, fixed.student_init, seed
        )
        inter = self.method_loss(method, point, teacher_config, student.config.hidden_size)
        signal = self.teacher.signal(live=uses_live_teacher(self.config, method)) if spec.searches_eta else None
        hyper = self.hyper(point, seed)
        probe = self.alpha_probe(inter) if inter is not None and spec.inter == "alp" else None
        if not self.task.is_regression:
            student.config.id2label = dict(enumerate(self.task.label_names))
            student.config.label2id = {name: index for index, name in enumerate(self.task.label_names)}
        history = fit(
            student,
            self.task,
            hyper,
            self.train,
            self.evals,
            self.pad_token_id,
            inter=inter,
            teacher=signal,
            checkpoint=checkpoint,
            on_epoch=on_epoch,
            desc=desc or method,
            device=self.device,
            progress=self.progress,
            compile_model=fixed.compile,
            select_split=self.select_split,
            probe=probe,
            keep_best=save_to is not None and save_epoch == "best",
            stop_after=epochs,
        )
        if save_to is not None:
            if save_epoch == "best" and history.best_state is not None:
                student.load_state_dict(history.best_state)
            history.best_state = None
            with atomic_folder(save_to) as tmp:
                student.save_pretrained(tmp)
                self.tokenizer.save_pretrained(tmp)
                torch.save(inter.state_dict() if inter is not None else {}, tmp / "inter_layer_loss.pt")
                shutil.rmtree(save_to, ignore_errors=True)
        return history

    def check_methods(self) -> None:
        """Run every plug-in method's ``modules`` and ``loss`` once on two training examples, before anything is
        written: a loss that raises or returns no scalar, or a state the teacher cannot give, is a HarnessError.

        The stand-in teacher is the pre-trained model at the teacher's depth (same architecture and states as the
        fine-tuned teacher, which does not exist yet), read live; built-in methods are not checked."""
        plugins = [m for m in self.config.methods if get_method(m).plugin is not None and get_method(m).loss]
        if not plugins:
            return
        n_teacher = load_config(self.pretrained).num_hidden_layers
        stand_in = build_student(self.pretrained, n_teacher, self.task.num_labels, "bottom", 0).eval()
        student = build_student(self.pretrained, self.config.student_layers, self.task.num_labels, "bottom", 0)
        index = np.arange(min(2, len(self.train)))
        for method in plugins:
            spec = get_method(method)
            context = MethodContext(
                method,
                n_teacher,
                self.config.student_layers,
                student.config.hidden_size,
                stand_in.config.hidden_size,
                alp_scale=self.config.fixed.alp_scale,
                alp_tokens=self.config.fixed.alp_tokens,
                extra=_extra_value(spec, {}, self.config.fixed),
            )
            try:
                inter = MethodLoss(spec, context)
                if inter.needs_attentions:
                    eager_attention(student)
                    eager_attention(stand_in)
                terms = LossTerms(
                    self.task,
                    Hyper(lr=1e-5, eta=0.3, lam=0.3),
                    inter,
                    TeacherSignal(live=stand_in),
                    torch.device("cpu"),
                )
                terms(student, to_batch(self.train, index, self.pad_token_id, torch.device("cpu")), index)
            except HarnessError:
                raise
            except Exception as error:  # noqa: BLE001 - the plug-in's error, as one line
                last = (str(error).strip().splitlines() or [""])[-1]
                raise HarnessError(
                    f"method {method!r} (plug-in {spec.plugin}): its loss failed on a test batch: "
                    f"{type(error).__name__}: {last}"
                ) from None

    def prepare_shared(self) -> None:
        """Everything trials share: the fine-tuned teacher and, if a method needs them, its cached outputs and
        the α probe's dev states."""
        self.teacher.prepare()
        if any(get_method(m).searches_eta for m in self.config.methods):
            self.teacher.signal(live=False)  # KD's logits come from the cache even for a live-teacher method
        if probes_alpha(self.config):
            self.teacher.dev_cls()  # the α probe's dev states, cached once for every worker
