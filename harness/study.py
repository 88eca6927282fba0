"""The sweep driver: one Optuna study per (study file, task, method), one trial per grid point.

Grid sampling does not use Optuna's ``GridSampler`` (which counts failed trials as visited and can
hand one point to two workers): the points of a study are rows of ``harness_grid_points`` and a
worker claims one atomically (:mod:`harness.storage`), then creates a RUNNING Optuna trial fixed
to that point, together with its owner, in one write (:meth:`Runner._new_trial`). So a study ends
with exactly one finished trial per grid point, whatever is killed when. A trial that raised is recorded FAIL with its reason and
its point is retried, up to ``max_attempts`` attempts in all. A killed trial is marked FAIL
("worker died") when its point is reclaimed, and the new trial resumes from the epoch checkpoint.

TPE sampling (``search.sampler: tpe``) samples ``lr`` and the (η, λ) pair from the same valid grid
points, ``search.n_trials`` evaluated trials per method; an already-evaluated point is never
trained again.

Shared points (:mod:`harness.sharing`): a point that is the same computation as a point of an
earlier method of the study file (λ = 0 ≡ KD, η = λ = 0 ≡ NKD) is linked to that owner point; its
claim runs the owner point first if nobody has (in the owner's study, with the owner's claim,
checkpoints and retries), then adds a trial that copies the outcome (``equivalent_of``). A shared
point whose owner is being trained by another live worker is given back and waited for.

The reported epoch (user attribute ``reported_epoch``): the best epoch on the selection split,
except for seed confirmations under ``selection: dev``, which report their last epoch (a fixed
epoch, never the maximum over dev epochs). The eval logits of that epoch are stored with the trial.
"""

from __future__ import annotations

import datetime
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import optuna
import torch
from optuna.trial import TrialState

from harness.config import StudyConfig, grid_points, point_key
from harness.errors import HarnessError
from harness.experiment import Experiment
from harness.methods import get_method
from harness.hashing import fingerprint
from harness.sharing import computation, grid_owners, method_order, owners
from harness.sharing import plan as sharing_plan
from harness.storage import GRACE_SECONDS, HEARTBEAT_SECONDS, Heartbeat, Storage, worker_id, worker_is_dead
from harness.train import pick_device, runtime_info

DEFAULT_MAX_ATTEMPTS = 3
MAX_TPE_REPEATS = 100  # consecutive proposals of already-evaluated points before a TPE worker gives up
MAX_SILENT_DEATHS = 3  # a point whose worker is killed this often in a row, never finishing an epoch, is given up
WORKER_DIED = "worker died"  # how every trial of a killed worker's fail_reason begins
WAIT_SECONDS = HEARTBEAT_SECONDS  # how often a worker looks again at shared points that others are training
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
_COPIED = ("point", "lr", "eta", "lambda", "seed", "confirmation", "device", "precision", "compiled", "threads",
           "versions", "teacher_key", "data_sha256", "epochs", "best_epoch", "reported_epoch", "fail_reason")


@dataclass(frozen=True)
class RunOptions:
    cache_dir: Path
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    n_trials: int | None = None


def open_study(storage: Storage, config: StudyConfig, method: str) -> optuna.Study:
    """Create or load the method's study; refuse a name reused with a different set-up."""
    name = config.study_name(method)
    study = optuna.create_study(study_name=name, storage=storage.optuna, direction="maximize",
                                load_if_exists=True, pruner=pruner_for(config))
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
    elif have != want:
        raise HarnessError(
            f"study '{name}' already exists in {storage.masked} with a different set-up "
            f"(fingerprint {have} vs {want}); use another 'name' in the study file or another --storage")
    return study


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


def _trial_record(config: StudyConfig, method: str, point: dict, seed: int) -> dict:
    """What is stored with every trial: enough to reproduce it from the database alone."""
    resolved = config.model_dump(mode="json", by_alias=True)
    resolved["methods"] = [method]
    return {
        "method": method, "point": point_key(point), "lr": point["lr"], "eta": point["eta"],
        "lambda": point["lambda"], "seed": seed, "worker": worker_id(),
        **runtime_info(pick_device(), config.fixed.compile),
        "versions": {"torch": torch.__version__, "optuna": optuna.__version__, "python": platform.python_version()},
        "config": resolved,
    }


def stop_after(trial: optuna.Trial, epoch: int, epochs: int) -> bool:
    """Report nothing, decide: should the pruner stop ``trial`` after ``epoch`` of ``epochs``?

    Never after the last epoch: the trial's cost is paid by then, and pruning it would only throw
    its finished result away.
    """
    return epoch < epochs and trial.should_prune()


