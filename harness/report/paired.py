"""Paired comparisons: the focus methods against every other method, per task, over the *distinct* comparisons.

Two tests per comparison: a paired t-test over the confirmation seeds both methods share, and a paired BCa
bootstrap over dev examples of their best-of-grid trials (:mod:`harness.report.statistics`). Choices the paper
leaves open, stated here and in the report:

* **Focus** (``report --focus``): the methods paired against every other method; default the ALP family
  (``alp``, ``alp-*``). The correction family follows the focus: only focus × other comparisons are in it.
* **Family** (``report --family``): ``report`` (default; one Holm family over every comparison of the report,
  so the family-wise error rate holds for the whole report) or ``task`` (one family per task).
* **Distinct comparisons.** A comparison whose two sides are the same computation (shared trials, or identical
  stored predictions on every seed) is no comparison: it is shown as such and left out of m. Comparisons whose
  two sides are the same pair of computations as an earlier row (KD ≡ PKD-last ≡ CKD, say) are one comparison:
  they count once in m and share its p. A comparison without a p (zero difference on every seed, n < 2) is
  left out of m. Holm's correction decides; Benjamini–Hochberg is a second column.
* **Bootstrap size**: B = :func:`~harness.report.statistics.bootstrap_resamples` (m) for the largest bootstrap
  family, seed 0, so that its smallest possible p survives Holm.
* **Power**: per task, the smallest Δ the seed test detects at Holm's first step with the seeds given, and the
  seeds a Δ of one point would need (sd: the median sd of the per-seed differences of the task's counted
  comparisons).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from harness.report import statistics
from harness.report.frame import best_trials, task_labels
from harness.report.seed_stats import Seeds, is_alp
from harness.spec.methods import METHODS, base_method
from harness.spec.tasks import TASKS, TaskSpec
from harness.util.errors import HarnessError

FAMILIES = ("report", "task")
DEFAULT_FAMILY = "report"
BOOTSTRAP_SEED = 0


def default_focus() -> tuple[str, ...]:
    """The ALP family, in registry order."""
    return tuple(m for m in METHODS if is_alp(m))


def check_focus(focus) -> tuple[str, ...]:
    """``focus`` as a tuple in registry order (default: :func:`default_focus`); HarnessError for an unknown name."""
    if not focus:
        return default_focus()
    for name in focus:
        if name not in METHODS:
            raise HarnessError(f"unknown method {name!r} for --focus; expected one of {', '.join(METHODS)}")
    return tuple(m for m in METHODS if m in set(focus))


def check_family(family: str | None) -> str:
    if family is None:
        return DEFAULT_FAMILY
    if family not in FAMILIES:
        raise HarnessError(f"unknown family {family!r} for --family; expected one of {', '.join(FAMILIES)}")
    return family


# --------------------------------------------------------------------------- what a side computed
def _values(spec: TaskSpec, logits: np.ndarray) -> np.ndarray:
    """What the primary metric scores: class ids (argmax) or regression scores."""
    return logits[:, 0].astype(np.float64) if spec.is_regression else logits.argmax(axis=1)


def predicted(snapshot, spec: TaskSpec, trial_id) -> np.ndarray | None:
    """What a trial's stored dev logits predict; None where not stored."""
    if trial_id is None or (isinstance(trial_id, float) and math.isnan(trial_id)):
        return None
    found = snapshot.predictions.get(int(trial_id), {}).get(spec.eval_splits[0])
    return None if found is None else _values(spec, found[1])


def computation(snapshot, spec: TaskSpec, row) -> str:
    """An identity of what a trial computed: its predictions' digest where stored, else the trained trial."""
    values = predicted(snapshot, spec, row["trial_id"])
    if values is not None:
        return "p" + hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()[:16]
    trained = row["trial_id"] if pd.isna(row.get("equivalent_of")) else row["equivalent_of"]
    return f"t{trained}"


def is_majority(snapshot, spec: TaskSpec, gold: np.ndarray | None, trial_id) -> bool:
    """True when the trial predicts one constant on dev: the majority class (or, for regression, a constant)."""
    values = predicted(snapshot, spec, trial_id)
    if values is None or gold is None or len(values) != len(gold) or not len(values):
        return False
    if spec.is_regression:
        return bool(np.all(values == values[0]))
    majority = statistics.majority_predictions(gold, False)
    return bool(np.all(values == majority[0]))


