"""A registered method's own loss term (the λ-weighted one), built from its declaration, for built-ins and plug-ins.

:func:`harness.spec.methods.register_method` stores a method's ``loss`` and ``modules`` without calling them
(spec is torch-free); here they are resolved (a ``"module:attribute"`` text is imported) and called:

* ``modules(context) -> torch.nn.Module | None`` once per trial: what the method trains with the student
  (its parameters join the optimizer, its state the epoch checkpoints and the exported student);
* ``loss(student, teacher, modules, context) -> Tensor`` every step, on :class:`States` of the student
  (with gradients) and of the teacher (cached or live, never with gradients). It must return a finite scalar;
  anything else raises HarnessError naming the method.

The built-ins declare :func:`builtin_modules` / :func:`builtin_loss`, which wrap
:class:`~harness.distill.losses.InterLayerLoss`: one path for all methods.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import torch
from torch import Tensor

from harness.distill.losses import InterLayerLoss
from harness.spec.methods import MethodSpec, teacher_states
from harness.util.errors import HarnessError

__all__ = ["MethodContext", "MethodLoss", "States", "builtin_loss", "builtin_modules", "eager_attention", "resolve"]


@dataclass
class States:
    """One batch's states of a model; only the declared ones are filled, the rest are None.

    ``logits`` ``[B, C]``; ``cls`` ``[B, L, H]`` (the [CLS] vector of each transformer layer, embeddings
    excluded); ``tokens`` ``[B, L, T, H]``; ``attentions`` ``[B, L, heads, T, T]``; ``attention_mask`` ``[B, T]``
    (1 for real tokens; set whenever ``tokens`` or ``attentions`` are).
    """

    logits: Tensor | None = None
    cls: Tensor | None = None
    tokens: Tensor | None = None
    attentions: Tensor | None = None
    attention_mask: Tensor | None = None


@dataclass(frozen=True)
class MethodContext:
    """What a method's ``modules`` and ``loss`` may know beyond the tensors."""

    method: str
    n_teacher: int
    n_student: int
    student_hidden: int
    teacher_hidden: int
    alp_scale: str = "1"
    alp_tokens: str = "cls"
    extra: object = None  # the value of the method's extra searched parameter (register_method(extra=…))
    options: dict = field(default_factory=dict)


def resolve(value):
    """A callable, or the callable a ``"module:attribute"`` text names."""
    if not isinstance(value, str):
        return value
    module, _, attribute = value.partition(":")
    return getattr(importlib.import_module(module), attribute)


class MethodLoss(torch.nn.Module):
    """A method's λ-weighted loss term with whatever it learns (``self.learned``).

    Its ``state_dict`` is the learned module's own (no prefix), so checkpoints and exported
    ``inter_layer_loss.pt`` files keep the keys they had before methods were declared this way.
    """

    def __init__(self, spec: MethodSpec, context: MethodContext, learned: torch.nn.Module | None = None) -> None:
        """``learned``: an already-built learned module (:meth:`around`); by default ``spec.modules(context)``."""
        super().__init__()
        self.spec, self.context = spec, context
        self.states: tuple[str, ...] = teacher_states(spec, context.alp_tokens)
        self.needs_tokens = "tokens" in self.states
        self.needs_attentions = "attentions" in self.states
        self._loss = resolve(spec.loss)
        if learned is None and spec.modules is not None:
            learned = resolve(spec.modules)(context)
        self.learned = learned
        if self.learned is not None and not isinstance(self.learned, torch.nn.Module):
            raise HarnessError(
                f"method {spec.key!r}: modules() returned {type(self.learned).__name__} (allowed: a torch.nn.Module "
                "or None)"
            )

    @classmethod
    def around(cls, inter: InterLayerLoss | MethodLoss | None) -> MethodLoss | None:
        """A built-in's :class:`InterLayerLoss`, built by the caller, as a MethodLoss (MethodLoss and None pass)."""
        if not isinstance(inter, InterLayerLoss):
            return inter
        alp_tokens = "all" if inter.needs_tokens else "cls"
        context = MethodContext(
            inter.spec.key,
            inter.n_teacher,
            inter.n_student,
            inter.student_hidden,
            inter.teacher_hidden,
            alp_tokens=alp_tokens,
        )
        return cls(inter.spec, context, learned=inter)

    def forward(self, student: States, teacher: States) -> Tensor:
        value = self._loss(student, teacher, self.learned, self.context)
        if not (isinstance(value, Tensor) and value.dim() == 0 and value.is_floating_point()):
            shown = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise HarnessError(f"method {self.spec.key!r}: its loss returned {shown} (allowed: a scalar float tensor)")
        return value

    def state_dict(self, *args, **kwargs):
        return self.learned.state_dict(*args, **kwargs) if self.learned is not None else {}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if self.learned is not None:
            return self.learned.load_state_dict(state_dict, strict=strict, assign=assign)
        return None

    def attention(self, student_cls: Tensor, teacher_cls: Tensor) -> Tensor:
        """ALP's α (built-in ALP family only): :meth:`InterLayerLoss.attention`."""
        if not isinstance(self.learned, InterLayerLoss):
            raise ValueError(f"method {self.spec.key!r} has no attention over teacher layers")
        return self.learned.attention(student_cls, teacher_cls)


def eager_attention(model: torch.nn.Module) -> None:
    """Switch ``model`` to eager attention, the implementation that returns attention probabilities."""
    setter = getattr(model, "set_attn_implementation", None)
    if setter is not None:
        setter("eager")
    elif getattr(model, "config", None) is not None:
        model.config._attn_implementation = "eager"


def builtin_modules(context: MethodContext) -> InterLayerLoss:
    """The built-in methods' learned part: their :class:`InterLayerLoss` (with PKD/ALP's or CKD's projections)."""
    from harness.spec.methods import get_method

    return InterLayerLoss(
        get_method(context.method),
        context.n_teacher,
        context.n_student,
        context.student_hidden,
        context.teacher_hidden,
        alp_scale=context.alp_scale,
        alp_tokens=context.alp_tokens,
    )


def builtin_loss(student: States, teacher: States, modules: InterLayerLoss, context: MethodContext) -> Tensor:
    """The built-in methods' loss: :class:`InterLayerLoss` on [CLS] states, or on every token (``alp_tokens: all``)."""
    if modules.needs_tokens:
        return modules(student.tokens, teacher.tokens, student.attention_mask)
    return modules(student.cls, teacher.cls)
