"""Reports: a pure function of the database (``README.md``, ``runs.md``, ``trials.csv``, ``figures/``).

Re-running the report on the same database gives identical files. ``README.md`` is a function of the results
alone (the points, seeds, values, epochs and predictions of the trials that are results, the studies'
configuration and teacher): two runs of the same sweep, scheduled in any way, interrupted and resumed or not, give
the same text but for the storage URL in its commands. How the sweep ran is :mod:`harness.report.runs`
(``runs.md``). The data are loaded by
:mod:`harness.report.frame`; the comparison table is :mod:`harness.report.comparison`; the honest part (protocol,
equal budget, paired tests, chance, ALP attention) is :mod:`harness.report.honest`; seed statistics
are :mod:`harness.report.seed_stats`; published rows come from :func:`harness.report.reference.load_reference`; the
figures are drawn by :mod:`harness.report.figures`.
"""

from __future__ import annotations

import contextlib
import gc
import shlex
from pathlib import Path

import pandas as pd

from harness.report import honest, paired
from harness.report.comparison import comparison_table
from harness.report.figures import draw_all
from harness.report.frame import (
    Snapshot,
    best_per_study,
    best_trials,
    interrupted,
    load,
    number_cell,
    results,
    sections,
)
from harness.report.reference import load_reference
from harness.report.runs import LINK, runs_report, state_counts
from harness.report.seed_stats import confirmations, seed_groups, seeds_tables
from harness.spec.methods import METHODS
from harness.spec.tasks import TASKS
from harness.store.storage import Storage
from harness.util.files import atomic_write

__all__ = ["load", "markdown_report", "write_report"]

TIE_BREAK = (
    "Ties, in every selection of this report (best of grid, the equal-budget curves, the paired tests, the α "
    "section, the figures): the first study, then grid order, the first point by ascending lr, then η, then λ, then "
    "the method's extra searched value, then the seed; it does not depend on the order in which the sweep ran its "
    "trials."
)


# --------------------------------------------------------------------------- document


def study_table(snapshot: Snapshot, section: pd.DataFrame, summary: pd.DataFrame) -> list[str]:
    """One study file × task: per method the best grid point and its counts (failed: real failures; the
    interrupted trials, trial numbers and compute are in ``runs.md``). Every score names its split: under
    ``selection: holdout`` the selecting holdout value and the dev score read at it, side by side."""
    holdout = (section["selection"].fillna("dev") == "holdout").any()
    lines = [
        "| method | "
        + ("best holdout (selects) | dev at it" if holdout else "best dev")
        + " | lr | η | λ | complete | failed | pruned | running | seeds |",
        "|---|" + "---:|" * (10 if holdout else 9),
    ]
    teacher = next(
        (snapshot.studies[s]["teacher"] for s in sorted(set(section["study"])) if "teacher" in snapshot.studies[s]),
        None,
    )
    if teacher is not None:  # the teacher's value is its dev score: it is not selected on the holdout
        value = number_cell(teacher.get("value"), ".2f", 100)
        lines.append(f"| teacher | {'– | ' if holdout else ''}{value} |" + " |" * 8)
    order = {m: i for i, m in enumerate(METHODS)}
    for row in sorted(summary.itertuples(), key=lambda r: order[r.method]):
        scores = number_cell(row.value, ".2f", 100) + (f" | {number_cell(row.score, '.2f', 100)}" if holdout else "")
        lines.append(
            f"| {row.method} | {scores} | {number_cell(row.lr, 'g')} | {number_cell(row.eta, 'g')} | "
            f"{number_cell(row.lam, 'g')} | {row.complete} | {row.failed} | {row.pruned} | {row.running} | "
            f"{row.seeds} |"
        )
    return lines


