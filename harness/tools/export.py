"""The distilled student as a product: ``run_study.py export`` writes one trial's student, at its reported
epoch, as a Hugging Face folder that ``AutoModelForSequenceClassification.from_pretrained`` loads offline,
with a model card.

The weights come from the cache when the trial's student was kept (``fixed.keep_students``, default
``best``); otherwise the trial is re-trained deterministically from the config stored with it, for as many
epochs as its reported epoch (the learning-rate schedule still spans the study's epochs, so the weights are
those the trial had then). Either way the exported folder is re-scored on dev and compared with the
database; a difference of more than one example is an error.
"""

from __future__ import annotations

import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.spec.config import StudyConfig, grid_rank, parse_study
from harness.store.storage import Storage
from harness.sweep.studies import plugin_dirs
from harness.sweep.trial import grid_trials
from harness.util.errors import HarnessError
from harness.util.files import atomic_folder, atomic_write


@dataclass
class Chosen:
    """The trial to export and the trial that trained its weights (itself, or the one it is a copy of)."""

    trial: FrozenTrial
    trained: FrozenTrial
    study_name: str
    config: StudyConfig
    method: str


def choose_trial(
    storage: Storage, trial_id: int | None, name: str | None, task: str | None, method: str | None
) -> Chosen:
    """``trial_id``, or with ``None`` the best trial (highest value; no confirmation, no TPE duplicate) of
    the studies that match ``name``/``task``/``method``, which must all be of one task; ties as the report's best
    of grid: the first study, then grid order, :func:`~harness.spec.config.grid_rank`)."""
    if trial_id is not None:
        row = storage.result(trial_id)
        if row is None:
            raise HarnessError(f"no trial with trial_id {trial_id} in {storage.masked} (see: run_study.py status)")
        trial = storage.optuna.get_trial(trial_id)
        if trial.state != TrialState.COMPLETE:
            raise HarnessError(f"trial {trial_id} is {trial.state.name}; only a COMPLETE trial can be exported")
        study_name = row["study_name"]
    else:
        trial, study_name = _best(storage, name, task, method)
    attrs = trial.user_attrs
    config = parse_study(
        storage.result(trial._trial_id)["config"], source=f"trial {trial._trial_id}", base_dir=plugin_dirs(storage)
    )
    trained = trial
    if "equivalent_of" in attrs:
        trained = storage.optuna.get_trial(int(attrs["equivalent_of"]))
    return Chosen(trial, trained, study_name, config, attrs["method"])


def _best(storage: Storage, name: str | None, task: str | None, method: str | None) -> tuple[FrozenTrial, str]:
    matching = []
    for summary in optuna.get_all_study_summaries(storage.optuna, include_best_trial=False):
        study_name = summary.study_name
        file_name, task_name, method_name = (study_name.split("/") + ["", "", ""])[:3]
        if (
            (name is not None and file_name != name)
            or (task is not None and task_name.lower() != task.lower())
            or (method is not None and method_name != method)
        ):
            continue
        study = optuna.load_study(study_name=study_name, storage=storage.optuna)
        matching += [(t, study_name, task_name) for t in grid_trials(study, (TrialState.COMPLETE,))]
    wanted = ", ".join(f"{k} {v!r}" for k, v in (("name", name), ("task", task), ("method", method)) if v)
    if not matching:
        raise HarnessError(f"no complete trial{f' with {wanted}' if wanted else ''} in {storage.masked}")
    tasks = sorted({task_name for _, _, task_name in matching})
    if len(tasks) > 1:
        raise HarnessError(f"--best matches studies of several tasks ({', '.join(tasks)}); add --task")
    # ties as in the report's best of grid: the first study, then grid order (grid_rank)
    trial, study_name, _ = min(matching, key=lambda m: (-m[0].value, m[1], grid_rank(m[0].user_attrs), m[0].number))
    return trial, study_name


