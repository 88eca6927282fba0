"""The report's data: every harness study's trials flattened into one DataFrame, read once from the database.

:func:`load` gives one row per trial with the metrics of its *reported* epoch as ``<split>.<metric>``
columns, the stored eval labels and the predictions of the best grid trials. A database still being
written is fine: RUNNING trials are counted, never scored. Every table and figure is built from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import optuna
import pandas as pd

from harness.spec.config import grid_rank
from harness.spec.methods import METHODS, declare_row
from harness.spec.tasks import TASKS
from harness.store.storage import Storage

COLUMNS = [
    "study",
    "study_file",
    "task",
    "method",
    "number",
    "state",
    "value",
    "point",
    "lr",
    "eta",
    "lambda",
    "seed",
    "confirmation",
    "device",
    "precision",
    "worker",
    "seconds",
    "best_epoch",
    "n_epochs",
    "fail_reason",
    "datetime_start",
    "datetime_complete",
    "trial_id",
    "selection",
    "reported_epoch",
    "score",
    "equivalent_of",
    "alpha_entropy",
    "alpha_top",
    "alpha_switch",
]


@dataclass(frozen=True)
class Snapshot:
    """What the report knows: study user attributes by study name, one row per trial, the stored
    eval labels (study → split → labels) and the stored eval logits of the best grid trial of every
    (task, method) and of every complete confirmation run (trial_id → split → (epoch, logits))."""

    studies: dict[str, dict]
    frame: pd.DataFrame
    labels: dict = field(default_factory=dict)
    predictions: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- loading
def load(storage: Storage, name: str | None = None) -> Snapshot:
    """Read the harness studies (``<file>/<TASK>/<method>``; optionally only study file ``name``)."""
    studies, rows = {}, []
    for frozen in sorted(storage.optuna.get_all_studies(), key=lambda s: s.study_name):
        parts = frozen.study_name.split("/")
        if len(parts) != 3 or (name is not None and parts[0] != name):
            continue
        attrs = dict(frozen.user_attrs)
        attrs.setdefault("task", parts[1])
        attrs.setdefault("method", parts[2])
        if attrs["method"] not in METHODS and isinstance(attrs.get("method_spec"), dict):
            declare_row(attrs["method"], attrs["method_spec"])  # a plug-in's method, known from its stored declaration
        if attrs["task"] not in TASKS or attrs["method"] not in METHODS:
            continue  # not a harness study
        label = attrs.get("label") or (attrs.get("config") or {}).get("label")
        if label:  # a variant: its row is "method [label]", beside the other study files' rows
            attrs["base_method"] = attrs["method"]
            attrs["method"] = declare_row(f"{attrs['method']} [{label}]", METHODS[attrs["method"]]).key
        attrs["study_file"] = parts[0]
        studies[frozen.study_name] = attrs
        for trial in storage.optuna.get_all_trials(frozen._study_id, deepcopy=False):
            if "duplicate_of" in trial.user_attrs:
                continue  # a TPE proposal of an evaluated point: told the earlier value, never trained
            rows.append(_trial_row(frozen.study_name, attrs, trial))
    frame = pd.DataFrame(rows)
    extra = sorted(set(frame.columns) - set(COLUMNS) - {"epochs", "alpha"})
    frame = frame.reindex(columns=[*COLUMNS, *extra, "alpha", "epochs"])
    frame = frame.sort_values(["study", "number"], kind="stable").reset_index(drop=True)
    frame["confirmation"] = frame["confirmation"].astype(bool)
    for column in ("value", "lr", "eta", "lambda", "seconds", "score", "alpha_entropy"):
        frame[column] = pd.to_numeric(frame[column]).astype(float)
    for column in ("number", "seed", "best_epoch", "n_epochs", "trial_id", "reported_epoch", "equivalent_of"):
        frame[column] = frame[column].astype("Int64")
    if frame.empty:
        return Snapshot(studies, frame)
    picked = best_trials(frame, ["task", "method"])["trial_id"].dropna()
    confirmed = frame.loc[frame["confirmation"] & (frame["state"] == "COMPLETE"), "trial_id"].dropna()
    ids = [int(t) for t in picked] + [int(t) for t in confirmed]  # seeds too: a seed run may be the majority class
    return Snapshot(studies, frame, storage.labels(), storage.predictions(ids))


def _trial_row(study: str, attrs: dict, trial: optuna.trial.FrozenTrial) -> dict:
    """One trial; its metrics are those of its *reported* epoch (the selected one; a confirmation under
    ``selection: dev`` reports its last), ``score`` the primary metric on dev there."""
    user = trial.user_attrs
    epochs = list(user.get("epochs") or [])
    best = _best_epoch(epochs, user.get("reported_epoch", user.get("best_epoch")))
    spec = TASKS[attrs["task"]]
    score = ((best.get("metrics") or {}).get(spec.eval_splits[0]) or {}).get(spec.primary_metric)
    seconds = user.get("seconds")
    if seconds is None and epochs:  # failed or still running: the epochs it finished
        seconds = sum(float(e.get("seconds") or 0.0) for e in epochs)
    row = {
        "study": study,
        "study_file": attrs["study_file"],
        "task": attrs["task"],
        "method": attrs["method"],
        "number": trial.number,
        "state": trial.state.name,
        "value": trial.value,
        "point": user.get("point"),
        "lr": user.get("lr"),
        "eta": user.get("eta"),
        "lambda": user.get("lambda"),
        "seed": user.get("seed"),
        "confirmation": bool(user.get("confirmation", False)),
        "device": user.get("device"),
        "precision": user.get("precision"),
        "worker": user.get("worker"),
        "seconds": seconds,
        "best_epoch": best.get("epoch"),
        "n_epochs": len(epochs),
        "fail_reason": user.get("fail_reason"),
        "datetime_start": trial.datetime_start.isoformat() if trial.datetime_start else None,
        "datetime_complete": trial.datetime_complete.isoformat() if trial.datetime_complete else None,
        "trial_id": trial._trial_id,
        "selection": ((attrs.get("config") or {}).get("fixed") or {}).get("selection", "dev"),
        "reported_epoch": best.get("epoch"),
        "score": score,
        "equivalent_of": user.get("equivalent_of"),
        "alpha_entropy": best.get("alpha_entropy"),
        "alpha_top": _joined(best.get("alpha_top")),
        "alpha_switch": _joined(best.get("alpha_switch")),
        "alpha": best.get("alpha"),
        "epochs": epochs,
    }
    for split, metrics in (best.get("metrics") or {}).items():
        for metric, value in metrics.items():
            row[f"{split}.{metric}"] = value
    for term, value in (best.get("losses") or {}).items():
        row[f"loss.{term}"] = value
    return row


def _joined(values) -> str | None:
    """A per-student-layer list as text (``0.98,0.62``) so that ``trials.csv`` keeps one cell per trial."""
    return None if not values else ",".join(f"{float(v):.4g}" for v in values)


def _best_epoch(epochs: list[dict], number: int | None) -> dict:
    """The recorded best epoch; for a trial without one (pruned, running) its best so far."""
    if number is not None:
        return next((e for e in epochs if e.get("epoch") == number), {})
    scored = [e for e in epochs if e.get("value") is not None]
    return max(scored, key=lambda e: e["value"]) if scored else {}


def trials_frame(storage: Storage, name: str | None = None) -> pd.DataFrame:
    """One row per trial of every harness study (optionally only those of study file ``name``)."""
    return load(storage, name).frame


# --------------------------------------------------------------------------- selection
def grid_done(frame: pd.DataFrame) -> pd.DataFrame:
    """COMPLETE grid trials (confirmation re-runs left out)."""
    return frame[(frame["state"] == "COMPLETE") & ~frame["confirmation"]]


def reported_score(frame: pd.DataFrame) -> pd.Series:
    """The dev score each trial reports: the primary metric at its reported epoch (its value where no
    epoch record says)."""
    return frame["score"].fillna(frame["value"])


# --------------------------------------------------------------------------- the one tie-break
def grid_order(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` in **grid order**, the one tie-break of every selection in the report: by study name, then
    :func:`harness.spec.config.grid_rank` (ascending lr, η, λ, the method's extra searched value, the seed).

    Grid order depends on the results alone (the points and seeds that were run), not on the order in which
    workers ran them, so a sweep on a cluster and one local worker select the same trial. Only two COMPLETE
    trials of the same point and seed (the same computation run twice) fall back to the trial number.
    """
    if frame.empty:
        return frame
    rows = frame[["study", "lr", "eta", "lambda", "point", "seed", "number"]].to_dict("records")
    keys = [(row["study"], grid_rank(row), row["number"]) for row in rows]
    return frame.iloc[sorted(range(len(keys)), key=keys.__getitem__)]