def _epoch_reporter(trial: optuna.Trial, storage: Storage, epochs: int, prune: bool = True):
    records: list[dict] = []

    def on_epoch(record: dict) -> None:
        records.append(record)
        trial.set_user_attr("epochs", records)
        storage.record_result(trial._trial_id, epochs=records)
        trial.report(record["value"], record["epoch"])
        if prune and stop_after(trial, record["epoch"], epochs):
            raise optuna.TrialPruned()

    return on_epoch


class Runner:
    """Runs the methods of one study file against one storage, in this process."""

    def __init__(self, config: StudyConfig, storage: Storage, experiment: Experiment, options: RunOptions,
                 log=print):
        self.config, self.storage, self.experiment, self.options, self.log = config, storage, experiment, options, log
        self.me = worker_id()

    def _folder(self, study: optuna.Study) -> str:
        """Where a study's epoch checkpoints and saved students live: keyed by everything that
        determines the trials (set-up fingerprint, teacher checkpoint, storage), so a checkpoint is
        never resumed into a different run."""
        return fingerprint({"storage": self.storage.url, "study": study.study_name,
                            "fingerprint": study.user_attrs.get("fingerprint"),
                            "teacher": self.experiment.teacher.key if self.experiment.teacher else None})

    def checkpoint_path(self, study: optuna.Study, key: str) -> Path:
        return self.options.cache_dir / "checkpoints" / self._folder(study) / f"{key}.pt"

    def run(self) -> None:
        studies = {method: open_study(self.storage, self.config, method) for method in self.config.methods}
        for study in studies.values():
            self.check_teacher(study)  # before any fine-tuning: the key is known without it
        teacher = self.experiment.prepare_teacher()
        self.log(f"teacher {self.config.teacher} on {self.config.task}: dev {teacher.value:.4f} "
                 f"(teacher checkpoint {teacher.key})")
        for method, study in studies.items():
            self.record_teacher(study)
            self.storage.save_labels(study.study_name, {s: d.labels for s, d in self.experiment.evals.items()})
            if self.config.search.sampler == "grid":
                self._run_grid(study, method)
            else:
                self._run_tpe(study, method)

    def check_teacher(self, study: optuna.Study) -> None:
        """Refuse to continue a study with another teacher checkpoint or other data files."""
        key = self.experiment.teacher_key()
        stored = study.user_attrs.get("teacher")
        if stored is not None and stored["key"] != key:
            raise HarnessError(
                f"study '{study.study_name}' was run with teacher checkpoint {stored['key']} (data "
                f"{_short(stored.get('data'))}), this run would use {key} (data "
                f"{_short(self.experiment.data_hashes)}); use the same GLUE files (--data-dir) and study file")

    def record_teacher(self, study: optuna.Study) -> None:
        """Store the fine-tuned teacher (checkpoint id, dev scores, data hashes) with a new study."""
        self.check_teacher(study)
        if "teacher" not in study.user_attrs:
            teacher = self.experiment.prepare_teacher()
            study.set_user_attr("teacher", {"key": teacher.key, "value": teacher.value,
                                            "metrics": teacher.dev_metrics, "data": self.experiment.data_hashes})

    # ------------------------------------------------------------------ grid
    def _run_grid(self, study: optuna.Study, method: str) -> None:
        points = {point_key(p): p for p in grid_points(self.config, method)}
        self.storage.ensure_points(study.study_name, points)
        links = {key: (self.config.study_name(owner), key) for (m, key), owner in grid_owners(self.config).items()
                 if m == method and owner != method}
        self.storage.link_points(study.study_name, links)
        _fail_orphans(study, self.storage)
        finished = sum(row["state"] == "done" for row in self.storage.points(study.study_name) if row["point_key"]
                       in points)
        shared = f" ({len(links)} shared with equivalent points of other methods)" if links else ""
        self.log(f"{study.study_name}: {len(points)} valid grid points{shared}, {finished} finished, "
                 f"{len(points) - finished} to run")
        self._run_points(study, method, set(points), self.options.n_trials or self.config.search.n_trials)

    def confirm(self, method: str, top: int, seeds: int) -> None:
        """Re-run the ``top`` best grid configurations of a method with ``seeds`` fresh seeds each.

        Confirmation trials live in the method's study, flagged ``confirmation=True``; their seeds
        are ``fixed.seed + 1 … fixed.seed + seeds``. They are claimed like grid points, so this is
        resumable and safe with several workers. They are never pruned. A confirmation that is the
        same computation (and seed) as another method's is trained once and shared.
        """
        study = open_study(self.storage, self.config, method)
        self.record_teacher(study)
        points = self._confirmation_points(study, top, seeds)
        if not points:
            raise HarnessError(f"study '{study.study_name}' has no complete trial to confirm; run it first")
        every = {method: points}
        for other in self.config.methods:
            if other != method and self._study_exists(other):
                every[other] = self._confirmation_points(open_study(self.storage, self.config, other), top, seeds)
        links = {key: (self.config.study_name(owner), key) for (m, key), owner in owners(self.config, every).items()
                 if m == method and owner != method}
        self.storage.ensure_points(study.study_name, points)
        self.storage.link_points(study.study_name, links)
        _fail_orphans(study, self.storage)
        self.log(f"{study.study_name}: confirming the top {len(points) // seeds} configuration(s) with {seeds} "
                 f"seed(s) each" + (f" ({len(links)} shared with other methods)" if links else ""))
        self._run_points(study, method, set(points), None)

    def _study_exists(self, method: str) -> bool:
        name = self.config.study_name(method)
        return any(s.study_name == name for s in optuna.get_all_study_summaries(self.storage.optuna, False))

    def _confirmation_points(self, study: optuna.Study, top: int, seeds: int) -> dict[str, dict]:
        grid = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if not t.user_attrs.get("confirmation") and "duplicate_of" not in t.user_attrs]
        points = {}
        for trial in sorted(grid, key=lambda t: (-t.value, t.number))[:top]:
            for offset in range(1, seeds + 1):
                seed = self.config.fixed.seed + offset
                points[f"{trial.user_attrs['point']},seed={seed}"] = {
                    "lr": trial.user_attrs["lr"], "eta": trial.user_attrs["eta"],
                    "lambda": trial.user_attrs["lambda"], "seed": seed}
        return points

    def _run_points(self, study: optuna.Study, method: str, keys: set[str], budget: int | None) -> None:
        """Claim and run points of ``keys`` until none is left (or ``budget`` trials ran)."""
        ran = 0
        links = self.storage.links(study.study_name)
        waiting: set[str] = set()  # shared points whose owner point another live worker is training
        while budget is None or ran < budget:
            claim = self.storage.claim_next(study.study_name, self.me, self.options.max_attempts, keys - waiting)
            if claim is None:
                if not waiting:
                    break
                time.sleep(WAIT_SECONDS)
                waiting.clear()
                continue
            if claim.key in links:
                if self._run_shared(study, method, claim, links[claim.key]) is None:
                    waiting.add(claim.key)
                    continue
            elif self._run_claim(study, method, claim) is None:
                continue
            ran += 1
        self._mark_exhausted(study)

    def _run_claim(self, study: optuna.Study, method: str, claim) -> TrialState | None:
        """Run the trial of a claimed point; ``None`` when there was nothing to train (a dead
        worker had finished it, or the point was given up)."""
        if claim.stale_worker is not None:
            if _settle_stale(study, self.storage, claim):
                claim.done()  # the dead worker had finished the trial, only the claim was left open
                return None
            deaths = _silent_deaths(study, claim.key)
            if deaths >= MAX_SILENT_DEATHS:
                reason = (f"its worker died {deaths} times in a row before finishing an epoch (killed for "
                          "memory?); fix the cause, then run again with --retry-failed")
                claim.give_up(reason)
                self.log(f"{study.study_name}: {claim.key}: giving up: {reason}")
                return None
        params = claim.params
        trial = self._new_trial(study, claim.key, params)
        point = {name: trial.params[name] for name in ("lr", "eta", "lambda")}
        claim.attach(trial._trial_id)
        try:
            with Heartbeat(claim):
                state = self._run_one(study, trial, method, point, self.checkpoint_path(study, claim.key),
                                      seed=params.get("seed"))
        except KeyboardInterrupt:  # the epoch checkpoint is kept: the next run resumes from it
            _fail(self.storage, trial._trial_id, "interrupted")
            claim.interrupt()
            raise
        if state == TrialState.FAIL:
            claim.release(str(trial.user_attrs.get("fail_reason", "failed")), self.options.max_attempts)
        else:
            claim.done()
        return state

    def _run_shared(self, study: optuna.Study, method: str, claim, link: tuple[str, str]) -> TrialState | None:
        """A claimed point that another study's point trains: train that one first if nobody has, then
        copy its outcome. ``None`` (the claim given back) while another live worker trains it."""
        source_name, source_key = link
        if claim.stale_worker is not None and _settle_stale(study, self.storage, claim):
            claim.done()  # the dead worker had already copied the outcome
            return TrialState.COMPLETE
        source_method = source_name.rsplit("/", 1)[1]
        self.storage.ensure_points(source_name, {source_key: claim.params})
        row = self.storage.point(source_name, source_key)
        try:
            if row["state"] not in ("done", "failed"):
                source_claim = self.storage.claim_next(source_name, self.me, self.options.max_attempts, {source_key})
                if source_claim is not None:
                    source = open_study(self.storage, self.config, source_method)
                    self.log(f"{study.study_name}: {claim.key} is the same computation as {source_name}; "
                             "training it there")
                    with Heartbeat(claim):
                        self._run_claim(source, source_method, source_claim)
                row = self.storage.point(source_name, source_key)
        except KeyboardInterrupt:
            claim.give_back()
            raise
        if row["state"] == "failed":
            claim.give_up(f"its equivalent point {source_key} of {source_name} failed: {row['last_error']}")
            return TrialState.FAIL
        if row["state"] != "done":
            claim.give_back()
            return None
        source = _finished_trial(self.storage, source_name, source_key)
        if source is None:  # done without a finished trial cannot happen; be safe and wait
            claim.give_back()
            return None
        trial_id = self._adopt(study, method, claim, source)
        claim.attach(trial_id)
        claim.done()
        self.log(f"  trial of {method} {claim.key}: shared with trial_id {source._trial_id} of {source_name} "
                 f"({source.state.name.lower()}, value {_fmt(source.value)})")
        return source.state

    def _adopt(self, study: optuna.Study, method: str, claim, source: optuna.trial.FrozenTrial) -> int:
        """A finished trial of ``study`` that copies ``source``'s outcome, created in one write."""
        attrs = {key: source.user_attrs[key] for key in _COPIED if key in source.user_attrs}
        attrs.update(method=method, worker=self.me, claim=claim.key, equivalent_of=source._trial_id, seconds=0.0,
                     shared_seconds=source.user_attrs.get("seconds"))
        distributions = self._distributions(claim.params)
        now = datetime.datetime.now()
        template = optuna.trial.FrozenTrial(
            number=-1, state=source.state, value=source.value if source.state == TrialState.COMPLETE else None,
            datetime_start=now, datetime_complete=now, params={name: claim.params[name] for name in distributions},
            distributions=distributions,
            user_attrs=attrs, system_attrs={}, intermediate_values=dict(source.intermediate_values), trial_id=-1)
        trial_id = self.storage.optuna.create_new_trial(study._study_id, template_trial=template)
        self._record_copy(study, method, trial_id, source)
        return trial_id

    def _record_copy(self, study: optuna.Study, method: str, trial_id: int, source: optuna.trial.FrozenTrial) -> None:
        """Our results row and the stored predictions of a trial that copies ``source``."""
        row = self.storage.result(source._trial_id) or {}
        number = self.storage.optuna.get_trial(trial_id).number
        point = {name: source.user_attrs[name] for name in ("lr", "eta", "lambda")}
        config = _trial_record(self.config, method, point, source.user_attrs.get("seed", 0))["config"]
        self.storage.record_result(
            trial_id, study_name=study.study_name, number=number, method=method, point_key=source.user_attrs["point"],
            state=source.state.name, value=source.value, seed=source.user_attrs.get("seed", self.config.fixed.seed),
            config=config, epochs=row.get("epochs"), seconds=0.0, device=row.get("device"),
            versions=row.get("versions"), teacher_key=row.get("teacher_key"), data_sha256=row.get("data_sha256"),
            worker=self.me)
        stored = self.storage.predictions([source._trial_id]).get(source._trial_id)
        if stored:
            epoch = next(iter(stored.values()))[0]
            self.storage.save_predictions(trial_id, epoch, {split: array for split, (_, array) in stored.items()})

    def _new_trial(self, study: optuna.Study, key: str, params: dict) -> optuna.Trial:
        """A RUNNING trial fixed to a claimed point, created in one write together with its owner.

        (``study.ask()`` followed by ``set_user_attr`` would leave an ownerless RUNNING trial if the
        worker were killed in between.)
        """
        distributions = self._distributions(params)
        template = optuna.trial.FrozenTrial(
            number=-1, state=TrialState.RUNNING, value=None, datetime_start=datetime.datetime.now(),
            datetime_complete=None, params={name: params[name] for name in distributions}, distributions=distributions,
            user_attrs={"worker": self.me, "claim": key}, system_attrs={}, intermediate_values={}, trial_id=-1)
        trial_id = self.storage.optuna.create_new_trial(study._study_id, template_trial=template)
        return optuna.Trial(study, trial_id)

    def _distributions(self, params: dict) -> dict:
        """The categorical distributions of a trial fixed to ``params`` (lr, η, λ: the study file's grids)."""
        search = self.config.search
        grids = {"lr": search.lr, "eta": search.eta, "lambda": search.lambda_}
        return {name: optuna.distributions.CategoricalDistribution(_choices(grids[name], params[name]))
                for name in grids}

    def _mark_exhausted(self, study: optuna.Study) -> None:
        for row in self.storage.points(study.study_name):
            if row["state"] == "failed":
                self.log(f"{study.study_name}: {row['point_key']} failed {row['attempts']} times, giving up on it "
                         f"(last error: {row['last_error']})")

    # ------------------------------------------------------------------ tpe
    def _run_tpe(self, study: optuna.Study, method: str) -> None:
        """TPE (see :func:`tpe_search`) until the study has ``n_trials`` evaluated trials.

        The count is re-read before every trial, so several workers share one budget (they may
        overshoot it by at most one trial each). Each worker seeds TPE differently; after
        ``max_attempts`` failed trials in a row this worker stops.
        """
        points = grid_points(self.config, method)
        budget = self.options.n_trials or self.config.search.n_trials or len(points)
        _fail_orphans(study, self.storage)
        self.log(f"{study.study_name}: TPE over {len(points)} valid grid points, budget {budget} trials")
        seed = int(fingerprint({"worker": self.me}), 16) + len(study.get_trials(deepcopy=False))
        study.sampler = optuna.samplers.TPESampler(seed=seed % 2**31)
        tpe_search(study, self.config, method, budget,
                   lambda trial, point: self._evaluate_tpe(study, method, trial, point),
                   self.options.max_attempts, {"worker": self.me})

    def _evaluate_tpe(self, study: optuna.Study, method: str, trial: optuna.Trial, point: dict) -> TrialState:
        """Train a TPE proposal, unless an equivalent trial of another method of the study file has
        finished: then the proposal copies it (``equivalent_of``). Concurrent TPE workers do not
        claim points, so two of them may still train one computation at the same moment."""
        source = self._equivalent_finished(method, point)
        if source is None:
            return self._run_one(study, trial, method, point, None)
        for key in _COPIED:
            if key in source.user_attrs:
                trial.set_user_attr(key, source.user_attrs[key])
        for key, value in (("method", method), ("equivalent_of", source._trial_id), ("seconds", 0.0),
                           ("shared_seconds", source.user_attrs.get("seconds"))):
            trial.set_user_attr(key, value)
        for epoch, value in sorted(source.intermediate_values.items()):
            trial.report(value, epoch)
        self._record_copy(study, method, trial._trial_id, source)
        study.tell(trial, source.value if source.state == TrialState.COMPLETE else None, state=source.state)
        self.log(f"  trial {trial.number} {method} {point_key(point)}: shared with trial_id {source._trial_id}")
        return source.state

    def _equivalent_finished(self, method: str, point: dict) -> optuna.trial.FrozenTrial | None:
        """A finished, trained (not copied) grid trial of another method that is the same computation."""
        what = computation(self.config, method, point)
        for other in method_order(self.config):
            if other == method or computation(self.config, other, point) != what or not self._study_exists(other):
                continue
            found = _finished_trial(self.storage, self.config.study_name(other), point_key(point))
            if found is not None:
                return found
        return None

    # ------------------------------------------------------------------ one trial
    def _run_one(self, study: optuna.Study, trial: optuna.Trial, method: str, point: dict,
                 checkpoint: Path | None, seed: int | None = None) -> TrialState:
        """Run one trial; ``seed`` other than ``None`` makes it a confirmation of ``point``."""
        confirmation = seed is not None
        seed = self.config.fixed.seed if seed is None else seed
        record = _trial_record(self.config, method, point, seed)
        record["confirmation"] = confirmation
        record.update(teacher_key=self.experiment.teacher.key, data_sha256=self.experiment.data_hashes)
        for key, value in record.items():
            if key != "config":
                trial.set_user_attr(key, value)
        self.storage.record_result(
            trial._trial_id, study_name=study.study_name, number=trial.number, method=method,
            point_key=record["point"], state="RUNNING", seed=seed, config=record["config"], device=record["device"],
            versions=record["versions"], teacher_key=record["teacher_key"], data_sha256=record["data_sha256"],
            worker=record["worker"])
        started = time.perf_counter()
        desc = f"{method} {point_key(point)}" + (f" seed {seed}" if confirmation else "")
        save_to = None
        if self.config.fixed.save_students:
            save_to = self.options.cache_dir / "students" / self._folder(study) / f"{point_key(point)},seed={seed}"
            trial.set_user_attr("student_path", str(save_to))
        try:
            reporter = _epoch_reporter(trial, self.storage, self.config.fixed.epochs, prune=not confirmation)
            history = self.experiment.run_trial(method, point, seed=seed, checkpoint=checkpoint, save_to=save_to,
                                                on_epoch=reporter, desc=desc)
        except optuna.TrialPruned:
            self._finish(study, trial, TrialState.PRUNED, None, time.perf_counter() - started)
            self.log(f"  trial {trial.number} {desc}: pruned")
            _drop(checkpoint)
            return TrialState.PRUNED
        except HarnessError:
            self._finish(study, trial, TrialState.FAIL, None, time.perf_counter() - started)
            raise
        except Exception as error:  # noqa: BLE001 - recorded as the trial's failure reason
            reason = f"{type(error).__name__}: {error}".splitlines()[0][:500]
            trial.set_user_attr("fail_reason", reason)
            self._finish(study, trial, TrialState.FAIL, None, time.perf_counter() - started)
            self.log(f"  trial {trial.number} {desc}: FAILED ({reason})")
            _drop(checkpoint)
            return TrialState.FAIL
        seconds = time.perf_counter() - started
        trial.set_user_attr("best_epoch", history.best_epoch)
        reported = history.epochs[-1]["epoch"] if confirmation and self.experiment.select_split == \
            self.experiment.task.eval_splits[0] else history.best_epoch
        trial.set_user_attr("reported_epoch", reported)
        if reported in history.predictions:
            self.storage.save_predictions(trial._trial_id, reported, history.predictions[reported])
        value = history.best_value if reported == history.best_epoch else history.epochs[-1]["value"]
        self._finish(study, trial, TrialState.COMPLETE, value, seconds)
        _drop(checkpoint)
        self.log(f"  trial {trial.number} {desc}: {self.experiment.select_split} {self.experiment.task.primary_metric}"
                 f" {value:.4f} (epoch {reported}, {seconds:.0f} s)")
        return TrialState.COMPLETE

    def _finish(self, study: optuna.Study, trial: optuna.Trial, state: TrialState, value: float | None,
                seconds: float) -> None:
        """Our row first, then Optuna's: a kill in between leaves a RUNNING trial, which is re-run
        (and our row is corrected when its point is taken over)."""
        trial.set_user_attr("seconds", seconds)
        self.storage.record_result(trial._trial_id, state=state.name, value=value, seconds=seconds)
        study.tell(trial, value if state == TrialState.COMPLETE else None, state=state, skip_if_finished=True)


