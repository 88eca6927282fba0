"""Distillation methods as data: the registry, and which student layer meets which teacher layers.

No tensors here (a registry is read by config validation and reports, which need no torch); the losses
and the module that applies a mapping are in :mod:`harness.distill.losses`. Layer indices are 0-based and count
transformer layers only (the embedding output is never a distillation target). Bad user settings
(method key, layer counts, PKD mode) raise :class:`~harness.util.errors.HarnessError` with a one-line message.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from harness.util.errors import HarnessError

__all__ = [
    "ALP_SCALES",
    "ALP_TOKENS",
    "BUILTIN_METHODS",
    "base_method",
    "CACHED_STATES",
    "METHODS",
    "MethodSpec",
    "PKD_MODES",
    "STATES",
    "declare_row",
    "get_method",
    "needs_live_teacher",
    "register_method",
    "teacher_states",
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

#: The teacher (and student) states a method's loss may declare. ``logits`` ``[B, C]``; ``cls`` the [CLS]
#: vector of every transformer layer ``[B, L, H]``; ``tokens`` every layer's token states ``[B, L, T, H]``;
#: ``attentions`` every layer's attention probabilities ``[B, L, heads, T, T]``.
STATES: tuple[str, ...] = ("logits", "cls", "tokens", "attentions")
#: What the teacher-output cache holds; a method that declares anything else reads the live teacher.
CACHED_STATES: tuple[str, ...] = ("logits", "cls")
#: The loss weights a method may search (NKD searches neither; the learning rate is always searched).
WEIGHTS: tuple[str, ...] = ("eta", "lambda")


@dataclass(frozen=True)
class MethodSpec:
    """One distillation method, as data: what :func:`register_method` was told.

    Attributes:
        key: registry key.
        description: one line for reports.
        searches_eta: whether the sweep tunes η, the weight of the output KD loss (False for nkd).
        searches_lambda: whether the sweep tunes λ, the weight of the method's own loss (its ``loss``).
        inter: built-in intermediate loss family: None, 'pkd', 'ckd' or 'alp' (None for plug-ins).
        mapping: built-in layer mapping: None, 'skip', 'last', 'all', 'no' or 'po'.
        states: the teacher states ``loss`` reads (a subset of :data:`STATES`).
        loss: ``loss(student, teacher, modules, context) -> scalar tensor``, the λ-weighted term; a callable or
            a ``"module:attribute"`` reference, resolved and called only in :mod:`harness.distill`.
        modules: ``modules(context) -> torch.nn.Module | None``: what the method trains with the student
            (CKD's projections), the same kinds of value as ``loss``; None when it learns nothing.
        extra: ``(name, default)`` of one more value the method may search as a grid axis, or None.
        plugin: the module that registered it (None for the built-ins); ``plugin_file`` its file and
            ``plugin_sha256`` that file's sha256 when it was loaded.
    """

    key: str
    description: str
    searches_eta: bool
    searches_lambda: bool
    inter: str | None = None
    mapping: str | None = None
    states: tuple[str, ...] = ()
    loss: object = None
    modules: object = None
    extra: tuple[str, object] | None = None
    plugin: str | None = None
    plugin_file: str | None = None
    plugin_sha256: str | None = None

    def declaration(self) -> dict:
        """The JSON-able part (stored with each study, so that a report knows the method without its plug-in)."""
        return {
            "key": self.key,
            "description": self.description,
            "searches": [w for w, on in zip(WEIGHTS, (self.searches_eta, self.searches_lambda)) if on],
            "states": list(self.states),
            "extra": list(self.extra) if self.extra else None,
            "plugin": self.plugin,
            "plugin_file": self.plugin_file,
            "plugin_sha256": self.plugin_sha256,
        }


METHODS: dict[str, MethodSpec] = {}
_LOADING: dict[str, str | None] = {"module": None, "file": None, "sha256": None}


def register_method(
    name: str,
    *,
    description: str,
    searches: tuple[str, ...] | list[str] = ("eta", "lambda"),
    states: tuple[str, ...] | list[str] = ("cls",),
    loss: object = None,
    modules: object = None,
    extra: tuple[str, object] | None = None,
    inter: str | None = None,
    mapping: str | None = None,
) -> MethodSpec:
    """Register a KD method: **the one call** for built-ins and plug-ins alike (see README, "Adding a KD method").

    ``searches``: the loss weights the sweep tunes (:data:`WEIGHTS`; ``()`` for a method without a teacher);
    ``states``: what ``loss`` reads of the teacher (:data:`STATES`; only :data:`CACHED_STATES` come from the
    teacher-output cache, anything else makes the method's trials use the live teacher); ``loss`` and
    ``modules``: see :class:`MethodSpec` (a method that searches λ needs a ``loss``); ``extra``: one more
    searched value, ``(name, default)``: its grid is the study file's ``search.extra[name]`` list (grid sampler
    only), and the value reaches ``loss`` as ``context.extra`` (``default`` None: the study file's ``fixed`` value
    of that name). An extra named after a ``fixed`` value (``temperature``, ``alp_scale``) replaces that value in
    the method's trials. It is a key of the grid point (``,temperature=2``), so it enters the point key, the stored
    trial and, through ``search``, the study's fingerprint; sharing compares computations, in which KD's term
    depends on the temperature only and the λ term on the rest (``harness.sweep.sharing.computation``).
    ``inter``/``mapping`` are for the built-in families only.

    The registry lives here, torch-free: it stores ``loss`` and ``modules`` without calling them (a
    ``"module:attribute"`` text is not even imported here), and :mod:`harness.distill.method_loss` calls them.
    A name already registered, an unknown state or weight, or a λ without a loss raise HarnessError.
    """
    if not (isinstance(name, str) and name and all(c.isalnum() or c in "-_." for c in name)):
        raise HarnessError(f"invalid method name {name!r} (allowed: letters, digits, '-', '_', '.')")
    if name in METHODS:
        other = METHODS[name].plugin or "the built-in methods"
        raise HarnessError(f"method {name!r} is already registered by {other}; choose another name")
    bad = [s for s in states if s not in STATES]
    if bad:
        raise HarnessError(f"method {name!r} declares teacher state {bad[0]!r} (allowed: {', '.join(STATES)})")
    bad = [w for w in searches if w not in WEIGHTS]
    if bad:
        raise HarnessError(f"method {name!r} searches {bad[0]!r} (allowed: {', '.join(WEIGHTS)})")
    if "lambda" in searches and "eta" not in searches:
        raise HarnessError(f"method {name!r} searches lambda without eta (allowed: (), (eta,), (eta, lambda))")
    if "lambda" in searches and loss is None:
        raise HarnessError(f"method {name!r} searches lambda but declares no loss")
    if extra is not None and not (isinstance(extra, tuple) and len(extra) == 2 and isinstance(extra[0], str)):
        raise HarnessError(f"method {name!r}: extra must be (name, default), got {extra!r}")
    spec = MethodSpec(
        key=name,
        description=description,
        searches_eta="eta" in searches,
        searches_lambda="lambda" in searches,
        inter=inter,
        mapping=mapping,
        states=tuple(states),
        loss=loss,
        modules=modules,
        extra=extra,
        plugin=_LOADING["module"],
        plugin_file=_LOADING["file"],
        plugin_sha256=_LOADING["sha256"],
    )
    METHODS[name] = spec
    return spec


def teacher_states(spec: MethodSpec, alp_tokens: str = "cls") -> tuple[str, ...]:
    """The teacher states a trial of ``spec`` reads: its declaration, plus the output KD's logits when it searches η,
    and with ``fixed.alp_tokens: all`` the ALP family's ``cls`` becomes ``tokens``."""
    states = list(spec.states)
    if spec.inter == "alp" and alp_tokens == "all":
        states = ["tokens" if s == "cls" else s for s in states]
    if spec.searches_eta and "logits" not in states:
        states.insert(0, "logits")
    return tuple(states)


def needs_live_teacher(spec: MethodSpec, alp_tokens: str = "cls") -> bool:
    """Whether ``spec``'s trials need a state the teacher-output cache does not hold."""
    return any(s not in CACHED_STATES for s in teacher_states(spec, alp_tokens))


_BUILTIN = "harness.distill.method_loss:"
for _key, _description, _searches, _inter, _mapping in (
    ("nkd", "no distillation: fine-tune the student on gold labels only", (), None, None),
    ("kd", "output-layer KD (Hinton et al. 2015)", ("eta",), None, None),
    ("pkd-skip", "Patient KD, every (N/M)-th teacher layer (Sun et al. 2019)", WEIGHTS, "pkd", "skip"),
    ("pkd-last", "Patient KD, last M-1 teacher layers (Sun et al. 2019)", WEIGHTS, "pkd", "last"),
    ("ckd", "Combinatorial KD, non-overlapping buckets (Wu et al. 2020)", WEIGHTS, "ckd", "no"),
    ("alp", "ALP-KD, attention over all teacher layers (Passban et al. 2021)", WEIGHTS, "alp", "all"),
    ("alp-no", "ALP-KD, attention within non-overlapping buckets", WEIGHTS, "alp", "no"),
    ("alp-po", "ALP-KD, attention within partially-overlapping buckets", WEIGHTS, "alp", "po"),
):
    register_method(
        _key,
        description=_description,
        searches=_searches,
        states=("cls",) if _inter else (),
        loss=_BUILTIN + "builtin_loss" if _inter else None,
        modules=_BUILTIN + "builtin_modules" if _inter else None,
        # the one more value each may search (search.extra): KD its temperature, the ALP family its alp_scale
        extra=("temperature", None) if _key == "kd" else ("alp_scale", None) if _inter == "alp" else None,
        inter=_inter,
        mapping=_mapping,
    )
BUILTIN_METHODS: tuple[str, ...] = tuple(METHODS)


def declare_row(key: str, like: MethodSpec | dict) -> MethodSpec:
    """Make ``key`` known to the report without its plug-in: a copy of ``like`` (a spec, or a stored
    :meth:`MethodSpec.declaration`) under ``key``, with no loss. Used for a plug-in method read back from the
    database and for a labelled variant's row (``alp [sqrt_d]``); an existing key is returned as it is."""
    if key in METHODS:
        return METHODS[key]
    if isinstance(like, dict):
        searches = like.get("searches") or ()
        like = MethodSpec(
            key=key,
            description=str(like.get("description", key)),
            searches_eta="eta" in searches,
            searches_lambda="lambda" in searches,
            states=tuple(like.get("states") or ()),
            plugin=like.get("plugin"),
            plugin_file=like.get("plugin_file"),
            plugin_sha256=like.get("plugin_sha256"),
        )
    METHODS[key] = replace(like, key=key, loss=None, modules=None)
    return METHODS[key]


def base_method(key: str) -> str:
    """The registered method of a report row: ``alp`` for ``alp [sqrt_d]`` (a study file's ``label``) and ``alp``."""
    return key.split(" [", 1)[0]


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