def markdown_report(
    snapshot: Snapshot,
    command: str,
    reference: list[dict] | None = None,
    figures: dict | None = None,
    budget: int | None = None,
    equal: tuple | None = None,
    focus: tuple[str, ...] | None = None,
    family: str | None = None,
) -> str:
    """The README text; ``reference`` as :func:`~harness.report.reference.load_reference` returns it, ``figures`` as
    :func:`harness.report.figures.draw_all` does, ``budget`` the equal budget n (default: the smallest grid), ``equal``
    the equal-budget section if already computed (:func:`harness.report.honest.equal_budget`).

    A function of the results alone: its trial counts leave the interrupted trials out (they are no results:
    another trial ran their point), and nothing in it depends on trial numbers, finishing order, workers or
    wall times (those are :func:`harness.report.runs.runs_report`'s)."""
    frame, reference, figures = snapshot.frame, reference or [], figures or {}
    lines = ["# Sweep report", ""]
    if frame.empty:
        return "\n".join(lines + ["No trials in this database yet.", ""])
    kept = results(frame)
    lines += [
        f"{len(snapshot.studies)} studies, {len(kept)} trials: {state_counts(kept)}.{_shared_note(kept)}",
        "",
        LINK,
        "",
    ]
    lines += honest.protocol_lines(snapshot)
    lines += [
        "## Comparison (dev, best of grid)",
        "",
        "Each cell: the method's best grid trial on the task (chosen by the primary metric; confirmation re-runs "
        "left out), every metric GLUE reports for the task at that trial's reported epoch (the selected one), "
        "× 100. **Average**: mean over tasks of each task's score, a multi-metric task scoring the mean of its "
        "metrics (GLUE leaderboard convention). Every number is measured on **dev** (under `selection: holdout` the "
        "grid point and epoch were chosen on the holdout). **Bold**: the column's leader, only where a paired BCa "
        "bootstrap of its dev predictions tells it, after Holm's correction over the table's leader tests, both "
        'from the runner-up and from the majority-class baseline; otherwise no bold and the note says "no '
        'method leads". The Average is never bold (no test of an average over tasks is made, and chance-level '
        "tasks would carry it). Rows marked (published) are reference numbers, not runs of this harness.",
        "",
    ]
    lines += comparison_table(snapshot, reference) + [f"Reproduce: `{command}`", ""]
    lines += [f"![{title}]({path})" for title, path in figures.get("", [])] + [""]
    budget_lines, _ = equal or honest.equal_budget(snapshot, budget, command)
    lines += budget_lines + [f"![{title}]({path})" for title, path in figures.get("budget", [])] + [""]
    found = confirmations(frame, best_trials(frame, ["task", "method"]))
    if found:
        lines += seeds_tables(found, command)
    lines += honest.paired_tests(snapshot, seed_groups(found), command, focus, family)
    lines += honest.alpha_section(honest.alpha_panels(frame), figures, command)
    lines += [
        "## Studies",
        "",
        "Per study: the best grid point, its score on the split that selected it (under `selection: holdout` "
        "the holdout value, with the dev score read at it beside) and the trial counts (failed: real failures; "
        "interrupted trials, whose points other trials ran, are counted in [runs.md](runs.md)). " + TIE_BREAK,
        "",
    ]
    summary = best_per_study(frame)
    for (study_file, task), section in sections(frame):
        split = "selected on holdout, dev read at it" if (section["selection"] == "holdout").any() else "dev"
        lines += [f"### {study_file} / {task} ({split}, {TASKS[task].primary_metric} × 100)", ""]
        lines += study_table(snapshot, section, summary[summary["study"].isin(set(section["study"]))])
        lines += _runtime_notes(section)
        lines += ["", f"Reproduce: `{command}`", "", _export_line(command, study_file, task), ""]
        lines += [f"![{title}]({path})" for title, path in figures.get((study_file, task), [])] + [""]
    return "\n".join(lines)


def _export_line(command: str, study_file: str, task: str) -> str:
    """How to take this section's best student out: ``export --best`` on the report's own storage."""
    tokens = shlex.split(command)
    storage = tokens[tokens.index("--storage") + 1] if "--storage" in tokens else None
    export = (
        f"python run_study.py export --best --name {shlex.quote(study_file)} --task {task}"
        + (f" --storage {shlex.quote(storage)}" if storage else "")
        + f" --out students/{study_file}-{task}"
    )
    return (
        f"Export the student: `{export}` (add `--method M` for another method's best, and `--data-dir DIR` "
        "unless `$GLUE_DIR` names the local GLUE folder) writes a Hugging Face "
        "folder of the student at its reported epoch with a model card (`README.md`: score, method, lr/η/λ, "
        "seed, teacher, selection protocol, the command that reproduces it), re-training it first when its "
        "weights were not kept (`fixed.keep_students`)."
    )


