"""The report's honest part: which protocol made the numbers, equal-budget expectations, paired tests with
Holm's correction, the chance row, and what ALP's attention looks like.

Every function reads a :class:`harness.report.document.Snapshot` only (the database, flattened). The statistics
themselves live in :mod:`harness.report.statistics`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from harness.report import figures_honest, paired, render, statistics
from harness.report.frame import best_trials, grid_done, grid_order, reported_score, task_labels
from harness.report.seed_stats import Seeds, is_alp
from harness.spec.methods import METHODS, get_method
from harness.spec.metrics import compute_metrics
from harness.spec.tasks import TASKS, TaskSpec

ONE_HOT_ENTROPY = 0.1  # nats: a mean attention entropy below this is "near one-hot" (max α ≳ 0.98)
RESAMPLES = 1000  # paired bootstrap resamples over dev examples (seed BOOTSTRAP_SEED)
BOOTSTRAP_SEED = 0


# --------------------------------------------------------------------------- protocol
def protocol_lines(snapshot) -> list[str]:
    """In words: which selection protocol produced the numbers, and which of them are therefore optimistic."""
    frame = snapshot.frame
    by_file = frame.groupby("study_file", sort=True)["selection"].first().fillna("dev")
    lines = []
    for protocol in ("dev", "holdout"):
        files = [f for f, p in by_file.items() if p == protocol]
        if not files:
            continue
        where = f"Study file(s) {', '.join(files)}. " if len(set(by_file)) > 1 else ""
        if protocol == "dev":
            lines.append(
                f"**Protocol: selection on dev (the paper's).** {where}Each trial's value is its best epoch on the "
                "dev set, and each best-of-grid cell is the best grid point on that same dev set. Those cells are "
                "therefore **optimistic**: maxima of noisy dev scores, inflated more for larger grids (here NKD, KD "
                "and the inter-layer methods have different numbers of grid points). The grids are nested (λ = 0 "
                "is KD, η = 0 is NKD), so best-of-grid alone can only show ALP ≥ KD ≥ NKD; such cells are marked "
                "≡ KD / ≡ NKD, and their gain over KD counts as zero (≡ KD) or as NKD's (≡ NKD). The **Equal "
                "budget** section compares methods at the same number of trials; seed confirmations report a fixed "
                "epoch (the last), not a maximum over epochs, but their configuration was still chosen on dev."
            )
        else:
            fixed = [
                ((snapshot.studies[s].get("config") or {}).get("fixed") or {})
                for s in sorted(snapshot.studies)
                if s.split("/")[0] in files
            ]
            fraction = fixed[0].get("holdout_fraction", 0.1) if fixed else 0.1
            cap = fixed[0].get("holdout_max_samples") if fixed else None
            size = f"{fraction:g} of the training file" + (f", at most {cap} examples" if cap else "")
            lines.append(
                f"**Protocol: selection on a held-out slice of train.** {where}A seeded, label-stratified slice "
                f"({size}) that neither the teacher nor any student trains on chooses each trial's epoch and each "
                "cell's grid point; dev is read once, at the chosen epoch of the chosen point. The dev numbers "
                "are not selected on, so they are **not optimistic** for the chosen configuration (they still "
                "carry the dev set's sampling noise: see the paired tests)."
            )
    return lines + [""]


def shared_mark(method: str, lr_eta_lambda: tuple[float, float, float]) -> str:
    """ " ≡ KD" / " ≡ NKD" when a method's chosen point is the same computation as KD's / NKD's."""
    _, eta, lam = lr_eta_lambda
    spec = get_method(method)
    if spec.searches_lambda and lam == 0:
        return " ≡ NKD" if eta == 0 else " ≡ KD"
    if spec.searches_eta and not spec.searches_lambda and eta == 0:
        return " ≡ NKD"
    return ""


# --------------------------------------------------------------------------- chance
def _values(spec: TaskSpec, logits: np.ndarray) -> np.ndarray:
    """What the primary metric scores: class ids (argmax) or regression scores."""
    return logits[:, 0].astype(np.float64) if spec.is_regression else logits.argmax(axis=1)


