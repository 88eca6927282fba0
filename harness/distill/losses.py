"""Distillation losses: pure functions of tensors, and the one module that applies a method's layer mapping.

Shape letters used throughout: ``B`` batch, ``C`` classes, ``M`` student layers, ``N`` teacher
layers, ``H`` hidden size, ``T`` tokens. Layer indices are 0-based and count transformer layers
only (the embedding output is never a distillation target). Which layers meet is data
(:mod:`harness.spec.methods`).

Conventions (apply to every function below):

* The teacher is a constant: every loss detaches its teacher arguments, so no gradient ever
  reaches the teacher. The one exception is :func:`alp_attention`, a building block that is
  differentiable in both arguments; :func:`alp_loss` detaches the teacher before calling it.
* Wrong tensor shapes are programming errors and raise :class:`ValueError`; bad user settings
  (``alp_scale``, ``alp_tokens``, temperature) raise :class:`~harness.util.errors.HarnessError` with a
  one-line message.
* L2 normalisation uses :func:`torch.nn.functional.normalize` (``x / max(||x||, 1e-12)``), so an
  all-zero vector normalises to zero instead of NaN.
* The inter-layer losses (:func:`pkd_loss`, :func:`ckd_loss`, :func:`alp_attention`,
  :func:`alp_loss`, :func:`alp_tokens_loss`) compute in float32 whatever the autocast state: their
  inputs are upcast and autocast is off inside (:func:`float32`). Under bf16 the [CLS] dot products of
  BERT (several hundred, bf16 steps of 2–4 there) would otherwise change which teacher layer ALP
  attends to; α is the whole point of ALP.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.spec.methods import ALP_SCALES, ALP_TOKENS, MethodSpec, layer_mapping
from harness.util.errors import HarnessError


def _upcast(value):
    if isinstance(value, Tensor) and value.is_floating_point() and value.element_size() < 4:
        return value.float()  # bf16/fp16 → fp32; fp32 and fp64 stay as they are
    if isinstance(value, (list, tuple)):
        return type(value)(_upcast(v) for v in value)
    return value


def _device_type(values) -> str:
    for value in values:
        if isinstance(value, Tensor):
            return value.device.type
        if isinstance(value, (list, tuple)) and value:
            return _device_type(value)
    return "cpu"


def float32(loss):
    """Decorator: run ``loss`` with autocast disabled, its half-precision tensor arguments (and lists of them)
    upcast to float32 (float64 stays float64); gradients flow back to the original dtypes through the casts."""

    @functools.wraps(loss)
    def wrapper(*args, **kwargs):
        with torch.autocast(_device_type([*args, *kwargs.values()]), enabled=False):
            return loss(*_upcast(args), **{k: _upcast(v) for k, v in kwargs.items()})

    return wrapper


__all__ = [
    "InterLayerLoss",
    "alp_attention",
    "alp_context",
    "alp_loss",
    "alp_tokens_loss",
    "ckd_loss",
    "kd_loss",
    "pkd_loss",
    "regression_kd_loss",
]


# --------------------------------------------------------------------------------------------
# Output-layer losses
# --------------------------------------------------------------------------------------------


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Soft cross-entropy of Hinton et al. (2015), scaled by ``T**2``.

    ``L = T² · mean_b Σ_c −softmax(t_b/T)_c · log_softmax(s_b/T)_c``.

    The ``T²`` factor keeps the gradient magnitude comparable across temperatures:
    ``∂L/∂s_b = (T/B) · (softmax(s_b/T) − softmax(t_b/T))``. Cross-entropy rather than KL is
    used; the two differ by the teacher entropy, a constant, so gradients are identical.

    Args:
        student_logits: ``[B, C]``.
        teacher_logits: ``[B, C]``; detached.
        temperature: ``T > 0``; anything else raises HarnessError.
    """
    _check_same_shape("kd_loss", student_logits, teacher_logits, ndim=2)
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise HarnessError(f"invalid KD temperature {temperature!r} (allowed: a finite number > 0)")
    t = float(temperature)
    target = F.softmax(teacher_logits.detach() / t, dim=-1)
    log_p = F.log_softmax(student_logits / t, dim=-1)
    return (t * t) * (-(target * log_p).sum(dim=-1)).mean()


