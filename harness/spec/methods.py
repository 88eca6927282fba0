"""Distillation methods as data: the registry, and which student layer meets which teacher layers.

No tensors here (a registry is read by config validation and reports, which need no torch); the losses
and the module that applies a mapping are in :mod:`harness.distill.losses`. Layer indices are 0-based and count
transformer layers only (the embedding output is never a distillation target). Bad user settings
(method key, layer counts, PKD mode) raise :class:`~harness.util.errors.HarnessError` with a one-line message.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.util.errors import HarnessError

__all__ = [
    "ALP_SCALES",
    "ALP_TOKENS",
    "METHODS",
    "MethodSpec",
    "PKD_MODES",
    "get_method",
    "layer_mapping",
    "no_buckets",
    "pkd_pairs",
    "po_buckets",
]

PKD_MODES: tuple[str, ...] = ("skip", "last")
ALP_SCALES: tuple[str, ...] = ("1", "sqrt_d")
ALP_TOKENS: tuple[str, ...] = ("cls", "all")


# --------------------------------------------------------------------------------------------
# Layer mappings
# --------------------------------------------------------------------------------------------


def _check_counts(n_teacher: int, n_student: int) -> None:
    """Both counts positive and the student no deeper than the teacher."""
    if not (isinstance(n_student, int) and isinstance(n_teacher, int) and 1 <= n_student <= n_teacher):
        raise HarnessError(
            f"invalid layer counts: {n_student!r} student / {n_teacher!r} teacher layers "
            f"(allowed: integers with 1 <= n_student <= n_teacher)"
        )


def no_buckets(n_teacher: int, n_student: int) -> list[list[int]]:
    """Non-overlapping buckets: ``N`` teacher layers split into ``M`` contiguous runs.

    Every bucket has ``N // M`` layers; when ``N % M = r != 0`` the first ``r`` buckets get one
    extra layer (e.g. N=6, M=4 → ``[[0, 1], [2, 3], [4], [5]]``). Requires ``1 <= M <= N``.
    """
    _check_counts(n_teacher, n_student)
    base, extra = divmod(n_teacher, n_student)
    buckets: list[list[int]] = []
    start = 0
    for i in range(n_student):
        size = base + (1 if i < extra else 0)
        buckets.append(list(range(start, start + size)))
        start += size
    return buckets


def po_buckets(n_teacher: int, n_student: int) -> list[list[int]]:
    """Partially-overlapping buckets: each :func:`no_buckets` bucket grown by one layer per side.

    Bucket ``i`` also takes the last layer of bucket ``i−1`` and the first layer of bucket
    ``i+1``; the first bucket only grows right, the last only left, and with ``M = 1`` the single
    bucket already holds every layer (e.g. N=6, M=4 → ``[[0,1,2], [1,2,3,4], [3,4,5], [4,5]]``).
    """
    base = no_buckets(n_teacher, n_student)
    out: list[list[int]] = []
    for i, bucket in enumerate(base):
        lo = bucket[0] - 1 if i > 0 else bucket[0]
        hi = bucket[-1] + 1 if i < len(base) - 1 else bucket[-1]
        out.append(list(range(lo, hi + 1)))
    return out


def pkd_pairs(n_teacher: int, n_student: int, mode: str) -> list[tuple[int, int]]:
    """PKD (student, teacher) layer pairs, 0-based.

    Student layers ``i = 1..M−1`` (1-based) are paired with teacher layer
    ``floor(i·N/M)`` for ``mode='skip'`` (exact when M divides N) or ``N−M+i`` for
    ``mode='last'``. The last student layer is left to the output KD loss, as in Sun et al.
    (2019), so a one-layer student gets no pairs (its PKD loss is 0).
    E.g. (12, 6, skip) → teacher 2,4,6,8,10 (1-based); (12, 6, last) → 7..11.
    """
    if mode not in PKD_MODES:
        raise HarnessError(f"unknown PKD mode {mode!r} (allowed: {', '.join(PKD_MODES)})")
    _check_counts(n_teacher, n_student)
    pairs: list[tuple[int, int]] = []
    for i in range(1, n_student):
        teacher_1b = (i * n_teacher) // n_student if mode == "skip" else n_teacher - n_student + i
        pairs.append((i - 1, teacher_1b - 1))
    return pairs


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodSpec:
    """One distillation method, as data.

    Attributes:
        key: registry key.
        description: one line for reports.
        searches_eta: whether the sweep tunes η, the weight of the output KD loss (False for nkd).
        searches_lambda: whether the sweep tunes λ, the weight of the intermediate loss.
        inter: intermediate loss family: None, 'pkd', 'ckd' or 'alp'.
        mapping: layer mapping: None, 'skip', 'last', 'all', 'no' or 'po'.
    """

    key: str
    description: str
    searches_eta: bool
    searches_lambda: bool
    inter: str | None
    mapping: str | None


METHODS: dict[str, MethodSpec] = {
    spec.key: spec
    for spec in (
        MethodSpec("nkd", "no distillation: fine-tune the student on gold labels only", False, False, None, None),
        MethodSpec("kd", "output-layer KD (Hinton et al. 2015)", True, False, None, None),
        MethodSpec("pkd-skip", "Patient KD, every (N/M)-th teacher layer (Sun et al. 2019)", True, True, "pkd", "skip"),
        MethodSpec("pkd-last", "Patient KD, last M-1 teacher layers (Sun et al. 2019)", True, True, "pkd", "last"),
        MethodSpec("ckd", "Combinatorial KD, non-overlapping buckets (Wu et al. 2020)", True, True, "ckd", "no"),
        MethodSpec("alp", "ALP-KD, attention over all teacher layers (Passban et al. 2021)", True, True, "alp", "all"),
        MethodSpec("alp-no", "ALP-KD, attention within non-overlapping buckets", True, True, "alp", "no"),
        MethodSpec("alp-po", "ALP-KD, attention within partially-overlapping buckets", True, True, "alp", "po"),
    )
}


def get_method(key: str) -> MethodSpec:
    """The registered :class:`MethodSpec` for ``key``; unknown keys raise HarnessError."""
    try:
        return METHODS[key]
    except (KeyError, TypeError):
        raise HarnessError(f"unknown method {key!r} (allowed: {', '.join(METHODS)})") from None


def layer_mapping(spec: MethodSpec, n_teacher: int, n_student: int) -> list[tuple[int, list[int]]]:
    """(student index, teacher indices) pairs, 0-based, that ``spec``'s intermediate loss uses.

    pkd-*: one teacher per pair from :func:`pkd_pairs` (no entry for the last student layer);
    ckd and alp-no: :func:`no_buckets`; alp-po: :func:`po_buckets`; alp: every teacher layer for
    every student layer; nkd/kd: empty. Layer counts must satisfy ``1 <= M <= N``.
    """
    _check_counts(n_teacher, n_student)
    if spec.inter is None:
        return []
    if spec.mapping in PKD_MODES:
        return [(s, [t]) for s, t in pkd_pairs(n_teacher, n_student, spec.mapping)]
    if spec.mapping == "no":
        return list(enumerate(no_buckets(n_teacher, n_student)))
    if spec.mapping == "po":
        return list(enumerate(po_buckets(n_teacher, n_student)))
    if spec.mapping == "all":
        return [(i, list(range(n_teacher))) for i in range(n_student)]
    raise ValueError(f"method {spec.key!r} has unknown mapping {spec.mapping!r}")
