"""The sweep driver: one Optuna study per (study file, task, method), one trial per grid point.

Grid sampling does not use Optuna's ``GridSampler`` (which counts failed trials as visited and can
hand one point to two workers): the points of a study are rows of ``harness_grid_points`` and a
worker claims one atomically (:mod:`harness.store.storage`), then creates a RUNNING Optuna trial fixed
to that point, together with its owner, in one write (:meth:`Runner._new_trial`). So a study ends
with exactly one finished trial per grid point, whatever is killed when. A trial that raised is
recorded FAIL with its reason and its point is retried, up to ``max_attempts`` attempts in all.
A killed trial is marked FAIL ("worker died") when its point is reclaimed, and the new trial
resumes from the epoch checkpoint.

TPE sampling (``search.sampler: tpe``) samples ``lr`` and the (η, λ) pair from the same valid grid
points, ``search.n_trials`` evaluated trials per method; an already-evaluated point is never
trained again.

Shared points (:mod:`harness.sweep.sharing`): a point that is the same computation as a point of an
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
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from harness.distill.experiment import Experiment
from harness.spec.config import StudyConfig, grid_points, point_key
from harness.store.claims import HEARTBEAT_SECONDS, Heartbeat, slurm_job, worker_id
from harness.store.storage import Storage
from harness.sweep.copies import adopt, finished_trial
from harness.sweep.settle import MAX_SILENT_DEATHS, fail_orphans, fail_trial, settle_stale, silent_deaths
from harness.sweep.sharing import grid_owners
from harness.sweep.studies import check_teacher, open_study, record_teacher
from harness.sweep.tpe import run_tpe
from harness.sweep.trial import TrialRunner
from harness.util import signals
from harness.util.errors import HarnessError

DEFAULT_MAX_ATTEMPTS = 3
WAIT_SECONDS = HEARTBEAT_SECONDS  # how often a worker looks again at shared points that others are training


@dataclass(frozen=True)
class RunOptions:
    cache_dir: Path
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    n_trials: int | None = None
    tensorboard: Path | None = None  # write TensorBoard event files of every trial here (harness.sweep.tensorboard)


class Runner:
    """Runs the methods of one study file against one storage, in this process."""

    def __init__(self, config: StudyConfig, storage: Storage, experiment: Experiment, options: RunOptions, log=print):
        self.config, self.storage, self.experiment, self.options, self.log = config, storage, experiment, options, log
        self.me = worker_id()
        self.trials = TrialRunner(config, storage, experiment, options.cache_dir, log, tensorboard=options.tensorboard)

    def _run_one(self, *args, **kwargs) -> TrialState:
        """One trial (:meth:`harness.sweep.trial.TrialRunner.run`); a method, so that benchmarks can time it."""
        return self.trials.run(*args, **kwargs)

    def run(self) -> None:
        studies = {method: open_study(self.storage, self.config, method) for method in self.config.methods}
        for study in studies.values():
            check_teacher(study, self.experiment)  # before any fine-tuning: the key is known without it
        teacher = self.experiment.teacher.prepare()
        self.log(
            f"teacher {self.config.teacher} on {self.config.task}: dev {teacher.value:.4f} "
            f"(teacher checkpoint {teacher.key})"
        )
        for method, study in studies.items():
            record_teacher(study, self.experiment)
            self.storage.save_labels(study.study_name, {s: d.labels for s, d in self.experiment.evals.items()})
            if self.config.search.sampler == "grid":
                self._run_grid(study, method)
            else:
                run_tpe(self, study, method)

    # ------------------------------------------------------------------ grid
    def _run_grid(self, study: optuna.Study, method: str) -> None:
        points = {point_key(p): p for p in grid_points(self.config, method)}
        self.storage.ensure_points(study.study_name, points)
        links = {
            key: (self.config.study_name(owner), owner_key)
            for (m, key), (owner, owner_key) in grid_owners(self.config, with_keys=True).items()
            if m == method and owner != method
        }
        self.storage.link_points(study.study_name, links)
        fail_orphans(study, self.storage)
        finished = sum(
            row["state"] == "done" for row in self.storage.points(study.study_name) if row["point_key"] in points
        )
        shared = f" ({len(links)} shared with equivalent points of other methods)" if links else ""
        self.log(
            f"{study.study_name}: {len(points)} valid grid point{'' if len(points) == 1 else 's'}{shared}, "
            f"{finished} finished, {len(points) - finished} to run"
        )
        self.run_points(study, method, set(points), self.options.n_trials or self.config.search.n_trials)

    def study_exists(self, method: str) -> bool:
        try:
            self.storage.optuna.get_study_id_from_name(self.config.study_name(method))
        except KeyError:
            return False
        return True

    def run_points(self, study: optuna.Study, method: str, keys: set[str], budget: int | None) -> None:
        """Claim and run points of ``keys`` until none is left (or ``budget`` trials ran)."""
        ran = 0
        links = self.storage.links(study.study_name)
        waiting: set[str] = set()  # shared points whose owner point another live worker is training
        while budget is None or ran < budget:
            claim = self.storage.claim_next(study.study_name, self.me, self.options.max_attempts, keys - waiting)
            if claim is None:
                if not waiting:
                    break
                signals.wait(WAIT_SECONDS)
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
            if settle_stale(study, self.storage, claim):
                claim.done()  # the dead worker had finished the trial, only the claim was left open
                return None
            deaths = silent_deaths(study, claim.key)
            if deaths >= MAX_SILENT_DEATHS:
                reason = (
                    f"its worker died {deaths} times in a row before finishing an epoch (killed for "
                    "memory?); fix the cause, then run again with --retry-failed"
                )
                claim.give_up(reason)
                self.log(f"{study.study_name}: {claim.key}: giving up: {reason}")
                return None
        params = claim.params
        trial = self._new_trial(study, claim.key, params)
        point = {name: trial.params[name] for name in trial.params}  # lr, η, λ and an extra axis, if any
        return self._train_claimed(study, method, claim, trial, point, params.get("seed"))

    def _train_claimed(
        self, study: optuna.Study, method: str, claim, trial: optuna.Trial, point: dict, seed: int | None = None
    ) -> TrialState | None:
        """Train ``trial`` for the point ``claim`` holds, from its epoch checkpoint if one is left, and settle the
        claim; ``None`` when the claim was lost on the way (the trial is its new owner's to fail)."""
        claim.attach(trial._trial_id)
        try:
            with Heartbeat(claim):
                state = self._run_one(study, trial, method, point, self.trials.checkpoint_path(study, claim.key), seed)
        except KeyboardInterrupt:  # the epoch checkpoint is kept: the next run resumes from it
            fail_trial(self.storage, trial._trial_id, "interrupted")
            claim.interrupt()
            raise
        except HarnessError:  # not the point's fault (a full disk, …): it goes back unused, this worker stops
            claim.give_back()
            raise
        except signals.ClaimLost as lost:  # the new owner fails this trial and resumes from the checkpoint
            self.log(f"{lost}; stopped training it, the worker that took it over resumes from its checkpoint")
            return None
        if state == TrialState.FAIL:
            claim.release(str(trial.user_attrs.get("fail_reason", "failed")), self.options.max_attempts)
        else:
            claim.done()
        return state

    def _run_shared(self, study: optuna.Study, method: str, claim, link: tuple[str, str]) -> TrialState | None:
        """A claimed point that another study's point trains: train that one first if nobody has, then
        copy its outcome. ``None`` (the claim given back) while another live worker trains it."""
        source_name, source_key = link
        if claim.stale_worker is not None and settle_stale(study, self.storage, claim):
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
                    self.log(
                        f"{study.study_name}: {claim.key} is the same computation as {source_name}; training it there"
                    )
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
        source = finished_trial(self.storage, source_name, source_key)
        if source is None:  # done without a finished trial cannot happen; be safe and wait
            claim.give_back()
            return None
        if claim.lost.is_set():  # another worker took this point over while its source trained: it copies it
            return None
        trial_id = adopt(
            self.storage, self.config, self.me, study, method, claim, self._distributions(claim.params), source
        )
        claim.attach(trial_id)
        claim.done()
        self.log(
            f"  trial of {method} {claim.key}: shared with trial_id {source._trial_id} of {source_name} "
            f"({source.state.name.lower()}, value {_fmt(source.value)})"
        )
        return source.state

    def _new_trial(self, study: optuna.Study, key: str, params: dict) -> optuna.Trial:
        """A RUNNING trial fixed to a claimed point, created in one write together with its owner.

        (``study.ask()`` followed by ``set_user_attr`` would leave an ownerless RUNNING trial if the
        worker were killed in between.)
        """
        distributions = self._distributions(params)
        template = optuna.trial.FrozenTrial(
            number=-1,
            state=TrialState.RUNNING,
            value=None,
            datetime_start=datetime.datetime.now(),
            datetime_complete=None,
            params={name: params[name] for name in distributions},
            distributions=distributions,
            user_attrs={"worker": self.me, "claim": key, **({"slurm_job": job} if (job := slurm_job()) else {})},
            system_attrs={},
            intermediate_values={},
            trial_id=-1,
        )
        trial_id = self.storage.optuna.create_new_trial(study._study_id, template_trial=template)
        return optuna.Trial(study, trial_id)

    def _distributions(self, params: dict) -> dict:
        """The categorical distributions of a trial fixed to ``params`` (lr, η, λ: the study file's grids)."""
        search = self.config.search
        grids = {"lr": search.lr, "eta": search.eta, "lambda": search.lambda_}
        grids.update({name: values for name, values in search.extra.items() if name in params})  # an extra axis
        return {
            name: optuna.distributions.CategoricalDistribution(_choices(grids[name], params[name])) for name in grids
        }

    def _mark_exhausted(self, study: optuna.Study) -> None:
        for row in self.storage.points(study.study_name):
            if row["state"] == "failed":
                self.log(
                    f"{study.study_name}: {row['point_key']} failed {row['attempts']} times, giving up on it "
                    f"(last error: {row['last_error']})"
                )


def _choices(grid: tuple[float, ...], value: float) -> tuple[float, ...]:
    """A fixed weight (0 for NKD/KD) may lie outside the study's η/λ grid; add it to the choices."""
    return grid if value in grid else tuple(sorted((*grid, value)))


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"