def ranked(frame: pd.DataFrame, by: str = "value") -> pd.DataFrame:
    """``frame`` from the highest ``by`` down, equal values in :func:`grid_order`."""
    return grid_order(frame).sort_values(by, ascending=False, kind="stable")


def best_trials(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """The best COMPLETE grid trial per group of ``by`` (ties: :func:`grid_order`), indexed by ``by``."""
    return ranked(grid_done(frame)).drop_duplicates(by).set_index(by, drop=False).sort_index()


# --------------------------------------------------------------------------- operations, not results
INTERRUPTED = "interrupted"  # sweep/driver.py: Ctrl-C, SIGTERM, a SLURM preemption or time limit
WORKER_DIED = "worker died"  # sweep/settle.py: how the trials of a killed worker (or a lost claim) are failed


def interrupted(frame: pd.DataFrame) -> pd.Series:
    """FAIL trials that the sweep's operation ended, not their point: interrupted (Ctrl-C, SIGTERM, a SLURM
    preemption or time limit) or of a worker that died (killed, its claim taken over), **whose point another
    trial then finished** (COMPLETE or PRUNED, same study, point, seed and kind), resuming from the checkpoint.
    They are not results: the main document leaves them out, ``runs.md`` counts them. A stopped trial whose
    point was not finished stays a failure in the main document: a point given up after its worker was killed
    again and again (say, by the out-of-memory killer) is a result, and so is a sweep stopped half-way."""
    reason = frame["fail_reason"].fillna("").astype(str)
    stopped = (frame["state"] == "FAIL") & ((reason == INTERRUPTED) | reason.str.startswith(WORKER_DIED))
    if not stopped.any():
        return stopped

    def keys(rows: pd.DataFrame) -> pd.Series:
        parts = [rows[c].astype(object).where(rows[c].notna(), None).astype(str) for c in ("study", "point", "seed")]
        return parts[0] + "|" + parts[1] + "|" + parts[2] + "|" + rows["confirmation"].astype(str)

    finished = set(keys(frame[frame["state"].isin(["COMPLETE", "PRUNED"])]))
    return stopped & keys(frame).isin(finished)


def results(frame: pd.DataFrame) -> pd.DataFrame:
    """The trials that are results: every trial but the :func:`interrupted` ones."""
    return frame[~interrupted(frame)]


# --------------------------------------------------------------------------- per study
def best_per_study(frame: pd.DataFrame) -> pd.DataFrame:
    """Per study: the best grid trial, trial counts, CPU/GPU hours and time to best.

    Counts are of grid trials (``seeds``: COMPLETE confirmation trials); ``failed`` counts real failures,
    ``interrupted`` the :func:`interrupted` trials. Hours come from each trial's wall time (``seconds``, or
    its finished epochs while it runs) on a ``cuda:`` device (GPU) or any other (CPU). Time to best: the
    seconds of every trial numbered up to the best one (in the order this sweep happened to run them).
    """
    state, grid = frame["state"], ~frame["confirmation"]
    stopped = interrupted(frame)
    seconds = frame["seconds"].fillna(0.0).astype(float)
    gpu = frame["device"].fillna("").astype(str).str.startswith("cuda")
    flags = pd.DataFrame(
        {
            "study": frame["study"],
            "complete": grid & (state == "COMPLETE"),
            "failed": grid & (state == "FAIL") & ~stopped,
            "interrupted": stopped,
            "pruned": grid & (state == "PRUNED"),
            "running": grid & state.isin(["RUNNING", "WAITING"]),
            "seeds": ~grid & (state == "COMPLETE"),
            "cpu_hours": seconds.where(~gpu, 0.0) / 3600,
            "gpu_hours": seconds.where(gpu, 0.0) / 3600,
            "hours": seconds / 3600,
        }
    )
    summary = flags.groupby("study", sort=True).sum()
    counts = ["complete", "failed", "interrupted", "pruned", "running", "seeds"]
    summary[counts] = summary[counts].astype(int)
    best = best_trials(frame, ["study"]).set_index("study")
    limit = frame["study"].map(best["number"])
    summary["time_to_best"] = seconds.where(frame["number"] <= limit, 0.0).groupby(frame["study"]).sum()
    summary.loc[~summary.index.isin(best.index), "time_to_best"] = math.nan
    first = frame.groupby("study", sort=True)[["study_file", "task", "method"]].first()
    best = best.assign(score=reported_score(best))
    picked = best[["value", "score", "lr", "eta", "lambda", "point", "number"]].rename(columns={"lambda": "lam"})
    return first.join(summary).join(picked).reset_index()


def sections(frame: pd.DataFrame) -> list[tuple[tuple[str, str], pd.DataFrame]]:
    """The report's sections: ``((study file, task), its rows)``, by study file, then in GLUE's task order."""
    order = {t: i for i, t in enumerate(TASKS)}
    keys = sorted({(f, t) for f, t in zip(frame["study_file"], frame["task"])}, key=lambda k: (k[0], order[k[1]]))
    return [(key, frame[(frame["study_file"] == key[0]) & (frame["task"] == key[1])]) for key in keys]


def number_cell(value, fmt: str, scale: float = 1.0) -> str:
    """A table cell: ``scale * value`` in ``fmt``, or "–" for a missing value."""
    return "–" if value is None or pd.isna(value) else format(scale * value, fmt)


def task_labels(snapshot: Snapshot, task: str) -> dict:
    """The eval labels stored with the first study of ``task`` that has them (``{}`` if none)."""
    for study in sorted(snapshot.studies):
        if snapshot.studies[study]["task"] == task and study in snapshot.labels:
            return snapshot.labels[study]
    return {}