# --------------------------------------------------------------------------- one comparison
@dataclass
class Test:
    """One test of one comparison: its result, its identity and where it stands in its family."""

    result: object | None  # statistics.PairedT | statistics.PairedBootstrap | None
    inputs: tuple | None = None  # a bootstrap's (metric, a, b, gold), run once B is known; None when same/none
    pair: tuple | None = None  # the unordered pair of computations (None: no test possible)
    same: bool = False  # both sides are the same computation
    duplicate_of: int | None = None  # the row whose comparison this is
    holm: float = math.nan
    bh: float = math.nan

    @property
    def counted(self) -> bool:
        return (
            self.result is not None
            and not self.same
            and self.duplicate_of is None
            and not math.isnan(float(getattr(self.result, "p", math.nan)))
        )


@dataclass
class Comparison:
    task: str
    method: str
    base: str
    seed: Test
    boot: Test
    majority: dict = field(default_factory=dict)  # side → "majority class on seeds 1, 3" (text)


def _seed_side(snapshot, spec, gold, group: Seeds | None, frame_ids: dict) -> tuple[dict, list[int]]:
    """seed → computation of that seed's run; the seeds on which the run predicts the majority class."""
    if group is None:
        return {}, []
    keys, majority = {}, []
    for seed, trial_id in zip(group.seeds, group.trials or (None,) * group.n):
        row = frame_ids.get(trial_id)
        keys[seed] = computation(snapshot, spec, row) if row is not None else f"s{group.study}/{group.point}/{seed}"
        if is_majority(snapshot, spec, gold, trial_id):
            majority.append(seed)
    return keys, majority


def build(snapshot, groups: dict, focus: tuple[str, ...], family: str) -> list[Comparison]:
    """Every focus × other comparison per task, each test collapsed to its distinct comparisons, corrected."""
    frame = snapshot.frame
    best = dict(best_trials(frame, ["task", "method"]).iterrows())
    runs = frame[frame["confirmation"] & frame["trial_id"].notna()]
    frame_ids = {int(r["trial_id"]): r for _, r in runs.iterrows()}
    rows: list[Comparison] = []
    order = {m: i for i, m in enumerate(METHODS)}
    for task in TASKS:
        spec = TASKS[task]
        gold = task_labels(snapshot, task).get(spec.eval_splits[0])
        # report rows in registry order; a study file's label makes its own rows (alp [sqrt_d]) of one method
        present = sorted(
            {m for t, m in (*best, *groups) if t == task}, key=lambda m: (order.get(base_method(m), len(order)), m)
        )
        sides = {m: _seed_side(snapshot, spec, gold, groups.get((task, m)), frame_ids) for m in present}
        pairs = [(a, b) for a in present if base_method(a) in focus for b in present if base_method(b) not in focus]
        # the variants of one method (study files with a label) against each other: same seeds, same data
        pairs += [(a, b) for i, a in enumerate(present) for b in present[i + 1 :] if base_method(a) == base_method(b)]
        for method, base in pairs:
            seed = _seed_test(groups, task, method, base, sides)
            boot = _boot_pair(snapshot, spec, best.get((task, method)), best.get((task, base)))
            majority, word = {}, "a constant" if spec.is_regression else "majority class"
            for side in (method, base):
                on = sides[side][1]
                if on:
                    majority[side] = f"{word} on seed" + "s" * (len(on) > 1) + " " + ", ".join(map(str, on))
                if (task, side) in best and is_majority(snapshot, spec, gold, best[(task, side)]["trial_id"]):
                    majority[side] = "; ".join(filter(None, [majority.get(side), f"best of grid: {word}"]))
            rows.append(Comparison(task, method, base, seed, boot, majority))
    _mark_duplicates(rows, "seed")
    _mark_duplicates(rows, "boot")
    m_boot = max(_family_sizes(rows, "boot", family).values(), default=0)
    resamples = statistics.bootstrap_resamples(m_boot)
    for row in rows:  # one bootstrap per distinct comparison; a duplicate shows it, oriented as its own row
        test = row.boot
        if test.inputs is None:
            continue
        if test.duplicate_of is None:
            test.result = statistics.paired_bootstrap(*test.inputs, resamples, BOOTSTRAP_SEED)
            continue
        source = rows[test.duplicate_of].boot
        test.result = source.result
        if source.pair[2] != test.pair[2]:  # the same two computations, the other way round
            test.result = replace(
                source.result, delta=-source.result.delta, low=-source.result.high, high=-source.result.low
            )
    _correct(rows, "seed", family)
    _correct(rows, "boot", family)
    return rows