def tpe_search(study: optuna.Study, config: StudyConfig, method: str, budget: int,
               evaluate: Callable[[optuna.Trial, dict], TrialState], max_failures: int,
               trial_attrs: dict | None = None, done: Callable[[], bool] = lambda: False) -> None:
    """Let the study's sampler propose valid grid points of ``method`` until ``budget`` trials are evaluated.

    The sampler chooses lr and the (η, λ) pair as categorical values, so every proposal is a valid
    grid point. A trial is a deterministic function of its point and seed, so a proposal of a point
    that already completed or was pruned is not run again: it is told the earlier outcome (value,
    or the pruned trial's epoch scores), is marked ``duplicate_of``, costs nothing and does not
    count against the budget. The search also ends when every valid point has been evaluated
    (completed or pruned), after ``max_failures`` failed trials in a row, or when ``done()`` says
    so. ``evaluate(trial, point)`` runs the trial, tells the study its outcome and returns its
    state; ``trial_attrs`` are set on every trial as soon as it exists. :class:`Runner` runs real
    trials with it; :mod:`bench.sweep` replays them.
    """
    points = grid_points(config, method)
    pairs = sorted({f"{p['eta']:g},{p['lambda']:g}" for p in points})
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    failures = repeats = 0
    while failures < max_failures and repeats < MAX_TPE_REPEATS and not done():
        trials = [t for t in study.get_trials(deepcopy=False) if "duplicate_of" not in t.user_attrs]
        evaluated = {t.user_attrs.get("point"): t for t in trials if t.state in finished}
        active = sum(t.state in (*finished, TrialState.RUNNING) for t in trials)
        if active >= budget or len(evaluated) >= len(points):
            break
        trial = study.ask()
        for key, value in (trial_attrs or {}).items():
            trial.set_user_attr(key, value)
        lr = trial.suggest_categorical("lr", config.search.lr)
        eta, lam = (float(v) for v in trial.suggest_categorical("eta_lambda", pairs).split(","))
        point = {"lr": lr, "eta": eta, "lambda": lam}
        earlier = evaluated.get(point_key(point))
        if earlier is not None:
            trial.set_user_attr("point", point_key(point))
            trial.set_user_attr("duplicate_of", earlier.number)
            for epoch, value in sorted(earlier.intermediate_values.items()):
                trial.report(value, epoch)
            complete = earlier.state == TrialState.COMPLETE
            study.tell(trial, earlier.value if complete else None, state=earlier.state)
            repeats += 1
            continue
        state = evaluate(trial, point)
        failures = failures + 1 if state == TrialState.FAIL else 0
        repeats = 0


