"""One trial: what is stored with it, running it through the :class:`~harness.distill.experiment.Experiment`,
and telling Optuna and our results table its outcome (value, reported epoch, predictions)."""

from __future__ import annotations

import platform
import shutil
import time
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from harness.distill.device import pick_device, reproduction_tolerance, runtime_info
from harness.spec.config import StudyConfig, best_first, extra_values, point_key
from harness.spec.methods import get_method
from harness.store.claims import worker_id
from harness.store.storage import Storage
from harness.sweep.studies import plugin_dirs, plugin_of
from harness.util.errors import HarnessError
from harness.util.hashing import fingerprint
from harness.util.signals import ClaimLost


def resolved_config(config: StudyConfig, method: str) -> dict:
    """The study file as one trial of ``method`` ran it (what ``reproduce`` reads back)."""
    resolved = config.model_dump(mode="json", by_alias=True)
    resolved["methods"] = [method]
    return resolved


def _trial_record(config: StudyConfig, method: str, point: dict, seed: int, device: torch.device | None = None) -> dict:
    """What is stored with every trial: enough to reproduce it from the database alone."""
    return {
        "method": method,
        "point": point_key(point),
        "lr": point["lr"],
        "eta": point["eta"],
        "lambda": point["lambda"],
        **extra_values(point),  # the method's extra axis (search.extra), if any
        "seed": seed,
        "worker": worker_id(),
        **runtime_info(device or pick_device(), config.fixed.compile, config.fixed.precision),
        "versions": {"torch": torch.__version__, "optuna": optuna.__version__, "python": platform.python_version()},
        "config": resolved_config(config, method),
    }


def stop_after(trial: optuna.Trial, epoch: int, epochs: int) -> bool:
    """Report nothing, decide: should the pruner stop ``trial`` after ``epoch`` of ``epochs``?

    Never after the last epoch: the trial's cost is paid by then, and pruning it would only throw
    its finished result away.
    """
    return epoch < epochs and trial.should_prune()


def _epoch_reporter(trial: optuna.Trial, storage: Storage, epochs: int, prune: bool = True, board=None):
    records: list[dict] = []

    def on_epoch(record: dict) -> None:
        records.append(record)
        trial.set_user_attr("epochs", records)
        storage.record_result(trial._trial_id, epochs=records)
        if board is not None:
            board.epoch(record)
        trial.report(record["value"], record["epoch"])
        if prune and stop_after(trial, record["epoch"], epochs):
            raise optuna.TrialPruned()

    return on_epoch


