"""One Optuna study per (study file, method): opened or created with its fingerprint, its pruner, its teacher.

A study's user attributes hold the study file's fingerprint and config (a name reused with another set-up
is refused) and the fine-tuned teacher it was run with (its checkpoint key, dev scores and the data files'
hashes, the sha256 of its fine-tuned weights and of the teacher-output cache its students read): a worker whose
teacher recipe or data differ is refused before any fine-tuning, one whose fine-tuned weights or cached outputs
differ (fine-tuned or computed again on another node) before any training.
A plug-in method's study also holds its declaration (``method_spec``, which a report reads instead of
importing the plug-in) and its plug-in module, file and the file's sha256 (``plugin``); a worker whose
plug-in file has another sha256 is refused the same way (:func:`check_plugin`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import optuna

from harness.spec.config import StudyConfig, grid_points, uses_live_teacher
from harness.spec.methods import MethodSpec, get_method
from harness.store.storage import Storage
from harness.util.errors import HarnessError

if TYPE_CHECKING:  # annotations only: opening a study (reports, benchmarks) needs no torch
    from harness.distill.experiment import Experiment


def open_study(storage: Storage, config: StudyConfig, method: str) -> optuna.Study:
    """Create or load the method's study; refuse a name reused with a different set-up."""
    name = config.study_name(method)
    study = optuna.create_study(
        study_name=name, storage=storage.optuna, direction="maximize", load_if_exists=True, pruner=pruner_for(config)
    )
    want = config.fingerprint(method)
    have = study.user_attrs.get("fingerprint")
    if have is None:
        points = grid_points(config, method)
        study.set_user_attr("fingerprint", want)
        study.set_user_attr("config", config.model_dump(mode="json", by_alias=True))
        study.set_user_attr("method", method)
        study.set_user_attr("task", config.task)
        study.set_user_attr("sampler", config.search.sampler)
        study.set_user_attr("grid_size", len(points))
        spec = get_method(method)
        study.set_user_attr("method_spec", spec.declaration())
        if config.label is not None:
            study.set_user_attr("label", config.label)
        if spec.plugin is not None:
            study.set_user_attr("plugin", plugin_of(spec))
    elif have != want:
        raise HarnessError(
            f"study '{name}' already exists in {storage.masked} with a different set-up "
            f"(fingerprint {have} vs {want}); use another 'name' in the study file or another --storage"
        )
    check_plugin(study, get_method(method))
    return study


def plugin_of(spec: MethodSpec) -> dict | None:
    """``{"module", "file", "sha256"}`` of the plug-in that registered ``spec`` (None for a built-in)."""
    if spec.plugin is None:
        return None
    return {"module": spec.plugin, "file": spec.plugin_file, "sha256": spec.plugin_sha256}


def plugin_dirs(storage: Storage) -> list[Path]:
    """The folders of the plug-in files that the studies in ``storage`` were run with, for reading their study
    files back from the database (``confirm``, ``reproduce``, ``export``): plug-ins found beside a study file."""
    dirs = []
    for summary in optuna.get_all_study_summaries(storage.optuna, include_best_trial=False):
        file = (summary.user_attrs.get("plugin") or {}).get("file")
        if file and Path(file).parent not in dirs:
            dirs.append(Path(file).parent)
    return dirs


def check_plugin(study: optuna.Study, spec: MethodSpec) -> None:
    """Refuse to continue a study whose plug-in file changed (another sha256) since the study was made."""
    stored = study.user_attrs.get("plugin")
    now = plugin_of(spec)
    if stored is None and now is None:
        return
    if stored is None or now is None or stored["sha256"] != now["sha256"]:
        was = f"{stored['module']} sha256 {str(stored['sha256'])[:12]}" if stored else "the built-in method"
        has = f"{now['module']} ({now['file']}) sha256 {str(now['sha256'])[:12]}" if now else "the built-in method"
        raise HarnessError(
            f"study '{study.study_name}' was run with plug-in {was}, this run would use {has}; restore the plug-in "
            "file or use another 'name' in the study file"
        )


def pruner_for(config: StudyConfig) -> optuna.pruners.BasePruner:
    """Epoch-level pruning, applied identically to every method of the study file.

    ``median``: stop a trial whose epoch score is below the median of earlier trials at the same
    epoch (after 2 finished trials, from epoch 1 on). ``halving``: asynchronous successive halving
    with one epoch as the minimum resource.
    """
    if config.search.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if config.search.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1)
    return optuna.pruners.NopPruner()


def check_teacher(study: optuna.Study, experiment: Experiment) -> None:
    """Refuse to continue a study with another teacher checkpoint or other data files."""
    key = experiment.teacher.key()
    stored = study.user_attrs.get("teacher")
    if stored is not None and stored["key"] != key:
        raise HarnessError(
            f"study '{study.study_name}' was run with teacher checkpoint {stored['key']} (data "
            f"{_short(stored.get('data'))}), this run would use {key} (data "
            f"{_short(experiment.data_hashes)}); use the same GLUE files (--data-dir) and study file"
        )


def record_teacher(study: optuna.Study, experiment: Experiment) -> None:
    """Store the fine-tuned teacher (checkpoint id, sha256 of its weights and, for a method that reads them, of its
    output cache; dev scores, data hashes) with a new study; refuse a worker whose fine-tuned weights or teacher
    outputs differ from the study's (a teacher fine-tuned again, or its outputs computed again, on another node,
    with another GPU or library version, would silently mix two teachers in one sweep)."""
    check_teacher(study, experiment)
    teacher = experiment.teacher.prepare()
    found = {"weights": experiment.teacher.prepared_weights_sha256()}
    method = study.user_attrs.get("method")
    if method is not None and get_method(method).searches_eta and not uses_live_teacher(experiment.config, method):
        found["outputs"] = experiment.teacher.outputs_sha256()
    stored = study.user_attrs.get("teacher")
    if stored is None:
        study.set_user_attr(
            "teacher",
            {
                "key": teacher.key,
                "value": teacher.value,
                "metrics": teacher.dev_metrics,
                "data": experiment.data_hashes,
                **found,
            },
        )
        return
    for name, sha in found.items():
        if stored.get(name) is not None and stored[name] != sha:
            what, where = (
                ("weights", f"fine-tuned teacher in {teacher.path}")
                if name == "weights"
                else ("outputs (cache)", f"teacher-output cache in {experiment.teacher.outputs_dir()}")
            )
            raise HarnessError(
                f"study '{study.study_name}' was run with teacher {what} sha256 {stored[name][:16]}, this worker's "
                f"{where} has {sha[:16]}; share one --cache-dir between all workers (or run 'prepare' once and "
                "copy its cache) so that every worker uses the same teacher"
            )
    missing = {name: sha for name, sha in found.items() if stored.get(name) is None}
    if missing:  # a study from before these were recorded
        study.set_user_attr("teacher", {**stored, **missing})


def _short(hashes: dict | None) -> str:
    if not hashes:
        return "unknown"
    return ", ".join(f"{split} {digest[:8] if digest else 'hub'}" for split, digest in hashes.items())