def chance_values(spec: TaskSpec, labels: dict[str, np.ndarray]) -> tuple[float | None, ...] | None:
    """Every GLUE metric of the task for "always predict the majority class (of dev)"; None without labels."""
    if any(split not in labels for split in spec.eval_splits):
        return None
    values = []
    for split, metric in spec.components:
        gold = labels[split]
        constant = statistics.majority_predictions(gold, spec.is_regression)
        logits = constant[:, None] if spec.is_regression else np.eye(spec.num_labels)[constant.astype(int)]
        values.append(compute_metrics(spec, logits, gold)[metric])
    return tuple(values)


def _logits(snapshot, trial_id, split: str) -> np.ndarray | None:
    if trial_id is None or pd.isna(trial_id):
        return None
    found = snapshot.predictions.get(int(trial_id), {}).get(split)
    return None if found is None else found[1]


def dev_predictions(snapshot, spec: TaskSpec, *trial_ids) -> tuple[np.ndarray, list[np.ndarray]] | None:
    """The task's dev gold labels and what each trial's stored dev logits predict (what the primary metric
    scores); None unless labels and every trial's predictions are stored and of the same length."""
    split = spec.eval_splits[0]
    labels = task_labels(snapshot, spec.name).get(split)
    logits = [_logits(snapshot, trial_id, split) for trial_id in trial_ids]
    if labels is None or any(x is None or len(x) != len(labels) for x in logits):
        return None
    gold = labels if spec.is_regression else labels.astype(np.int64)
    return gold, [_values(spec, x) for x in logits]


def near_chance(snapshot, spec: TaskSpec, trial_id) -> bool | None:
    """True when the trial's dev predictions are within noise of the majority baseline (the paired
    bootstrap's 95 % interval of the difference reaches 0); None without stored predictions/labels."""
    found = dev_predictions(snapshot, spec, trial_id)
    if found is None:
        return None
    gold, (predicted,) = found
    base = statistics.majority_predictions(gold, spec.is_regression)
    result = statistics.paired_bootstrap(spec.primary_metric, predicted, base, gold, RESAMPLES, BOOTSTRAP_SEED)
    return bool(result.low <= 0)


# --------------------------------------------------------------------------- equal budget
def budget_curves(frame: pd.DataFrame) -> dict[tuple[str, str], dict]:
    """(task, method) → the expected reported dev score of the selected trial among n random grid trials,
    for n = 1 … grid size: ``{"n", "mean", "sd"}`` (selection by the trial value, reporting ``score``; equal
    values: the first in :func:`~harness.report.frame.grid_order`, as in best of grid)."""
    done = grid_order(grid_done(frame))
    curves = {}
    for (task, method), group in done.groupby(["task", "method"], sort=True):
        means, sds = statistics.expected_selected_curve(
            group["value"].to_numpy(float), reported_score(group).to_numpy(float)
        )
        curves[(task, method)] = {"n": list(range(1, len(group) + 1)), "mean": means.tolist(), "sd": sds.tolist()}
    return curves


def equal_budget(snapshot, budget: int | None, command: str) -> tuple[list[str], dict]:
    """The "Equal budget" section and, per task, the curves its figure draws."""
    frame = snapshot.frame
    curves = budget_curves(frame)
    if not curves:
        return [], {}
    n = budget or min(len(c["n"]) for c in curves.values())
    tasks = [t for t in TASKS if any(k[0] == t for k in curves)]
    methods = [m for m in METHODS if any(k[1] == m for k in curves)]
    lines = [
        "## Equal budget",
        "",
        f"Expected dev score of the method's chosen trial when only **n = {n}** of its grid points, drawn at "
        "random without replacement, had been run (expected maximum validation performance, Dodge et al. "
        "2019, closed form over the method's complete grid trials, selecting by the trial value as the sweep "
        "does), ± its sd over draws, × 100. Every method gets the same n"
        + (" (the smallest grid here; `report --budget N` changes it)" if budget is None else "")
        + "; a method whose grid has no more than n points is its best of grid. (N) = complete grid trials.",
        "",
        "| method | " + " | ".join(_metric_header(t) for t in tasks) + " |",
        "|---|" + "---:|" * len(tasks),
    ]
    means = {}
    for method in methods:
        cells = []
        for task in tasks:
            curve = curves.get((task, method))
            if curve is None:
                cells.append("–")
                continue
            index = min(n, len(curve["n"])) - 1
            means[(task, method)] = curve["mean"][index]
            cells.append(f"{100 * curve['mean'][index]:.2f} ± {100 * curve['sd'][index]:.2f} ({len(curve['n'])})")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", f"Reproduce: `{command}`", ""]
    if "kd" in methods:
        best = best_trials(frame, ["task", "method"])
        scores = reported_score(best)
        lines += [
            "Gain over KD, × 100: at the equal budget n, and best of grid (a best point that is the same "
            "computation as KD's counts as zero gain, one that is NKD's counts as NKD's gain over KD).",
            "",
            "| method | " + " | ".join(f"{t} at n = {n} | {t} best of grid" for t in tasks) + " |",
            "|---|" + "---:|" * (2 * len(tasks)),
        ]
        for method in (m for m in methods if m != "kd"):
            cells = []
            for task in tasks:
                if (task, method) not in means or (task, "kd") not in means:
                    cells += ["–", "–"]
                    continue
                cells.append(f"{100 * (means[(task, method)] - means[(task, 'kd')]):+.2f}")
                row = best.loc[(task, method)]
                mark = shared_mark(method, (row["lr"], row["eta"], row["lambda"]))
                cells.append(f"{_shared_gain(scores, task, method, mark)}{mark}")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines += ["", f"Reproduce: `{command}`", ""]
    per_task = {task: {m: c for (t, m), c in curves.items() if t == task} for task in tasks}
    return lines, {"n": n, "curves": per_task}


