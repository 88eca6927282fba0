"""The report's honest part: which protocol made the numbers, equal-budget expectations, paired tests with
Holm's correction, the chance row, and what ALP's attention looks like.

Every function reads a :class:`harness.report.document.Snapshot` only (the database, flattened). The statistics
themselves live in :mod:`harness.report.statistics`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from harness.report import figures_honest, render, statistics
from harness.report.frame import best_trials, grid_done, reported_score
from harness.report.seed_stats import Seeds, is_alp
from harness.spec.methods import METHODS, base_method, get_method
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
                "≡ KD / ≡ NKD and their gain counts as zero. The **Equal budget** section compares methods at the "
                "same number of trials; seed confirmations report a fixed epoch (the last), not a maximum over "
                "epochs, but their configuration was still chosen on dev."
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


def task_labels(snapshot, task: str) -> dict[str, np.ndarray]:
    """The eval labels stored with the first study of ``task`` that has them (``{}`` if none)."""
    for study in sorted(snapshot.studies):
        if snapshot.studies[study]["task"] == task and study in snapshot.labels:
            return snapshot.labels[study]
    return {}


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


def _dev_predictions(snapshot, spec: TaskSpec, *trial_ids) -> tuple[np.ndarray, list[np.ndarray]] | None:
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
    found = _dev_predictions(snapshot, spec, trial_id)
    if found is None:
        return None
    gold, (predicted,) = found
    base = statistics.majority_predictions(gold, spec.is_regression)
    result = statistics.paired_bootstrap(spec.primary_metric, predicted, base, gold, RESAMPLES, BOOTSTRAP_SEED)
    return bool(result.low <= 0)


# --------------------------------------------------------------------------- equal budget
def budget_curves(frame: pd.DataFrame) -> dict[tuple[str, str], dict]:
    """(task, method) → the expected reported dev score of the selected trial among n random grid trials,
    for n = 1 … grid size: ``{"n", "mean", "sd"}`` (selection by the trial value, reporting ``score``)."""
    done = grid_done(frame)
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
            "computation as KD's or NKD's counts as zero gain).",
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
                gain = 0.0 if mark else float(scores[(task, method)] - scores[(task, "kd")])
                cells.append(f"{100 * gain:+.2f}{mark}")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines += ["", f"Reproduce: `{command}`", ""]
    per_task = {task: {m: c for (t, m), c in curves.items() if t == task} for task in tasks}
    return lines, {"n": n, "curves": per_task}


def best_rows(frame: pd.DataFrame) -> dict[tuple[str, str], pd.Series]:
    """(task, method) → the best grid trial (:func:`harness.report.frame.best_trials`)."""
    return dict(best_trials(frame, ["task", "method"]).iterrows())


def _metric_header(task: str) -> str:
    return f"{task} ({TASKS[task].primary_metric})"


# --------------------------------------------------------------------------- paired tests
def paired_tests(snapshot, groups: dict[tuple[str, str], Seeds], command: str) -> list[str]:
    """ALP (and each variant) against every baseline, and the labelled variants of one method (``alp [1]``,
    ``alp [sqrt_d]``: study files with a ``label``) against each other, per task: a paired t-test over
    confirmation seeds and a paired bootstrap over dev examples, each Holm-corrected over all comparisons."""
    frame = snapshot.frame
    best = best_rows(frame)
    rows = []
    for task in TASKS:
        spec = TASKS[task]
        present = [m for m in METHODS if (task, m) in best or (task, m) in groups]
        pairs = [(alp, base) for alp in present if is_alp(alp) for base in present if not is_alp(base)]
        # variants of one method (study files with a label: alp [1], alp [sqrt_d]) against each other
        pairs += [(a, b) for i, a in enumerate(present) for b in present[i + 1 :] if base_method(a) == base_method(b)]
        for alp, base in pairs:
            rows.append(
                (
                    task,
                    alp,
                    base,
                    _seed_test(groups, task, alp, base),
                    _bootstrap_test(snapshot, spec, best.get((task, alp)), best.get((task, base))),
                )
            )
    if not rows:
        return []
    seed_holm = statistics.holm([r[3].p if r[3] is not None else math.nan for r in rows])
    boot_holm = statistics.holm([r[4].p if r[4] is not None else math.nan for r in rows])
    lines = [
        "## Paired comparisons",
        "",
        "ALP and each ALP variant against every baseline. **Seeds**: paired t-test over the confirmation "
        "seeds both methods share (same seed = same data order; `run_study.py confirm`), Δ = mean of the "
        "per-seed differences with its 95 % t-interval. **Dev bootstrap**: paired bootstrap over dev "
        f"examples ({RESAMPLES} resamples, seed {BOOTSTRAP_SEED}) of the two best-of-grid trials' predictions "
        "at their reported epochs, Δ with its 95 % percentile interval, p by the shifted null. "
        "**Holm**: Holm–Bonferroni over all comparisons of this report, separately for each test. "
        "A comparison is called only where a corrected p < 0.05; otherwise it is not distinguishable from "
        "noise. Primary dev metric × 100.",
        "",
        "| task | ALP method | baseline | seeds | Δ seeds [95 % CI] | p | Holm p | Δ dev bootstrap [95 % CI] "
        "| p | Holm p | verdict |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for (task, alp, base, seed, boot), seed_p, boot_p in zip(rows, seed_holm, boot_holm):
        seed_cells = (
            ["–"] * 4
            if seed is None
            else [str(seed.n), _delta(seed.delta, seed.low, seed.high), _p(seed.p), _p(seed_p)]
        )
        boot_cells = ["–"] * 3 if boot is None else [_delta(boot.delta, boot.low, boot.high), _p(boot.p), _p(boot_p)]
        lines.append(
            f"| {task} | {alp} | {base} | "
            + " | ".join(seed_cells + boot_cells)
            + f" | {_verdict(alp, base, seed, seed_p, boot, boot_p)} |"
        )
    return lines + ["", f"Reproduce: `{command}`", ""]


def _seed_test(groups, task: str, alp: str, base: str) -> statistics.PairedT | None:
    a, b = groups.get((task, alp)), groups.get((task, base))
    if a is None or b is None:
        return None
    return statistics.paired_t(dict(zip(a.seeds, a.values)), dict(zip(b.seeds, b.values)))


def _bootstrap_test(snapshot, spec: TaskSpec, a, b) -> statistics.PairedBootstrap | None:
    if a is None or b is None:
        return None
    found = _dev_predictions(snapshot, spec, a["trial_id"], b["trial_id"])
    if found is None:
        return None
    gold, (pa, pb) = found
    return statistics.paired_bootstrap(spec.primary_metric, pa, pb, gold, RESAMPLES, BOOTSTRAP_SEED)


def _delta(delta: float, low: float, high: float) -> str:
    if math.isnan(delta):
        return "–"
    interval = "" if math.isnan(low) else f" [{100 * low:+.2f}, {100 * high:+.2f}]"
    return f"{100 * delta:+.2f}{interval}"


def _p(p: float) -> str:
    return "–" if p is None or math.isnan(p) else f"{p:.3g}"


def _verdict(alp: str, base: str, seed, seed_p: float, boot, boot_p: float) -> str:
    called = [
        (name, test.delta)
        for name, test, p in (("seeds", seed, seed_p), ("dev bootstrap", boot, boot_p))
        if test is not None and not math.isnan(p) and p < statistics.ALPHA
    ]
    if not called:
        if seed is None and boot is None:
            return "no test possible (no shared seeds, no stored predictions)"
        return "not distinguishable from noise"
    return "; ".join(
        f"{alp if delta > 0 else base} higher ({name}, Holm p < {statistics.ALPHA})" for name, delta in called
    )


# --------------------------------------------------------------------------- ALP attention
def alpha_panels(frame: pd.DataFrame) -> dict[str, list[dict]]:
    """task → one panel per ALP-family method: the mean α over dev, at its reported epoch, of the method's best
    grid trial that has one (a best point with λ = 0 is a shared KD/NKD trial, which computes no α)."""
    out: dict[str, list[dict]] = {}
    has_alpha = frame["alpha"].map(lambda a: isinstance(a, list) and len(a) > 0)
    for (task, method), row in sorted(best_rows(frame[has_alpha]).items()):
        alpha = row["alpha"]
        if not is_alp(method):
            continue
        entropy = float(row["alpha_entropy"])
        out.setdefault(task, []).append(
            {
                "method": method,
                "point": str(row["point"]),
                "alpha": alpha,
                "entropy": entropy,
                "one_hot": entropy < ONE_HOT_ENTROPY,
            }
        )
    return out


def alpha_section(panels: dict[str, list[dict]], figures: dict, command: str) -> list[str]:
    if not panels:
        return []
    lines = [
        "## ALP attention",
        "",
        "Mean attention α over dev (student layer × teacher layer, [CLS]) of each ALP method's best grid trial "
        f"at its reported epoch, and the mean entropy of α (nats). **Near one-hot** (entropy < "
        f"{ONE_HOT_ENTROPY}): the softmax picks one teacher layer per example, so ALP acts as a learned "
        "single-layer match rather than a mixture (large [CLS] dot products with `alp_scale: 1` do this; "
        "`alp_scale: sqrt_d` tempers them).",
        "",
        "| task | method | point | mean entropy | largest mean α per student layer | near one-hot |",
        "|---|---|---|---:|---|:---:|",
    ]
    for task in (t for t in TASKS if t in panels):
        for panel in panels[task]:
            tops = ", ".join(f"{max(row):.2f}@{int(np.argmax(row)) + 1}" for row in panel["alpha"])
            lines.append(
                f"| {task} | {panel['method']} | {panel['point']} | {panel['entropy']:.3f} | {tops} | "
                f"{'yes' if panel['one_hot'] else 'no'} |"
            )
    lines += ["", "(v@j: mean α v on teacher layer j.)", "", f"Reproduce: `{command}`", ""]
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
        jobs["alpha"].append(
            (
                f"ALP attention, {task}",
                render.Job(f"alpha__{render.slug(task)}.png", figures_honest.alpha_heatmap, (task, task_panels)),
            )
        )
    return jobs