def regression_kd_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """KD for regression tasks (STS-B): ``mean_b (s_b − t_b)²`` on the single logit.

    Args:
        student_logits: ``[B, 1]``.
        teacher_logits: ``[B, 1]``; detached.
    """
    _check_same_shape("regression_kd_loss", student_logits, teacher_logits, ndim=2)
    if student_logits.shape[-1] != 1:
        raise ValueError(f"regression_kd_loss expects [B, 1] logits, got {tuple(student_logits.shape)}")
    return F.mse_loss(student_logits, teacher_logits.detach())


# --------------------------------------------------------------------------------------------
# Intermediate-layer losses
# --------------------------------------------------------------------------------------------


@float32
def pkd_loss(student_cls: Tensor, teacher_cls: Tensor) -> Tensor:
    """Patient-KD loss of Sun et al. (2019) on already-paired [CLS] vectors.

    ``L = mean_b Σ_m ‖ s_bm/‖s_bm‖₂ − t_bm/‖t_bm‖₂ ‖₂²``.

    With zero pairs (``M' = 0``, i.e. a one-layer student) the sum is empty and the loss is 0.

    Args:
        student_cls: ``[B, M', H]``.
        teacher_cls: ``[B, M', H]``; detached.
    """
    _check_same_shape("pkd_loss", student_cls, teacher_cls, ndim=3)
    s = F.normalize(student_cls, p=2.0, dim=-1)
    t = F.normalize(teacher_cls.detach(), p=2.0, dim=-1)
    return (s - t).pow(2).sum(dim=(1, 2)).mean()


@float32
def ckd_loss(projected_student: list[Tensor], teacher_concat: list[Tensor]) -> Tensor:
    """Combinatorial-KD loss of Wu et al. (2020) on already-projected/concatenated vectors.

    For student layer ``i`` with teacher bucket of ``k_i`` layers:
    ``L = Σ_i mean_b ‖ p_bi/‖p_bi‖₂ − q_bi/‖q_bi‖₂ ‖₂²`` where ``p_bi = W_i s_bi`` is the
    student [CLS] projected to ``k_i·H`` and ``q_bi`` the concatenation of the bucket's teacher
    [CLS] vectors (in increasing layer order). The projection is done by the caller
    (:class:`InterLayerLoss`), which keeps this function pure.

    Args:
        projected_student: one ``[B, k_i·H]`` tensor per student layer.
        teacher_concat: one ``[B, k_i·H]`` tensor per student layer; detached.
    """
    if len(projected_student) != len(teacher_concat) or not projected_student:
        raise ValueError(
            f"ckd_loss needs two non-empty lists of equal length, got {len(projected_student)} "
            f"and {len(teacher_concat)}"
        )
    total = projected_student[0].new_zeros(())
    for p, q in zip(projected_student, teacher_concat):
        _check_same_shape("ckd_loss", p, q, ndim=2)
        p_n = F.normalize(p, p=2.0, dim=-1)
        q_n = F.normalize(q.detach(), p=2.0, dim=-1)
        total = total + (p_n - q_n).pow(2).sum(dim=-1).mean()
    return total


@float32
def alp_attention(
    student_cls: Tensor,
    teacher_cls: Tensor,
    scale: float = 1.0,
    buckets: list[list[int]] | None = None,
) -> Tensor:
    """ALP-KD attention weights of Passban et al. (2021).

    ``α_bij = softmax_j(scale · ⟨s_bi, t_bj⟩)`` with ``j`` restricted to ``buckets[i]``
    (all ``N`` teacher layers when ``buckets`` is None). Disallowed scores are set to ``-inf``
    before the softmax, so their weights are exactly 0; the softmax subtracts the row maximum,
    so dot products of 1e4 or more stay finite.

    Differentiable in both arguments (nothing is detached here); :func:`alp_loss` and
    :func:`alp_tokens_loss` detach the teacher themselves.

    Args:
        student_cls: ``[B, M, H]``.
        teacher_cls: ``[B, N, H]``.
        scale: multiplier of the dot product (1 in the paper).
        buckets: ``M`` non-empty lists of 0-based teacher indices, or None.

    Returns:
        ``[B, M, N]``; every row sums to 1.
    """
    _check_layers("alp_attention", student_cls, teacher_cls, ndim=3)
    scores = scale * torch.einsum("bmh,bnh->bmn", student_cls, teacher_cls)
    return _masked_softmax(scores, buckets, n_student=student_cls.shape[1], n_teacher=teacher_cls.shape[1])