def _shared_gain(scores: pd.Series, task: str, method: str, mark: str) -> str:
    """The best-of-grid gain over KD, × 100: a ≡ KD point gains nothing, a ≡ NKD point gains what NKD does."""
    if mark == " ≡ KD":
        return f"{0.0:+.2f}"
    source = "nkd" if mark == " ≡ NKD" else method
    if (task, source) not in scores.index:
        return "–"
    return f"{100 * float(scores[(task, source)] - scores[(task, 'kd')]):+.2f}"


def best_rows(frame: pd.DataFrame) -> dict[tuple[str, str], pd.Series]:
    """(task, method) → the best grid trial (:func:`harness.report.frame.best_trials`)."""
    return dict(best_trials(frame, ["task", "method"]).iterrows())


def _metric_header(task: str) -> str:
    return f"{task} ({TASKS[task].primary_metric})"


# --------------------------------------------------------------------------- paired tests
def paired_tests(
    snapshot,
    groups: dict[tuple[str, str], Seeds],
    command: str,
    focus: tuple[str, ...] | None = None,
    family: str | None = None,
) -> list[str]:
    """The focus methods (default the ALP family) against every other method, per task: a paired t-test over
    confirmation seeds and a paired BCa bootstrap over dev examples, each corrected over its family of distinct
    comparisons (:mod:`harness.report.paired`)."""
    focus, family = paired.check_focus(focus), paired.check_family(family)
    rows = paired.build(snapshot, groups, focus, family)
    if not rows:
        return []
    seed_m, boot_m = paired.family_m(rows, "seed", family), paired.family_m(rows, "boot", family)
    resamples = next((r.boot.result.resamples for r in rows if r.boot.result is not None), None)
    default = " (the default)" if family == paired.DEFAULT_FAMILY else ""
    scope = "all comparisons of this report" if family == "report" else "the comparisons of one task"
    lines = [
        "## Paired comparisons",
        "",
        f"**Focus**: {', '.join(focus)} (`report --focus METHOD…`), each against every other method. **Seeds**: "
        "paired t-test over the confirmation seeds both methods share (same seed = same data order; "
        "`run_study.py confirm`), Δ = mean of the per-seed differences with its 95 % t-interval. **Dev "
        "bootstrap**: paired BCa bootstrap over dev examples of the two best-of-grid trials' predictions at "
        f"their reported epochs (B = {resamples if resamples else '–'} resamples, 50 per comparison of the "
        f"largest family and at least 1,000, seed {paired.BOOTSTRAP_SEED}): Δ with its 95 % BCa interval and "
        "the p-value of the same construction, so the interval excludes 0 when p < 0.05 (up to the resamples' "
        "granularity). "
        f"**Family**: `{family}`{default}, Holm–Bonferroni over {scope} (`report --family task|report`), "
        "separately for each test, over the **distinct** comparisons only: a row whose two sides are the same "
        "computation (shared trials, identical predictions) is marked ≡ and not counted; a row that repeats "
        "an earlier row's pair of computations is marked = and shares its p; a comparison without a p (zero "
        "difference on every seed) is not counted. BH: Benjamini–Hochberg (false-discovery rate) over the same "
        "family, for reference. A comparison is called only where its Holm p < 0.05; otherwise the test did "
        "not reject, which is a statement about power (below), not evidence that the methods are equal. A side "
        "named *majority class* (regression: *a constant*) predicts the majority class of dev on those seeds (or "
        "at its best grid point): there the comparison is one against a constant predictor. Primary dev metric × 100.",
        "",
        "m (distinct comparisons with a p): seeds "
        + _family_text(seed_m)
        + "; dev bootstrap "
        + _family_text(boot_m)
        + f"; rows in the table: {len(rows)}.",
        "",
        "| # | task | focus method | other method | seeds | Δ seeds [95 % CI] | p | Holm p | BH p "
        "| Δ dev bootstrap [95 % BCa CI] | p | Holm p | BH p | verdict |",
        "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for index, row in enumerate(rows):
        seed, boot = row.seed, row.boot
        seed_cells = _test_cells(rows, seed, "seed", lambda r: [str(r.n), _delta(r.delta, r.low, r.high)])
        boot_cells = _test_cells(rows, boot, "boot", lambda r: [_delta(r.delta, r.low, r.high)])
        names = [f"{m} ({row.majority[m]})" if m in row.majority else m for m in (row.method, row.base)]
        lines.append(
            f"| {index + 1} | {row.task} | {names[0]} | {names[1]} | "
            + " | ".join(seed_cells + boot_cells)
            + f" | {_verdict(row)} |"
        )
    lines += ["", f"Reproduce: `{command}`", ""]
    powers = [paired.power(rows, groups, family, task) for task in TASKS]
    powers = [p for p in powers if p]
    if powers:
        lines += [
            "Power of the seed test: the smallest |Δ| its first Holm step (level 0.05/m) rejects with the seeds "
            "given, for the median sd of the task's per-seed differences; every later Holm step needs more.",
            "",
        ]
        lines += [p + "  " for p in powers] + [""]
    return lines


def _family_text(sizes: dict[str, int]) -> str:
    if list(sizes) == [""]:
        return f"m = {sizes['']}"
    return ", ".join(f"{task} m = {m}" for task, m in sizes.items())


def _test_cells(rows, test, kind: str, effect) -> list[str]:
    """A test's cells: seeds (n, Δ [CI], p, Holm p, BH p) or dev bootstrap (Δ [CI], p, Holm p, BH p)."""
    width = 5 if kind == "seed" else 4
    if test.same:
        head = [str(test.result.n)] if kind == "seed" else []
        return head + ["≡ identical"] + ["–"] * (width - len(head) - 1)
    if test.result is None:
        return ["–"] * width
    result = test.result
    where = f" (= row {test.duplicate_of + 1})" if test.duplicate_of is not None else ""
    return effect(result) + [_p(result.p), _p(test.holm) + where, _p(test.bh)]


def _delta(delta: float, low: float, high: float) -> str:
    if math.isnan(delta):
        return "–"
    interval = "" if math.isnan(low) else f" [{100 * low:+.2f}, {100 * high:+.2f}]"
    return f"{100 * delta:+.2f}{interval}"


def _p(p: float) -> str:
    return "–" if p is None or math.isnan(p) else f"{p:.3g}"


def _verdict(row) -> str:
    if row.seed.same and (row.boot.same or row.boot.result is None):
        return "identical predictions (or one shared trial): no comparison"
    if row.boot.same and row.seed.result is None:
        return "identical predictions (or one shared trial): no comparison"
    called = [
        (name, test.result.delta)
        for name, test in (("seeds", row.seed), ("dev bootstrap", row.boot))
        if test.result is not None and not test.same and not math.isnan(test.holm) and test.holm < statistics.ALPHA
    ]
    if not called:
        if row.seed.result is None and row.boot.result is None:
            return "no test possible (no shared seeds, no stored predictions)"
        return "not distinguishable from noise (not rejected)"
    return "; ".join(
        f"{row.method if delta > 0 else row.base} higher ({name}, Holm p < {statistics.ALPHA})"
        for name, delta in called
    )


# --------------------------------------------------------------------------- ALP attention
def alpha_panels(frame: pd.DataFrame) -> dict[str, list[dict]]:
    """task → one panel per ALP-family method, describing the method's **best** grid trial (the one its cells
    report): its mean α over dev at the reported epoch, the mean entropy, and per student layer the mean largest
    α per example (``top``) and the share of examples whose arg-max layer is not the most common one
    (``switch``; both ``None`` for trials recorded before they were stored). A best point with λ = 0 is a shared
    KD/NKD trial with no ALP term: its panel has ``alpha`` None and says which (``shared``)."""
    out: dict[str, list[dict]] = {}
    for (task, method), row in sorted(best_rows(frame).items()):
        if not is_alp(method):
            continue
        alpha = row["alpha"]
        shared = shared_mark(method, (row["lr"], row["eta"], row["lambda"])).strip()
        if not (isinstance(alpha, list) and alpha):
            if shared:
                out.setdefault(task, []).append(
                    {"method": method, "point": str(row["point"]), "alpha": None, "shared": shared}
                )
            continue
        entropy = float(row["alpha_entropy"])
        out.setdefault(task, []).append(
            {
                "method": method,
                "point": str(row["point"]),
                "alpha": alpha,
                "entropy": entropy,
                "one_hot": entropy < ONE_HOT_ENTROPY,
                "top": _split(row.get("alpha_top")),
                "switch": _split(row.get("alpha_switch")),
            }
        )
    return out


def _split(text) -> list[float] | None:
    return None if not isinstance(text, str) or not text else [float(v) for v in text.split(",")]


def _per_layer(values: list[float] | None) -> str:
    return "–" if values is None else ", ".join(f"{v:.2f}" for v in values)


def alpha_section(panels: dict[str, list[dict]], figures: dict, command: str) -> list[str]:
    if not panels:
        return []
    lines = [
        "## ALP attention",
        "",
        "Of each ALP method's **best** grid trial (the one its cells report), at its reported epoch, over dev "
        "([CLS]): the mean attention α (student layer × teacher layer), and per example: the mean entropy of α "
        "(nats), the mean over examples of the largest α, and how often the arg-max teacher layer is not the "
        f"layer's most common one. **Near one-hot** (mean entropy < {ONE_HOT_ENTROPY}): on each example α puts "
        "almost all its weight on one teacher layer; the layer can still change from example to example (the "
        "last column), in which case the *mean* α is spread although each example's is not. A best point with "
        "λ = 0 is KD's (≡ KD) or NKD's (≡ NKD) computation: it has no ALP term, and no α is described.",
        "",
        "| task | method | point | mean entropy | largest mean α per student layer | mean largest α per example "
        "| arg-max off its most common layer | near one-hot |",
        "|---|---|---|---:|---|---|---|:---:|",
    ]
    for task in (t for t in TASKS if t in panels):
        for panel in panels[task]:
            if panel["alpha"] is None:
                lines.append(
                    f"| {task} | {panel['method']} | {panel['point']} | – | no ALP term (best {panel['shared']}) "
                    "| – | – | – |"
                )
                continue
            tops = ", ".join(f"{max(row):.2f}@{int(np.argmax(row)) + 1}" for row in panel["alpha"])
            lines.append(
                f"| {task} | {panel['method']} | {panel['point']} | {panel['entropy']:.3f} | {tops} | "
                f"{_per_layer(panel['top'])} | {_per_layer(panel['switch'])} | {'yes' if panel['one_hot'] else 'no'} |"
            )
    lines += [
        "",
        "(v@j: mean α v on teacher layer j; per-example columns list the student layers in order; – where the "
        "trial was recorded before they were stored.)",
        "",
        f"Reproduce: `{command}`",
        "",
    ]
    return lines + [f"![{title}]({path})" for title, path in figures.get("alpha", [])] + [""]


def figure_jobs(budget: dict, panels: dict[str, list[dict]]) -> dict[str, list]:
    """The section's figures as :class:`harness.report.render.Job` lists: ``{"budget": …, "alpha": …}``."""
    jobs = {"budget": [], "alpha": []}
    for task, curves in (budget.get("curves") or {}).items():
        jobs["budget"].append(
            (
                f"equal budget, {task}",
                render.Job(
                    f"budget__{render.slug(task)}.png",
                    figures_honest.budget_curves,
                    (task, curves, TASKS[task].primary_metric, budget["n"]),
                ),
            )
        )
    for task, task_panels in panels.items():
        task_panels = [p for p in task_panels if p["alpha"] is not None]
        if not task_panels:
            continue
        jobs["alpha"].append(
            (
                f"ALP attention, {task}",
                render.Job(f"alpha__{render.slug(task)}.png", figures_honest.alpha_heatmap, (task, task_panels)),
            )
        )
    return jobs