def _short(hashes: dict | None) -> str:
    if not hashes:
        return "unknown"
    return ", ".join(f"{split} {digest[:8] if digest else 'hub'}" for split, digest in hashes.items())


def _choices(grid: tuple[float, ...], value: float) -> tuple[float, ...]:
    """A fixed weight (0 for NKD/KD) may lie outside the study's η/λ grid; add it to the choices."""
    return grid if value in grid else tuple(sorted((*grid, value)))


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _finished_trial(storage: Storage, study_name: str, key: str) -> optuna.trial.FrozenTrial | None:
    """The latest trained (not copied) COMPLETE or PRUNED trial of the point ``key`` of a study."""
    study_id = storage.optuna.get_study_id_from_name(study_name)
    found = [t for t in storage.optuna.get_all_trials(study_id, deepcopy=False, states=_FINISHED)
             if t.user_attrs.get("claim", t.user_attrs.get("point")) == key and "equivalent_of" not in t.user_attrs
             and "duplicate_of" not in t.user_attrs]
    return max(found, key=lambda t: t.number) if found else None


def _drop(checkpoint: Path | None) -> None:
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)


def _settle_stale(study: optuna.Study, storage: Storage, claim) -> bool:
    """After taking over a dead worker's claim: mark its RUNNING trials of that point FAIL.

    Returns True if the dead worker had in fact finished the point (a COMPLETE or PRUNED trial of
    this point by that worker), so that it is not run twice.
    """
    finished = False
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        if trial._trial_id != claim.stale_trial_id and (
                attrs.get("claim") != claim.key or attrs.get("worker") != claim.stale_worker):
            continue
        if trial.state == TrialState.RUNNING:
            _fail(storage, trial._trial_id, f"{WORKER_DIED} (claim taken over)")
            trial = storage.optuna.get_trial(trial._trial_id)  # it may have finished meanwhile
        done = trial.state in (TrialState.COMPLETE, TrialState.PRUNED)
        finished |= done
        if done and storage.result(trial._trial_id) is not None:
            storage.record_result(trial._trial_id, state=trial.state.name, value=trial.value)
    return finished