def alp_context(
    student_cls: Tensor,
    teacher_cls: Tensor,
    scale: float = 1.0,
    buckets: list[list[int]] | None = None,
) -> Tensor:
    """ALP-KD context vectors ``c_bi = Σ_j α_bij t_bj`` (teacher detached), shape ``[B, M, H]``."""
    teacher = teacher_cls.detach()
    alpha = alp_attention(student_cls, teacher, scale=scale, buckets=buckets)
    return torch.einsum("bmn,bnh->bmh", alpha, teacher)


@float32
def alp_loss(
    student_cls: Tensor,
    teacher_cls: Tensor,
    scale: float = 1.0,
    buckets: list[list[int]] | None = None,
) -> Tensor:
    """ALP-KD loss on [CLS] vectors: ``L = Σ_i mean_{b,h} (s_bih − c_bih)²``.

    ``c`` comes from :func:`alp_context`. The student receives gradient through both the MSE
    term and the attention weights α (no detach on the student side, as in the paper); the
    teacher is a constant.

    Args:
        student_cls: ``[B, M, H]``.
        teacher_cls: ``[B, N, H]``.
        scale, buckets: see :func:`alp_attention`.
    """
    context = alp_context(student_cls, teacher_cls, scale=scale, buckets=buckets)
    return (student_cls - context).pow(2).mean(dim=(0, 2)).sum()


@float32
def alp_tokens_loss(
    student_hidden: Tensor,
    teacher_hidden: Tensor,
    attention_mask: Tensor,
    scale: float = 1.0,
    buckets: list[list[int]] | None = None,
) -> Tensor:
    """ALP-KD applied at every token position.

    For each token ``τ``: ``α_biτj = softmax_j(scale · ⟨s_biτ, t_bjτ⟩)`` over the allowed
    teacher layers, ``c_biτ = Σ_j α_biτj t_bjτ``, and
    ``L = Σ_i (1 / (V·H)) Σ_{b,τ valid} Σ_h (s_biτh − c_biτh)²`` with ``V`` the number of valid
    (b, τ) pairs in the batch: a token-level average over the whole batch, so longer sequences
    weigh more than short ones.

    Padding: a position is valid iff ``attention_mask != 0`` (Hugging Face masks are 0/1). Hidden
    states at padded positions are replaced by zeros *before* the attention, so their values
    (even inf/NaN) cannot affect the loss or its gradients. An all-padding batch gives 0
    (``V`` is clamped to at least 1).

    Args:
        student_hidden: ``[B, M, T, H]``.
        teacher_hidden: ``[B, N, T, H]``; detached.
        attention_mask: ``[B, T]``.
        scale, buckets: see :func:`alp_attention`.
    """
    _check_layers("alp_tokens_loss", student_hidden, teacher_hidden, ndim=4)
    if student_hidden.shape[2] != teacher_hidden.shape[2]:
        raise ValueError(
            f"alp_tokens_loss: student has {student_hidden.shape[2]} tokens, teacher {teacher_hidden.shape[2]}"
        )
    b, _, t, h = student_hidden.shape
    if tuple(attention_mask.shape) != (b, t):
        raise ValueError(f"alp_tokens_loss: attention_mask must be [{b}, {t}], got {tuple(attention_mask.shape)}")
    valid = (attention_mask != 0)[:, None, :, None]  # [B, 1, T, 1]
    s = torch.where(valid, student_hidden, torch.zeros((), dtype=student_hidden.dtype, device=student_hidden.device))
    teacher = teacher_hidden.detach()
    tch = torch.where(valid, teacher, torch.zeros((), dtype=teacher.dtype, device=teacher.device))
    scores = scale * torch.einsum("bmth,bnth->btmn", s, tch)  # [B, T, M, N]
    alpha = _masked_softmax(scores, buckets, n_student=s.shape[1], n_teacher=tch.shape[1])
    context = torch.einsum("btmn,bnth->bmth", alpha, tch)
    sq = (s - context).pow(2) * valid.to(s.dtype)  # padded positions are 0 - 0 anyway; keep explicit
    n_valid = (attention_mask != 0).sum().clamp(min=1).to(s.dtype)
    return sq.sum(dim=(0, 2, 3)).sum() / (n_valid * h)