def _shared_note(frame: pd.DataFrame) -> str:
    shared = int(frame["equivalent_of"].notna().sum())
    if not shared:
        return ""
    return (
        f" {shared} of them are shared: the same computation as another method's trial (λ = 0 ≡ KD, "
        "η = λ = 0 ≡ NKD), trained once and copied (`equivalent_of`)."
    )


def _runtime_notes(section: pd.DataFrame) -> list[str]:
    """A note for each study whose trained trials ran on more than one device kind or precision (workers on
    different nodes, a resumed sweep on other hardware): their scores are not one computation's, and without
    ``fixed.deterministic`` not even one kernel's. Copies of shared trials and trials recorded before the
    device was stored are left out, and so are interrupted trials that finished no epoch; one that did counts,
    since the trial that resumed its checkpoint carries its epochs on (so on uniform hardware this note, like the
    rest of the document, does not depend on how the sweep was scheduled)."""
    lines = []
    stopped = interrupted(section) & (section["n_epochs"].fillna(0) == 0)
    trained = section[section["device"].notna() & section["equivalent_of"].isna() & ~stopped]
    for study, rows in trained.groupby("study", sort=True):
        kinds = rows.groupby([rows["device"], rows["precision"].fillna("?")]).size()
        if len(kinds) > 1:
            parts = ", ".join(f"{device} ({precision}) × {n}" for (device, precision), n in kinds.items())
            lines += [
                f"**Note**: the trials of {study} ran on {len(kinds)} device kinds or precisions ({parts}); "
                "compare its numbers with that in mind.",
                "",
            ]
    return lines


@contextlib.contextmanager
def _long_lived_objects_frozen():
    """Keep the objects alive on entry (imported libraries: a million of them) out of garbage collection.

    Loading and drawing make many short-lived containers, and each full collection would scan the
    whole heap again: 0.4 s of a 4.5 s report of 1,000 trials, and half of a re-render that draws
    nothing (``python -m bench.report``). :func:`gc.freeze` moves them to the permanent
    generation; processes forked to draw figures inherit that.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def write_report(
    storage: Storage,
    out: Path,
    name: str | None,
    command: str,
    reference: Path | None = None,
    workers: int | None = None,
    budget: int | None = None,
    focus: tuple[str, ...] | None = None,
    family: str | None = None,
) -> Path:
    """Write ``README.md``, ``runs.md``, ``trials.csv`` and ``figures/*.png`` into ``out``; returns the README path.

    ``workers``: processes drawing the figures (see :func:`harness.report.render.render`); ``budget``: the equal
    budget n (default: the smallest grid); ``focus``/``family``: the paired comparisons' focus methods (default
    the ALP family) and correction family (``report``, the default, or ``task``; :mod:`harness.report.paired`).
    A bad focus or family raises HarnessError before anything is written.
    """
    focus, family = paired.check_focus(focus), paired.check_family(family)
    with _long_lived_objects_frozen():
        return _write_report(storage, out, name, command, reference, workers, budget, focus, family)


def _write_report(
    storage: Storage,
    out: Path,
    name: str | None,
    command: str,
    reference: Path | None,
    workers: int | None,
    budget: int | None,
    focus: tuple[str, ...],
    family: str,
) -> Path:
    published = load_reference(reference) if reference is not None else []
    snapshot = load(storage, name)
    out.mkdir(parents=True, exist_ok=True)
    groups = seed_groups(confirmations(snapshot.frame, best_trials(snapshot.frame, ["task", "method"])))
    figures, equal = {}, None
    if not snapshot.frame.empty:
        equal = honest.equal_budget(snapshot, budget, command)
        extra = honest.figure_jobs(equal[1], honest.alpha_panels(snapshot.frame))
        figures = draw_all(snapshot, sections(snapshot.frame), groups, out, workers, extra)
    csv = snapshot.frame.drop(columns=["epochs", "alpha"]).to_csv(index=False).encode()
    atomic_write(out / "trials.csv", lambda stream: stream.write(csv), durable=False)
    text = markdown_report(snapshot, command, published, figures, budget, equal, focus, family).encode()
    atomic_write(out / "README.md", lambda stream: stream.write(text), durable=False)
    runs = runs_report(snapshot, command, figures).encode()
    atomic_write(out / "runs.md", lambda stream: stream.write(runs), durable=False)
    return out / "README.md"