def _silent_deaths(study: optuna.Study, key: str) -> int:
    """How many of the point's latest trials in a row died (worker killed) before finishing an epoch."""
    count = 0
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: -t.number):
        if trial.user_attrs.get("claim") != key:
            continue
        died = str(trial.user_attrs.get("fail_reason", "")).startswith(WORKER_DIED)
        if not (trial.state == TrialState.FAIL and died and not trial.user_attrs.get("epochs")):
            break
        count += 1
    return count


def _fail(storage: Storage, trial_id: int, reason: str) -> None:
    try:
        storage.optuna.set_trial_user_attr(trial_id, "fail_reason", reason)
        storage.optuna.set_trial_state_values(trial_id, TrialState.FAIL)
    except RuntimeError:
        return  # finished meanwhile (optuna raises UpdateFinishedTrialError, a RuntimeError)
    if storage.result(trial_id) is not None:
        storage.record_result(trial_id, state="FAIL")


def _fail_orphans(study: optuna.Study, storage: Storage) -> None:
    """Mark RUNNING trials that no live worker owns as FAIL.

    A trial is an orphan when its worker (``host:pid``) ran on this host and is gone, or when it
    never got as far as naming its worker and started more than ``GRACE_SECONDS`` ago.
    """
    now = time.time()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        started = trial.datetime_start.timestamp() if trial.datetime_start else now
        if (worker is not None and worker_is_dead(worker)) or (worker is None and started < now - GRACE_SECONDS):
            _fail(storage, trial._trial_id, WORKER_DIED)