def _masked_softmax(scores: Tensor, buckets: list[list[int]] | None, n_student: int, n_teacher: int) -> Tensor:
    """Softmax over the last (teacher) dim of ``scores[..., M, N]`` restricted to ``buckets``."""
    if buckets is None:
        return F.softmax(scores, dim=-1)
    allowed = _bucket_mask(buckets, n_student, n_teacher, scores.device)
    return F.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)


def _bucket_mask(buckets: list[list[int]], n_student: int, n_teacher: int, device: torch.device) -> Tensor:
    """Boolean ``[M, N]`` mask, True where teacher layer j is in student layer i's bucket."""
    if len(buckets) != n_student:
        raise ValueError(f"expected {n_student} buckets (one per student layer), got {len(buckets)}")
    mask = torch.zeros(n_student, n_teacher, dtype=torch.bool)
    for i, bucket in enumerate(buckets):
        if not bucket:
            raise ValueError(f"bucket of student layer {i} is empty")
        for j in bucket:
            if not 0 <= j < n_teacher:
                raise ValueError(f"teacher index {j} in bucket {i} outside [0, {n_teacher})")
            mask[i, j] = True
    return mask.to(device)


def _check_same_shape(name: str, a: Tensor, b: Tensor, ndim: int) -> None:
    if a.dim() != ndim or a.shape != b.shape:
        raise ValueError(
            f"{name}: expected two {ndim}-d tensors of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def _check_layers(name: str, student: Tensor, teacher: Tensor, ndim: int) -> None:
    """Student ``[B, M, ..., H]`` and teacher ``[B, N, ..., H]`` agree on B and H."""
    if student.dim() != ndim or teacher.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim}-d tensors, got {tuple(student.shape)} and {tuple(teacher.shape)}")
    if student.shape[0] != teacher.shape[0] or student.shape[-1] != teacher.shape[-1]:
        raise ValueError(
            f"{name}: batch and hidden sizes must match, got {tuple(student.shape)} and {tuple(teacher.shape)}"
        )


# --------------------------------------------------------------------------------------------
# The module the trainer uses
# --------------------------------------------------------------------------------------------