class TrialRunner:
    """Runs single trials of one study file's methods in this process (the experiment is built by the caller)."""

    def __init__(
        self,
        config: StudyConfig,
        storage: Storage,
        experiment,
        cache_dir: Path,
        log=print,
        tensorboard: Path | None = None,
    ):
        self.config, self.storage, self.experiment, self.cache_dir, self.log = (
            config,
            storage,
            experiment,
            cache_dir,
            log,
        )
        self.tensorboard = tensorboard  # a folder: TensorBoard event files of every trial (harness.sweep.tensorboard)

    def folder(self, study: optuna.Study) -> str:
        """Where a study's epoch checkpoints and saved students live: keyed by everything that
        determines the trials (set-up fingerprint, teacher checkpoint, storage), so a checkpoint is
        never resumed into a different run."""
        return fingerprint(
            {
                "storage": self.storage.url,
                "study": study.study_name,
                "fingerprint": study.user_attrs.get("fingerprint"),
                "teacher": self.experiment.teacher.prepared.key if self.experiment.teacher.prepared else None,
            }
        )

    def checkpoint_path(self, study: optuna.Study, key: str) -> Path:
        return self.cache_dir / "checkpoints" / self.folder(study) / f"{key}.pt"

    def run(
        self,
        study: optuna.Study,
        trial: optuna.Trial,
        method: str,
        point: dict,
        checkpoint: Path | None,
        seed: int | None = None,
    ) -> TrialState:
        """Run one trial (:meth:`start`, the training, :meth:`complete`); ``seed`` other than ``None`` makes it a
        confirmation of ``point``."""
        confirmation = seed is not None
        seed = self.config.fixed.seed if seed is None else seed
        record = self.start(study, trial, method, point, seed, confirmation)
        started = time.perf_counter()
        desc = f"{method} {point_key(point)}" + (f" seed {seed}" if confirmation else "")
        # a confirmation under dev selection reports its last epoch (no choice made on dev); all others the best
        reports_last = confirmation and self.experiment.select_split == self.experiment.task.eval_splits[0]
        save_to = self._student_folder(study, point, seed, confirmation)
        board = None
        try:
            board = self._board(study, method, record, confirmation)  # an unwritable DIR fails the trial, recorded
            reporter = _epoch_reporter(
                trial, self.storage, self.config.fixed.epochs, prune=not confirmation, board=board
            )
            history = self.experiment.run_trial(
                method,
                point,
                seed=seed,
                checkpoint=checkpoint,
                save_to=save_to,
                save_epoch="last" if reports_last else "best",
                on_epoch=reporter,
                desc=desc,
            )
        except optuna.TrialPruned:
            self.finish(study, trial, TrialState.PRUNED, None, time.perf_counter() - started)
            self.log(f"  trial {trial.number} {desc}: pruned")
            _drop(checkpoint)
            return TrialState.PRUNED
        except HarnessError as error:  # the set-up, not the point (a full disk, a bad file): the run stops
            trial.set_user_attr("fail_reason", str(error).splitlines()[0][:500])
            self.finish(study, trial, TrialState.FAIL, None, time.perf_counter() - started)
            raise
        except ClaimLost:  # not this worker's trial any more: nothing is written, the checkpoint is the new owner's
            raise
        except Exception as error:  # noqa: BLE001 - recorded as the trial's failure reason
            reason = f"{type(error).__name__}: {error}".splitlines()[0][:500]
            trial.set_user_attr("fail_reason", reason)
            self.finish(study, trial, TrialState.FAIL, None, time.perf_counter() - started)
            self.log(f"  trial {trial.number} {desc}: FAILED ({reason})")
            _drop(checkpoint)
            return TrialState.FAIL
        finally:
            if board is not None:
                board.close()
        return self.complete(
            study, trial, history, reports_last, save_to, checkpoint, time.perf_counter() - started, desc
        )

    def start(self, study: optuna.Study, trial: optuna.Trial, method: str, point: dict, seed: int, confirmation: bool):
        """The trial's record (point, seed, device, versions, teacher, data) stored as its user attributes and as a
        RUNNING row of the results table, before any training."""
        record = _trial_record(self.config, method, point, seed, getattr(self.experiment, "device", None))
        record["confirmation"] = confirmation
        record.update(teacher_key=self.experiment.teacher.prepared.key, data_sha256=self.experiment.data_hashes)
        plugin = plugin_of(get_method(method))
        if plugin is not None:
            record["plugin"] = plugin  # the plug-in's module, file and the file's sha256
        for key, value in record.items():
            if key != "config":
                trial.set_user_attr(key, value)
        self.storage.record_result(
            trial._trial_id,
            study_name=study.study_name,
            number=trial.number,
            method=method,
            point_key=record["point"],
            state="RUNNING",
            seed=seed,
            config=record["config"],
            device=record["device"],
            versions=record["versions"],
            teacher_key=record["teacher_key"],
            data_sha256=record["data_sha256"],
            worker=record["worker"],
        )
        return record

    def complete(
        self,
        study: optuna.Study,
        trial: optuna.Trial,
        history,
        reports_last: bool,
        save_to: Path | None,
        checkpoint: Path | None,
        seconds: float,
        desc: str,
    ) -> TrialState:
        """Store a trained trial: its reported epoch (the last for a confirmation under dev selection, else the
        best), that epoch's eval predictions, its value, where its student is kept; COMPLETE; its checkpoint
        dropped."""
        trial.set_user_attr("best_epoch", history.best_epoch)
        if history.resumed_from:
            trial.set_user_attr("resumed_from_epoch", history.resumed_from)
        reported = history.epochs[-1]["epoch"] if reports_last else history.best_epoch
        trial.set_user_attr("reported_epoch", reported)
        if reported in history.predictions:
            self.storage.save_predictions(trial._trial_id, reported, history.predictions[reported])
        value = history.best_value if reported == history.best_epoch else history.epochs[-1]["value"]
        if save_to is not None:
            trial.set_user_attr("student_path", str(save_to))
        self.finish(study, trial, TrialState.COMPLETE, value, seconds)
        _drop(checkpoint)
        if save_to is not None and self.config.fixed.keep_students == "best":
            keep_only_the_best(study)
        self.log(
            f"  trial {trial.number} {desc}: {self.experiment.select_split} {self.experiment.task.primary_metric}"
            f" {value:.4f} (epoch {reported}, {seconds:.0f} s)"
        )
        return TrialState.COMPLETE

    def _board(self, study: optuna.Study, method: str, record: dict, confirmation: bool):
        """This trial's TensorBoard run (``--tensorboard``), or ``None``."""
        if self.tensorboard is None:
            return None
        from harness.sweep.tensorboard import TrialBoard, run_folder

        seed = record["seed"] if confirmation else None
        folder = run_folder(self.tensorboard, study.study_name, record["point"], seed)
        text = {"method": method, "point": record["point"], "seed": str(record["seed"]), "study": study.study_name}
        return TrialBoard(folder, text)

    def _student_folder(self, study: optuna.Study, point: dict, seed: int, confirmation: bool) -> Path | None:
        """Where this trial's student is kept (``fixed.keep_students``); ``None`` when it is not."""
        policy = self.config.fixed.keep_students
        if policy == "none" or (policy == "best" and confirmation):
            return None
        return self.cache_dir / "students" / self.folder(study) / f"{point_key(point)},seed={seed}"

    def finish(
        self, study: optuna.Study, trial: optuna.Trial, state: TrialState, value: float | None, seconds: float
    ) -> None:
        """Our row first, then Optuna's: a kill in between leaves a RUNNING trial, which is re-run
        (and our row is corrected when its point is taken over)."""
        trial.set_user_attr("seconds", seconds)
        self.storage.record_result(trial._trial_id, state=state.name, value=value, seconds=seconds)
        study.tell(trial, value if state == TrialState.COMPLETE else None, state=state, skip_if_finished=True)