def describe_grids(config: StudyConfig) -> list[str]:
    """One line per method: how many valid grid points it has and how many of them it trains itself
    (the others are the same computation as another method's point; :mod:`harness.sharing`)."""
    lines = []
    trained = sharing_plan(config)
    for method in config.methods:
        spec = get_method(method)
        if spec.searches_lambda:
            searched = "lr × η × λ with β = 1 − η − λ ≥ 0"
        else:
            searched = "lr × η" if spec.searches_eta else "lr only, η = λ = 0"
        size, own = trained[method]
        shared = f", {size - own} shared (≡ {'KD/NKD' if spec.searches_lambda else 'NKD'})" if own < size else ""
        lines.append(f"  {method}: {len(grid_points(config, method))} grid points ({searched}){shared}")
    total, own = sum(g for g, _ in trained.values()), sum(t for _, t in trained.values())
    if own < total:
        lines.append(f"  {total} grid points, {own} trainings: {total - own} ({(total - own) / total:.1%}) are "
                     "the same computation as another method's point and are trained once")
    return lines



def _worker_main(index: int, config: StudyConfig, url: str, data_dir: Path | None, options: RunOptions,
                 threads: int) -> None:
    """Entry point of one worker process (spawned; everything it needs is passed in)."""
    import sys

    from harness.quiet import quiet_libraries

    quiet_libraries(transformers=True)
    torch.set_num_threads(threads)
    try:
        experiment = Experiment(config, data_dir, options.cache_dir, progress=False)
        Runner(config, Storage(url), experiment, options, log=lambda line: print(f"[worker {index}] {line}",
                                                                                 flush=True)).run()
    except HarnessError as error:
        print(f"error: [worker {index}] {error}", file=sys.stderr, flush=True)
        sys.exit(2)