def _seed_test(groups, task, method, base, sides) -> Test:
    a, b = groups.get((task, method)), groups.get((task, base))
    if a is None or b is None:
        return Test(None)
    result = statistics.paired_t(dict(zip(a.seeds, a.values)), dict(zip(b.seeds, b.values)))
    common = sorted(set(a.seeds) & set(b.seeds))
    ka, kb = (tuple(sides[m][0].get(s) for s in common) for m in (method, base))
    return Test(result, pair=(task, frozenset({ka, kb})), same=ka == kb and bool(common))


def _boot_pair(snapshot, spec, a, b) -> Test:
    """The bootstrap's inputs (run later, once B is known) and its identity."""
    if a is None or b is None:
        return Test(None)
    gold = task_labels(snapshot, spec.name).get(spec.eval_splits[0])
    pa, pb = predicted(snapshot, spec, a["trial_id"]), predicted(snapshot, spec, b["trial_id"])
    if gold is None or pa is None or pb is None or not (len(pa) == len(pb) == len(gold)):
        return Test(None)
    gold = gold if spec.is_regression else gold.astype(np.int64)
    ka, kb = computation(snapshot, spec, a), computation(snapshot, spec, b)
    inputs = None if ka == kb else (spec.primary_metric, pa, pb, gold)
    return Test(None, inputs, pair=(spec.name, frozenset({ka, kb}), ka), same=ka == kb)


def _key(test: Test) -> tuple | None:
    return None if test.pair is None else test.pair[:2]


def _mark_duplicates(rows: list[Comparison], kind: str) -> None:
    first: dict = {}
    for index, row in enumerate(rows):
        test = getattr(row, kind)
        if test.pair is None or test.same:
            continue
        key = _key(test)
        if key in first:
            test.duplicate_of = first[key]
        else:
            first[key] = index


def _family(row: Comparison, family: str) -> str:
    return row.task if family == "task" else ""


def _family_sizes(rows: list[Comparison], kind: str, family: str) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for row in rows:
        test = getattr(row, kind)
        if test.pair is not None and not test.same and test.duplicate_of is None:
            if kind == "seed" and not test.counted:
                continue
            sizes[_family(row, family)] = sizes.get(_family(row, family), 0) + 1
    return sizes


def _correct(rows: list[Comparison], kind: str, family: str) -> None:
    for name in sorted({_family(r, family) for r in rows}):
        members = [i for i, r in enumerate(rows) if _family(r, family) == name and getattr(r, kind).counted]
        raw = [getattr(rows[i], kind).result.p for i in members]
        for i, holm, bh in zip(members, statistics.holm(raw), statistics.benjamini_hochberg(raw)):
            getattr(rows[i], kind).holm, getattr(rows[i], kind).bh = float(holm), float(bh)
    for row in rows:
        test = getattr(row, kind)
        if test.duplicate_of is not None:
            source = getattr(rows[test.duplicate_of], kind)
            test.holm, test.bh = source.holm, source.bh


def family_m(rows: list[Comparison], kind: str, family: str) -> dict[str, int]:
    """Family → m, the number of distinct comparisons with a p (family ``""`` = the whole report)."""
    return {
        name: sum(1 for r in rows if _family(r, family) == name and getattr(r, kind).counted)
        for name in sorted({_family(r, family) for r in rows})
    }


def power(rows: list[Comparison], groups: dict, family: str, task: str) -> str | None:
    """The power line of ``task``'s seed test, or None without a counted seed comparison."""
    counted = [r for r in rows if r.task == task and r.seed.counted]
    if not counted:
        return None
    sds, ns = [], []
    for row in counted:
        a, b = groups[(task, row.method)], groups[(task, row.base)]
        common = sorted(set(a.seeds) & set(b.seeds))
        da, db = dict(zip(a.seeds, a.values)), dict(zip(b.seeds, b.values))
        sds.append(float(np.std([da[s] - db[s] for s in common], ddof=1)))
        ns.append(len(common))
    m = family_m(rows, "seed", family)[_family(counted[0], family)]
    sd, n = float(np.median(sds)), int(np.median(ns))
    smallest = statistics.detectable_delta(sd, n, m)
    needed = statistics.seeds_needed(0.01, sd, m)
    need = "more than 10,000" if needed is None else str(needed)
    return (
        f"**Power, {task}** (seed test, m = {m}, n = {n} seeds, sd of the per-seed differences {100 * sd:.2f}): "
        f"the smallest Δ it can detect at Holm's first step (|t| > "
        f"{statistics.detectable_delta(1.0, n, m) * math.sqrt(n):.2f}) is **{100 * smallest:.2f} points**; "
        f"a Δ of 1 point would need **{need} seeds**."
    )
