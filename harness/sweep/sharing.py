"""Which points of a study file are the same computation, and which study trains each of them.

The paper's grids are nested: with λ = 0 an inter-layer method's extra term is computed but
weighted by 0, and data order and dropout depend only on (seed, epoch), so ALP/PKD/CKD at
(lr, η, λ = 0) *is* KD at (lr, η); with η = λ = 0 every method *is* NKD at lr. Bit-identical
per-epoch losses and dev scores on CPU are tested for every method (``tests/test_equivalence.py``).

Such a point is trained once per study file and seed, in its **owner** study: the first method,
in the order nkd, kd, then the study file's order, whose grid (or confirmation set) holds it. Every
other method that contains it gets a trial that copies the owner's outcome (value, epochs,
intermediate values), with the user attribute ``equivalent_of`` = the owner trial's ``trial_id``
and no compute of its own. One exception keeps the rule exact: a method that reads the *live*
teacher (a declared state the cache does not hold, e.g. ``tokens``, ``alp_tokens: all``, or
``teacher_outputs: live``) is not merged with one that reads the
cached teacher outputs at η > 0 (the two agree to 1e-5, not bit for bit).
"""

from __future__ import annotations

from harness.spec.config import StudyConfig, extra_values, grid_points, point_key, uses_live_teacher
from harness.spec.methods import get_method

_CANONICAL_FIRST = ("nkd", "kd")


def computation(config: StudyConfig, method: str, point: dict) -> tuple:
    """What a trial of ``method`` at ``point`` computes (with the study file's fixed set-up and seed):
    equal tuples are the same computation."""
    if point["eta"] == 0 and point["lambda"] == 0:
        return ("nkd", point["lr"])
    # An extra axis (search.extra) enters exactly: KD's term depends on the temperature only, the λ term on the rest.
    extra = extra_values(point)
    if point["lambda"] == 0:
        temperature = float(extra.get("temperature", config.fixed.temperature))
        kd = ("kd", point["lr"], point["eta"], uses_live_teacher(config, method))
        return kd if temperature == config.fixed.temperature else (*kd, temperature)
    return (method, point["lr"], point["eta"], point["lambda"], *sorted(extra.items()))


def method_order(config: StudyConfig) -> list[str]:
    """Owner precedence: nkd, kd, then the study file's order."""
    return [m for m in _CANONICAL_FIRST if m in config.methods] + [
        m for m in config.methods if m not in _CANONICAL_FIRST
    ]


def owners(config: StudyConfig, keys: dict[str, dict[str, dict]]) -> dict[tuple[str, str], str]:
    """``(method, key) → owner method`` for every key of every method in ``keys`` (see :func:`owner_points`)."""
    return {where: owner for where, (owner, _) in owner_points(config, keys).items()}


def owner_points(config: StudyConfig, keys: dict[str, dict[str, dict]]) -> dict[tuple[str, str], tuple[str, str]]:
    """``(method, key) → (owner method, owner's key)`` for every key of every method in ``keys``.

    ``keys``: method → {point key (``lr=…,eta=…,lambda=…``, an extra axis's ``,name=value``, ``,seed=S`` for
    confirmations) → params with ``lr``, ``eta``, ``lambda``, optionally the extra axis and ``seed``}. Two
    methods' points are shared when their computations and seeds agree; the owner's key differs from the
    method's only through an extra axis that does not enter the computation (ALP's ``alp_scale`` at λ = 0 is
    KD's point at the study's temperature). Within one method every key is its own.
    """
    first: dict[tuple, tuple[str, str]] = {}
    out = {}
    for method in method_order(config):
        for key, params in sorted(keys.get(method, {}).items()):
            what = (computation(config, method, params), params.get("seed"), _plain(key))
            owner = first.setdefault(what, (method, key))
            out[(method, key)] = owner if owner[0] != method else (method, key)
    return out


def _plain(key: str) -> str:
    """A point key without its extra axis (the part two methods' keys share)."""
    return ",".join(part for part in key.split(",") if part.split("=")[0] in ("lr", "eta", "lambda", "seed"))


def grid_owners(config: StudyConfig, with_keys: bool = False) -> dict[tuple[str, str], str]:
    """:func:`owners` (``with_keys``: :func:`owner_points`) of the grid points of every method of the study file."""
    keys = {m: {point_key(p): p for p in grid_points(config, m)} for m in config.methods}
    return owner_points(config, keys) if with_keys else owners(config, keys)


def plan(config: StudyConfig) -> dict[str, tuple[int, int]]:
    """method → (grid points, trainings after sharing), in the study file's order."""
    found = grid_owners(config)
    return {
        m: (len(grid_points(config, m)), sum(1 for (meth, _), owner in found.items() if meth == m and owner == m))
        for m in config.methods
    }


def describe_grids(config: StudyConfig) -> list[str]:
    """One line per method: how many valid grid points it has and how many of them it trains itself
    (the others are the same computation as another method's point)."""
    lines = []
    trained = plan(config)
    for method in config.methods:
        spec = get_method(method)
        if spec.searches_lambda:
            searched = "lr × η × λ with β = 1 − η − λ ≥ 0"
        else:
            searched = "lr × η" if spec.searches_eta else "lr only, η = λ = 0"
        size, own = trained[method]
        shared = f", {size - own} shared (≡ {'KD/NKD' if spec.searches_lambda else 'NKD'})" if own < size else ""
        lines.append(f"  {method}: {size} grid point{'' if size == 1 else 's'} ({searched}){shared}")
    total, own = sum(g for g, _ in trained.values()), sum(t for _, t in trained.values())
    if own < total:
        lines.append(
            f"  {total} grid points, {own} trainings: {total - own} ({(total - own) / total:.1%}) are "
            "the same computation as another method's point and are trained once"
        )
    return lines