def grid_trials(study: optuna.Study, states: tuple[TrialState, ...] | None = None) -> list[optuna.trial.FrozenTrial]:
    """The trials of ``study`` that evaluate a grid point: not seed confirmations (``confirm``) and not TPE
    proposals of a point another worker held (``duplicate_of``)."""
    return [
        t
        for t in study.get_trials(deepcopy=False, states=states)
        if not t.user_attrs.get("confirmation") and "duplicate_of" not in t.user_attrs
    ]


def keep_only_the_best(study: optuna.Study) -> None:
    """``keep_students: best``: remove the kept students of every trial of ``study`` but its best (highest
    value, ties in grid order as the report breaks them: :func:`~harness.spec.config.grid_rank`; seed
    confirmations and TPE duplicates are never the best)."""
    candidates = grid_trials(study, (TrialState.COMPLETE,))
    if not candidates:
        return
    best = min(candidates, key=best_first)
    for trial in study.get_trials(deepcopy=False):
        path = trial.user_attrs.get("student_path")
        if path and trial.number != best.number and "equivalent_of" not in trial.user_attrs:
            shutil.rmtree(path, ignore_errors=True)


def _drop(checkpoint: Path | None) -> None:
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)


def reproduce(
    storage: Storage, trial_id: int, data_dir: Path | None, cache_dir: Path, log=print
) -> tuple[float | None, float]:
    """Re-run one stored trial from its stored config, grid point and seed; returns (stored, new) values.

    A difference beyond :func:`~harness.distill.device.reproduction_tolerance` is an error; a trial that ran
    on a GPU without ``fixed.deterministic`` is allowed the wider GPU tolerance, and ``log`` says so."""
    from harness.distill.experiment import Experiment
    from harness.spec.config import parse_study

    row = storage.result(trial_id)
    if row is None:
        raise HarnessError(f"no trial with trial_id {trial_id} in {storage.masked} (see: run_study.py status)")
    config = parse_study(row["config"], source=f"trial {trial_id}", base_dir=plugin_dirs(storage))
    point = {key: _number(value) for key, value in (part.split("=") for part in row["point_key"].split(","))}
    experiment = Experiment(config, data_dir, cache_dir)
    history = experiment.run_trial(row["method"], point, seed=row["seed"], desc=f"reproduce {trial_id}")
    stored, value = row["value"], history.best_value
    data = experiment.evals[experiment.select_split]
    tolerance, why = reproduction_tolerance(
        row.get("device"), config.fixed.deterministic, experiment.task.primary_metric, len(data)
    )
    if why:
        log(f"note: {why}")
    if stored is not None and abs(value - stored) > tolerance:
        raise HarnessError(
            f"trial {trial_id}: reproduced {value:.6f}, stored {stored:.6f}: the difference {value - stored:+.2e} "
            f"exceeds the tolerance {tolerance:.4g}"
        )
    return stored, value


def _number(text: str) -> float | str:
    """A point-key value: a number, or the text of a textual extra axis (``alp_scale=sqrt_d``)."""
    try:
        return float(text)
    except ValueError:
        return text