def export(
    storage: Storage,
    chosen: Chosen,
    out: Path,
    data_dir: Path | None,
    cache_dir: Path,
    log=print,
    predict: Path | None = None,
) -> dict[str, float]:
    """Write ``chosen``'s student to ``out`` (a new folder) with a model card, and with ``predict`` (a folder
    of GLUE test files) its leaderboard prediction files; return the dev check."""
    from harness.distill.experiment import Experiment

    if out.exists() and any(out.iterdir()):
        raise HarnessError(f"export folder {str(out)!r} exists and is not empty; choose another --out")
    if out.exists():
        out.rmdir()
    attrs = chosen.trained.user_attrs
    reported = int(chosen.trial.user_attrs.get("reported_epoch") or attrs.get("reported_epoch") or attrs["best_epoch"])
    point = {key: float(attrs[key]) for key in ("lr", "eta", "lambda")}
    seed = int(attrs["seed"])
    experiment = Experiment(chosen.config, data_dir, cache_dir)
    if predict is not None:  # the test files are checked before anything is trained or written
        from harness.data.loading import load_test, test_files

        for split, _ in test_files(experiment.task):
            load_test(experiment.task, split, predict)
    kept = Path(attrs["student_path"]) if attrs.get("student_path") else None
    if kept is not None and (kept / "config.json").is_file():
        log(f"trial {chosen.trial._trial_id}: copying its kept student ({kept})")
        with atomic_folder(out) as tmp:
            shutil.copytree(kept, tmp, dirs_exist_ok=True)
    else:
        log(
            f"trial {chosen.trial._trial_id}: its student was not kept (fixed.keep_students: "
            f"{chosen.config.fixed.keep_students}); re-training it deterministically from its stored config "
            f"({reported} epoch(s) of {chosen.config.fixed.epochs})"
        )
        experiment.run_trial(
            chosen.method, point, seed=seed, save_to=out, save_epoch="last", epochs=reported, desc="export"
        )
    check = rescore(experiment, out, chosen.trained, reported, log)
    write_card(storage, chosen, out, reported, check)
    if predict is not None:
        write_predictions(experiment, out, predict, out, log)
    return check


