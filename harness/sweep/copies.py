"""Trials that copy a shared run's outcome (:mod:`harness.sweep.sharing`): their attributes, results row and
predictions, created so that a kill in between never leaves a half-made copy that counts."""

from __future__ import annotations

import datetime

import optuna
from optuna.trial import TrialState

from harness.spec.config import StudyConfig
from harness.store.storage import Storage
from harness.sweep.trial import resolved_config

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
COPIED = (
    "point",
    "lr",
    "eta",
    "lambda",
    "seed",
    "confirmation",
    "device",
    "precision",
    "compiled",
    "threads",
    "versions",
    "teacher_key",
    "data_sha256",
    "epochs",
    "best_epoch",
    "reported_epoch",
    "fail_reason",
)


def copied_attrs(source: optuna.trial.FrozenTrial, method: str, me: str) -> dict:
    """The user attributes of a trial of ``method`` that copies ``source``."""
    attrs = {key: source.user_attrs[key] for key in COPIED if key in source.user_attrs}
    attrs.update(
        method=method,
        worker=me,
        equivalent_of=source._trial_id,
        seconds=0.0,
        shared_seconds=source.user_attrs.get("seconds"),
    )
    return attrs


def adopt(
    storage: Storage,
    config: StudyConfig,
    me: str,
    study: optuna.Study,
    method: str,
    claim,
    distributions: dict,
    source: optuna.trial.FrozenTrial,
) -> int:
    """A finished trial of ``study`` that copies ``source``'s outcome, created in one write."""
    attrs = {**copied_attrs(source, method, me), "claim": claim.key}
    if config.search.extra:  # an extra axis: the copy keeps its own point and value, not the owner's
        for name in config.search.extra:
            attrs.pop(name, None)
        attrs.update(point=claim.key, **{k: claim.params[k] for k in config.search.extra if k in claim.params})
    now = datetime.datetime.now()
    template = optuna.trial.FrozenTrial(
        number=-1,
        state=source.state,
        value=source.value if source.state == TrialState.COMPLETE else None,
        datetime_start=now,
        datetime_complete=now,
        params={name: claim.params[name] for name in distributions},
        distributions=distributions,
        user_attrs=attrs,
        system_attrs={},
        intermediate_values=dict(source.intermediate_values),
        trial_id=-1,
    )
    trial_id = storage.optuna.create_new_trial(study._study_id, template_trial=template)
    record_copy(storage, config, me, study, method, trial_id, source)
    return trial_id


def copy_into(
    storage: Storage,
    config: StudyConfig,
    me: str,
    study: optuna.Study,
    method: str,
    trial: optuna.Trial,
    source: optuna.trial.FrozenTrial,
) -> TrialState:
    """Finish an asked (TPE) trial as a copy of ``source``."""
    for key, value in copied_attrs(source, method, me).items():
        trial.set_user_attr(key, value)
    for epoch, value in sorted(source.intermediate_values.items()):
        trial.report(value, epoch)
    record_copy(storage, config, me, study, method, trial._trial_id, source)
    study.tell(trial, source.value if source.state == TrialState.COMPLETE else None, state=source.state)
    return source.state


def record_copy(
    storage: Storage,
    config: StudyConfig,
    me: str,
    study: optuna.Study,
    method: str,
    trial_id: int,
    source: optuna.trial.FrozenTrial,
) -> None:
    """Our results row and the stored predictions of a trial that copies ``source``."""
    row = storage.result(source._trial_id) or {}
    copy = storage.optuna.get_trial(trial_id)
    number = copy.number
    seed = source.user_attrs.get("seed", config.fixed.seed)
    storage.record_result(
        trial_id,
        study_name=study.study_name,
        number=number,
        method=method,
        point_key=copy.user_attrs.get("point", source.user_attrs["point"]),
        state=source.state.name,
        value=source.value,
        seed=seed,
        config=resolved_config(config, method),
        epochs=row.get("epochs"),
        seconds=0.0,
        device=row.get("device"),
        versions=row.get("versions"),
        teacher_key=row.get("teacher_key"),
        data_sha256=row.get("data_sha256"),
        worker=me,
    )
    stored = storage.predictions([source._trial_id]).get(source._trial_id)
    if stored:
        epoch = next(iter(stored.values()))[0]
        storage.save_predictions(trial_id, epoch, {split: array for split, (_, array) in stored.items()})


def finished_trial(storage: Storage, study_name: str, key: str) -> optuna.trial.FrozenTrial | None:
    """The latest trained (not copied) COMPLETE or PRUNED trial of the point ``key`` of a study."""
    study_id = storage.optuna.get_study_id_from_name(study_name)
    found = [
        t
        for t in storage.optuna.get_all_trials(study_id, deepcopy=False, states=FINISHED)
        if t.user_attrs.get("claim", t.user_attrs.get("point")) == key
        and "equivalent_of" not in t.user_attrs
        and "duplicate_of" not in t.user_attrs
    ]
    return max(found, key=lambda t: t.number) if found else None