def run_workers(count: int, config: StudyConfig, url: str, data_dir: Path | None, options: RunOptions) -> int:
    """Run ``count`` worker processes on this machine and wait for them; returns the worst exit code."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    threads = max(1, torch.get_num_threads() // count)
    processes = [context.Process(target=_worker_main, args=(i, config, url, data_dir, options, threads))
                 for i in range(count)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    return max(abs(process.exitcode or 0) for process in processes)


def study_status(storage: Storage) -> list[str]:
    """One block per study: grid size, complete, running (worker and age), failed, pruned, left, given up."""
    now = time.time()
    lines = []
    for summary in sorted(optuna.get_all_study_summaries(storage.optuna, include_best_trial=False),
                          key=lambda s: s.study_name):
        trials = storage.optuna.get_all_trials(summary._study_id, deepcopy=False)
        count = {state: sum(t.state == state for t in trials) for state in TrialState}
        points = storage.points(summary.study_name)
        grid = summary.user_attrs.get("grid_size", len(points))
        finished = count[TrialState.COMPLETE] + count[TrialState.PRUNED]
        left = sum(p["state"] != "done" for p in points) if points else max(0, grid - finished)
        shared = sum("equivalent_of" in t.user_attrs for t in trials)
        lines.append(f"{summary.study_name}: grid {grid}, complete {count[TrialState.COMPLETE]}, "
                     f"running {count[TrialState.RUNNING]}, failed {count[TrialState.FAIL]}, "
                     f"pruned {count[TrialState.PRUNED]}, left {left}"
                     + (f", shared {shared} (copied from equivalent trials, not trained)" if shared else ""))
        for trial in trials:
            if trial.state == TrialState.RUNNING:
                age = now - trial.datetime_start.timestamp() if trial.datetime_start else 0.0
                lines.append(f"    running: trial_id {trial._trial_id} {trial.user_attrs.get('point', '?')} on "
                             f"{trial.user_attrs.get('worker', '?')}, {age:.0f} s")
        lines += [f"    given up: {p['point_key']} after {p['attempts']} attempt(s): {p['last_error']} "
                  "(run --retry-failed to try again)" for p in points if p["state"] == "failed"]
    return lines


def reproduce(storage: Storage, trial_id: int, data_dir: Path | None, cache_dir: Path) -> tuple[float | None, float]:
    """Re-run one stored trial from its stored config, grid point and seed; returns (stored, new) values."""
    from harness.config import parse_study

    row = storage.result(trial_id)
    if row is None:
        raise HarnessError(f"no trial with trial_id {trial_id} in {storage.masked} (see: run_study.py status)")
    config = parse_study(row["config"], source=f"trial {trial_id}")
    point = {key: float(value) for key, value in (part.split("=") for part in row["point_key"].split(","))}
    experiment = Experiment(config, data_dir, cache_dir)
    history = experiment.run_trial(row["method"], point, seed=row["seed"], desc=f"reproduce {trial_id}")
    return row["value"], history.best_value


def confirm_studies(storage: Storage, name: str | None, top: int, seeds: int, data_dir: Path | None,
                    options: RunOptions, log=print) -> None:
    """Seed confirmations for every study in the database (optionally of one study file), from the DB alone."""
    from harness.config import parse_study

    groups: dict[str, tuple[StudyConfig, list[str]]] = {}
    for summary in sorted(optuna.get_all_study_summaries(storage.optuna, include_best_trial=False),
                          key=lambda s: s.study_name):
        attrs = summary.user_attrs
        if "config" not in attrs or (name is not None and summary.study_name.split("/")[0] != name):
            continue
        config = parse_study(attrs["config"], source=f"study {summary.study_name}")
        key = fingerprint({**config.model_dump(mode="json", by_alias=True), "methods": None})
        groups.setdefault(key, (config, []))[1].append(attrs["method"])
    if not groups:
        raise HarnessError(f"no studies{f' named {name!r}' if name else ''} in {storage.masked}")
    for config, methods in groups.values():
        experiment = Experiment(config, data_dir, options.cache_dir)
        runner = Runner(config, storage, experiment, options, log=log)
        experiment.prepare_teacher()
        for method in methods:
            runner.confirm(method, top, seeds)