def rescore(experiment, folder: Path, trained: FrozenTrial, reported: int, log=print) -> dict[str, float]:
    """Score the exported folder on the first eval split with transformers' own loading; compare it with
    the stored metric of the reported epoch. More than one example's worth of difference is an error, or more
    than :data:`~harness.distill.device.GPU_TOLERANCE` for a trial that ran on a GPU without
    ``fixed.deterministic`` (:func:`~harness.distill.device.reproduction_tolerance`; said when it applies)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from harness.distill.device import reproduction_tolerance
    from harness.distill.train import evaluate

    model = AutoModelForSequenceClassification.from_pretrained(str(folder))
    task, split = experiment.task, experiment.task.eval_splits[0]
    data = experiment.evals[split]
    metrics, _, _ = evaluate(
        model,
        task,
        {split: data},
        experiment.config.fixed.eval_batch_size,
        experiment.pad_token_id,
        torch.device("cpu"),
    )
    new = metrics[split][task.primary_metric]
    stored = trained.user_attrs["epochs"][reported - 1]["metrics"][split][task.primary_metric]
    tolerance, why = reproduction_tolerance(
        trained.user_attrs.get("device"),
        experiment.config.fixed.deterministic,
        task.primary_metric,
        len(data),
    )
    if why:
        log(f"note: {why}")
    if abs(new - stored) > tolerance:
        raise HarnessError(
            f"the exported student scores {task.primary_metric} {new:.4f} on {split}, the database says "
            f"{stored:.4f} (epoch {reported}), beyond the tolerance {tolerance:.4g}; the folder {str(folder)!r} "
            "is written but does not reproduce it"
        )
    return {"split": split, "metric": task.primary_metric, "stored": stored, "exported": new, "tolerance": tolerance}


def write_card(storage: Storage, chosen: Chosen, out: Path, reported: int, check: dict) -> None:
    """The model card (``README.md``): what the student is, how it was chosen, how to get it again."""
    config, attrs = chosen.config, chosen.trained.user_attrs
    fixed = config.fixed
    teacher = optuna.load_study(study_name=chosen.study_name, storage=storage.optuna).user_attrs.get("teacher") or {}
    if fixed.selection == "holdout":
        protocol = (
            "**holdout**: the grid point and the epoch were chosen on a label-stratified holdout slice of the "
            "training file that no model trained on; the dev score below was read once, at the chosen epoch, "
            "so it is an unbiased estimate for this one trial"
        )
    else:
        protocol = (
            "**dev** (the paper's protocol): the grid point and the epoch were chosen on the dev set the score "
            "is reported on, so the dev score below is optimistic (a maximum over the grid, not an unbiased "
            "estimate)"
        )
    value = chosen.trial.value
    command = f"python run_study.py export {chosen.trial._trial_id} --storage {shlex.quote(storage.masked)} --out DIR"
    lines = [
        f"# {config.name}/{config.task}/{chosen.method}: a {config.student_layers}-layer student distilled "
        f"from {config.teacher}",
        "",
        "Exported by the ALP-KD harness (`run_study.py export`). Load it with "
        "`AutoModelForSequenceClassification.from_pretrained(this_folder)`.",
        "",
        "| | |",
        "|---|---|",
        f"| task | {config.task} (GLUE) |",
        f"| {check['split']} {check['metric']} (epoch {reported}) | {check['exported']:.4f} (database: "
        f"{check['stored']:.4f}) |",
        f"| selection value ({fixed.selection}) | {value:.4f} |",
        f"| method | {chosen.method} |",
        f"| lr / η / λ | {attrs['lr']:g} / {attrs['eta']:g} / {attrs['lambda']:g} (β = "
        f"{1 - attrs['eta'] - attrs['lambda']:g}) |",
        f"| seed | {attrs['seed']} |",
        f"| epochs | {reported} of {fixed.epochs}, batch size {fixed.batch_size}, max length "
        f"{fixed.max_seq_length}, {fixed.max_train_samples or 'all'} training examples |",
        f"| teacher | {config.teacher}, fine-tuned checkpoint {teacher.get('key', '?')}, dev "
        f"{teacher.get('value', float('nan')):.4f} |",
        f"| trial | trial_id {chosen.trial._trial_id} (number {chosen.trial.number}) of study "
        f"`{chosen.study_name}`"
        + (
            f", a copy of trial_id {chosen.trained._trial_id} (the same computation)"
            if chosen.trained is not chosen.trial
            else ""
        )
        + " |",
        "",
        f"Selection protocol: {protocol}.",
        "",
        "Reproduce: `" + command + "` (re-trains it when the weights are not kept), or "
        f"`python run_study.py reproduce {chosen.trained._trial_id}` to re-run the trial itself.",
        "",
    ]
    atomic_write(out / "README.md", lambda stream: stream.write("\n".join(lines).encode()), durable=False)


def write_predictions(experiment, folder: Path, tests: Path, out: Path, log=print) -> list[Path]:
    """GLUE leaderboard files of the exported student for the test files under ``tests``: ``<TASK>.tsv``
    (MNLI: ``MNLI-m.tsv``, ``MNLI-mm.tsv``), ``index<TAB>prediction`` rows, classes written as the official
    files write them, STS-B scores clipped to [0, 5]."""
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification

    from harness.data.encoding import encode_split
    from harness.data.loading import STS_B_RANGE, load_test, prediction_labels, test_files
    from harness.distill.train import predict

    task = experiment.task
    model = AutoModelForSequenceClassification.from_pretrained(str(folder))
    labels = prediction_labels(task)
    written = []
    for split, name in test_files(task):
        index, data = load_test(task, split, tests)
        encoded = encode_split(data, experiment.tokenizer, experiment.config.fixed.max_seq_length)
        logits, _ = predict(
            model, encoded, experiment.config.fixed.eval_batch_size, experiment.pad_token_id, torch.device("cpu")
        )
        if labels is None:
            shown = [f"{v:.3f}" for v in np.clip(logits[:, 0], *STS_B_RANGE)]
        else:
            shown = [labels[k] for k in logits.argmax(-1)]
        text = "index\tprediction\n" + "".join(f"{i}\t{p}\n" for i, p in zip(index, shown))
        path = out / f"{name}.tsv"
        atomic_write(path, lambda stream, text=text: stream.write(text.encode()), durable=False)
        log(f"  {path}: {len(index)} predictions for {data.source}")
        written.append(path)
    return written