class InterLayerLoss(torch.nn.Module):
    """Intermediate-layer loss of one method, with whatever projections it learns.

    Inputs are per-layer [CLS] states, ``[B, M, H_s]`` / ``[B, N, H_t]`` (transformer layers
    1..M / 1..N; embedding output excluded), or full token states ``[B, M, T, H_s]`` /
    ``[B, N, T, H_t]`` when :attr:`needs_tokens`.

    Choices:

    * pkd/alp with ``student_hidden != teacher_hidden``: one learned ``Linear(H_s, H_t)``
      (``self.proj``, with bias) maps student states into the teacher space before the loss,
      shared across layers and tokens. With equal sizes there is no projection (identity).
    * ckd: one ``Linear(H_s, k_i·H_t)`` (with bias) per student layer in ``self.ckd_proj``; it
      already absorbs any hidden-size mismatch, so no extra projection is added.
    * Projections keep PyTorch's default ``Linear`` initialisation (Kaiming-uniform weights,
      uniform bias); callers seed torch beforehand for reproducibility.
    * nkd/kd: no parameters even with mismatched sizes; ``forward`` returns a zero scalar.
    * ``alp_scale='sqrt_d'`` uses ``scale = H_t^-½`` (the dot product is taken in the teacher's
      space, after any projection). ``alp_tokens`` is validated for every method but only
      changes ALP methods; for pkd/ckd it is ignored.
    """

    def __init__(
        self,
        spec: MethodSpec,
        n_teacher: int,
        n_student: int,
        student_hidden: int,
        teacher_hidden: int,
        alp_scale: str = "1",
        alp_tokens: str = "cls",
    ) -> None:
        super().__init__()
        if alp_scale not in ALP_SCALES:
            raise HarnessError(f"unknown alp_scale {alp_scale!r} (allowed: {', '.join(ALP_SCALES)})")
        if alp_tokens not in ALP_TOKENS:
            raise HarnessError(f"unknown alp_tokens {alp_tokens!r} (allowed: {', '.join(ALP_TOKENS)})")
        for name, value in (("student_hidden", student_hidden), ("teacher_hidden", teacher_hidden)):
            if not (isinstance(value, int) and value >= 1):
                raise HarnessError(f"invalid {name} {value!r} (allowed: a positive integer)")
        self.spec = spec
        self.n_teacher = n_teacher
        self.n_student = n_student
        self.student_hidden = student_hidden
        self.teacher_hidden = teacher_hidden
        self.scale = 1.0 if alp_scale == "1" else teacher_hidden**-0.5
        self.needs_tokens: bool = alp_tokens == "all" and spec.inter == "alp"
        self.mapping: list[tuple[int, list[int]]] = layer_mapping(spec, n_teacher, n_student)
        self.proj: torch.nn.Linear | None = None
        self.ckd_proj: torch.nn.ModuleList | None = None
        if spec.inter in ("pkd", "alp") and student_hidden != teacher_hidden:
            self.proj = torch.nn.Linear(student_hidden, teacher_hidden)
        if spec.inter == "ckd":
            self.ckd_proj = torch.nn.ModuleList(
                torch.nn.Linear(student_hidden, len(bucket) * teacher_hidden) for _, bucket in self.mapping
            )

    def forward(self, student_states: Tensor, teacher_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """The scalar intermediate loss (not yet multiplied by λ). Teacher states are detached."""
        if self.spec.inter is None:
            return student_states.new_zeros(())
        self._check_inputs(student_states, teacher_states, attention_mask)
        teacher = teacher_states.detach()
        if self.spec.inter == "ckd":
            assert self.ckd_proj is not None
            projected = [proj(student_states[:, i]) for proj, (i, _) in zip(self.ckd_proj, self.mapping)]
            concat = [teacher[:, bucket].flatten(start_dim=1) for _, bucket in self.mapping]
            return ckd_loss(projected, concat)
        student = self.proj(student_states) if self.proj is not None else student_states
        if self.spec.inter == "pkd":
            s_idx = [i for i, _ in self.mapping]
            t_idx = [bucket[0] for _, bucket in self.mapping]
            return pkd_loss(student[:, s_idx], teacher[:, t_idx])
        if self.spec.inter == "alp":
            buckets = None if self.spec.mapping == "all" else [bucket for _, bucket in self.mapping]
            if self.needs_tokens:
                assert attention_mask is not None
                return alp_tokens_loss(student, teacher, attention_mask, scale=self.scale, buckets=buckets)
            return alp_loss(student, teacher, scale=self.scale, buckets=buckets)
        raise ValueError(f"method {self.spec.key!r} has unknown inter loss {self.spec.inter!r}")

    def attention(self, student_cls: Tensor, teacher_cls: Tensor) -> Tensor:
        """ALP's attention α, ``[B, M, N]``, on [CLS] vectors ``[B, M, H_s]`` / ``[B, N, H_t]`` (ALP family
        only; with ``alp_tokens: all`` this is α at the [CLS] position). Entries outside a bucket are 0."""
        if self.spec.inter != "alp":
            raise ValueError(f"method {self.spec.key!r} has no attention over teacher layers")
        student = self.proj(student_cls) if self.proj is not None else student_cls
        buckets = None if self.spec.mapping == "all" else [bucket for _, bucket in self.mapping]
        return alp_attention(student, teacher_cls, scale=self.scale, buckets=buckets)

    def _check_inputs(self, student: Tensor, teacher: Tensor, attention_mask: Tensor | None) -> None:
        ndim = 4 if self.needs_tokens else 3
        expect_s = (self.n_student, self.student_hidden)
        expect_t = (self.n_teacher, self.teacher_hidden)
        if student.dim() != ndim or (student.shape[1], student.shape[-1]) != expect_s:
            raise ValueError(
                f"student states must be {ndim}-d with M={expect_s[0]}, H={expect_s[1]}; got {tuple(student.shape)}"
            )
        if teacher.dim() != ndim or (teacher.shape[1], teacher.shape[-1]) != expect_t:
            raise ValueError(
                f"teacher states must be {ndim}-d with N={expect_t[0]}, H={expect_t[1]}; got {tuple(teacher.shape)}"
            )
        if self.needs_tokens and attention_mask is None:
            raise ValueError("alp_tokens='all' needs the attention_mask")
