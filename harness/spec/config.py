"""Study files: parsing, validation, and the per-method search grids.

A study file is YAML. Every key is checked (unknown keys and wrong types are errors), so a typo
never silently falls back to a default. Example (``studies/demo.yaml``)::

    name: demo
    task: SST-2
    teacher: minilm-l6
    student_layers: 2
    methods: [nkd, kd, alp]
    fixed:
      epochs: 1
      max_train_samples: 8000
      teacher: {epochs: 1, lr: 5.0e-5}
    search:
      sampler: grid
      lr: [5.0e-5]
      eta: [0.5]
      lambda: [0.2]

The loss is ``L = β·CE + η·KD + λ·L_inter`` with ``β = 1 − η − λ``; grid points with β < 0 are
invalid and never sampled. Which weights a method searches comes from its registry entry:
NKD searches only the learning rate (η = λ = 0), KD searches lr × η (λ = 0), every method with an
inter-layer term searches lr × η × λ.

``plugins: [module, …]`` names modules that register more methods (:mod:`harness.spec.plugins`); they are
imported before ``methods`` is checked. ``label`` (e.g. ``sqrt_d``) names the variant a study file is: the
report's rows are ``method [label]``, so study files that differ in a fixed value share one report. Neither
is part of a study's fingerprint (a plug-in's file is checked by its sha256 instead, see
:mod:`harness.sweep.studies`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.spec.methods import get_method, needs_live_teacher
from harness.spec.plugins import load_plugins
from harness.spec.tasks import get_task
from harness.util.errors import HarnessError
from harness.util.hashing import fingerprint

PAPER_LR_GRID = (1e-5, 2e-5, 5e-5)
PAPER_WEIGHT_GRID = (0.0, 0.2, 0.5, 0.7)
_EPS = 1e-9


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, allow_inf_nan=False)


class TeacherRecipe(_Strict):
    """How the teacher is fine-tuned on the task (once; the result is cached on disk).

    ``finetune: false`` uses the teacher checkpoint as it is (already fine-tuned on the task): no training;
    its head is checked against the task and it is scored on dev once (harness.distill.teacher_checks); the
    other keys are then unused. ``allow_chance: true`` goes on with such a teacher at chance on dev."""

    finetune: bool = True
    allow_chance: bool = False
    epochs: int = Field(3, ge=1)
    lr: float = Field(2e-5, gt=0, lt=1)
    batch_size: int = Field(32, ge=1)
    max_train_samples: int | None = Field(None, ge=1)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0, lt=1)


TEACHER_DEFAULTS = {"finetune": True, "allow_chance": False}  # keys left out of hashes at these values


class Fixed(_Strict):
    """Everything that is the same for every trial of a study."""

    epochs: int = Field(3, ge=1)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(128, ge=1)
    max_seq_length: int = Field(128, ge=8, le=512)
    max_train_samples: int | None = Field(None, ge=1)
    seed: int = 42
    # bottom | skip: the source's bottom / every k-th layers; random: its architecture only; pretrained: the whole
    # student_from model as it is (student_layers = its depth). The source is student_from, else the teacher.
    student_init: Literal["bottom", "skip", "random", "pretrained"] = "bottom"
    temperature: float = Field(1.0, gt=0, le=100)
    alp_scale: Literal["1", "sqrt_d"] = "1"
    alp_tokens: Literal["cls", "all"] = "cls"
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)
    teacher_outputs: Literal["cache", "live"] = "cache"
    # Which trained students stay on disk (under the cache's students/ folder), at their reported epoch:
    # ``best`` the current best trial of each study (replaced when a better one finishes), ``all`` every
    # trial, ``none`` nothing (``export`` then re-trains the trial deterministically). Not part of the
    # study's fingerprint: it can be changed between runs. (Study files before it had ``save_students``.)
    keep_students: Literal["best", "all", "none"] = "best"
    compile: bool = False
    # auto: bf16 on a GPU that has it, else fp16 with a gradient scaler; fp32 on CPU (device.autocast_for)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    teacher_cache_dtype: Literal["float32", "float16"] = "float32"
    # torch.use_deterministic_algorithms + CUBLAS_WORKSPACE_CONFIG for teacher and students (device.set_deterministic)
    deterministic: bool = False
    # How the epoch and the grid point are chosen: ``dev`` (the paper's protocol: on the reported dev set,
    # so the reported maximum is optimistic) or ``holdout`` (a seeded, label-stratified slice of train that
    # no model trains on; dev is then read once, at the chosen epoch of the chosen point). See harness.data.holdout.
    selection: Literal["dev", "holdout"] = "dev"
    holdout_fraction: float = Field(0.1, gt=0, lt=1)
    holdout_max_samples: int | None = Field(None, ge=1)
    teacher: TeacherRecipe = TeacherRecipe()

    @field_validator("alp_scale", mode="before")
    @classmethod
    def _scale_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) else value

    @model_validator(mode="before")
    @classmethod
    def _legacy_save_students(cls, data: object) -> object:
        """``save_students: true`` (configs stored before ``keep_students``) means ``keep_students: all``."""
        if isinstance(data, dict) and "save_students" in data:
            data = dict(data)
            if data.pop("save_students") is True:
                data.setdefault("keep_students", "all")
        return data


class Search(_Strict):
    """The sampler and the grids. Defaults are the paper's grids."""

    sampler: Literal["grid", "tpe"] = "grid"
    pruner: Literal["none", "median", "halving"] = "none"
    n_trials: int | None = Field(None, ge=1)
    lr: tuple[float, ...] = PAPER_LR_GRID
    eta: tuple[float, ...] = PAPER_WEIGHT_GRID
    lambda_: tuple[float, ...] = Field(PAPER_WEIGHT_GRID, alias="lambda")
    # One more grid axis per method (register_method(extra=(name, default))): name → values, e.g.
    # {temperature: [1, 2, 4]} for KD, {alp_scale: ["1", sqrt_d]} for the ALP family. Grid sampler only.
    extra: dict[str, tuple[float | str, ...]] = {}

    @field_validator("extra")
    @classmethod
    def _extra_grids(cls, grids: dict) -> dict:
        for name, values in grids.items():
            if not values or len(set(values)) != len(values):
                raise ValueError(f"extra.{name} must list distinct values, got {list(values)}")
        return grids

    @field_validator("lr", "eta", "lambda_")
    @classmethod
    def _non_empty_unique(cls, values: tuple[float, ...]) -> tuple[float, ...]:
        if not values:
            raise ValueError("must list at least one value")
        if len(set(values)) != len(values):
            raise ValueError(f"lists a value twice: {list(values)}")
        return tuple(sorted(values))

    @field_validator("lr")
    @classmethod
    def _learning_rates(cls, values: tuple[float, ...]) -> tuple[float, ...]:
        bad = [v for v in values if not 0 < v < 1]
        if bad:
            raise ValueError(f"learning rates must be positive and below 1 (e.g. 5.0e-5 for 5e-5), got {bad}")
        return values

    @field_validator("eta", "lambda_")
    @classmethod
    def _in_unit_interval(cls, values: tuple[float, ...]) -> tuple[float, ...]:
        bad = [v for v in values if not 0.0 <= v <= 1.0]
        if bad:
            raise ValueError(f"loss weights must lie in [0, 1], got {bad}")
        return values


class SlurmBlock(_Strict):
    """A study file's ``slurm:`` block: the launcher's defaults (``run_study.py slurm``), each overridden by the
    command-line flag of the same name. Where a sweep runs changes no result: the block is not in the study's
    fingerprint. Several files given to one ``slurm`` command may each have a block; a key two of them set
    differently is refused (:func:`harness.sweep.slurm.options_from`)."""

    workers: int | None = Field(None, ge=1)
    gpus_per_worker: int | None = Field(None, ge=0)
    cpus_per_worker: int | None = Field(None, ge=1)
    mem: str | None = None
    partition: str | None = None
    time: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    nodelist: str | None = None
    sbatch: tuple[str, ...] = ()  # extra sbatch options, e.g. ["--exclusive"]


class StudyConfig(_Strict):
    """One study file: one task, one teacher, one student depth, several methods."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    task: str
    teacher: str
    student_layers: int = Field(ge=1)
    # where the student comes from (hub id or folder; same tokenizer as the teacher); default: the teacher
    student_from: str | None = None
    methods: tuple[str, ...] = Field(min_length=1)
    plugins: tuple[str, ...] = ()
    label: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.=-]*$", max_length=40)
    data_dir: str | None = None
    fixed: Fixed = Fixed()
    search: Search = Search()
    slurm: SlurmBlock | None = None

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        try:
            return get_task(value).name
        except HarnessError as error:
            raise ValueError(str(error)) from None

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for key in values:
            try:
                get_method(key)
            except HarnessError as error:
                raise ValueError(str(error)) from None
        if len(set(values)) != len(values):
            raise ValueError(f"lists a method twice: {list(values)}")
        return values

    def row_key(self, method: str) -> str:
        """The report's row for ``method`` in this study file: ``alp``, or ``alp [sqrt_d]`` with a ``label``."""
        return method if self.label is None else f"{method} [{self.label}]"

    def study_name(self, method: str) -> str:
        """The Optuna study name for one method, readable by a person: ``demo/SST-2/alp``."""
        return f"{self.name}/{self.task}/{method}"

    def fingerprint(self, method: str) -> str:
        """A hash of everything that determines a trial's result except the searched values.

        Stored with the study, so that reusing a study name with a different set-up is refused.
        """
        payload = self.model_dump(
            mode="json", by_alias=True, exclude={"methods", "data_dir", "plugins", "label", "slurm"}
        )
        payload["method"] = method
        if payload["student_from"] is None:  # studies made before student_from keep their hash
            payload.pop("student_from")
        payload["search"].pop("n_trials")
        if not payload["search"]["extra"]:  # studies made before the extra axis keep their hash
            payload["search"].pop("extra")
        if payload["fixed"]["selection"] == "dev":  # studies made before selection existed keep their hash
            for key in ("selection", "holdout_fraction", "holdout_max_samples"):
                payload["fixed"].pop(key)
        if payload["fixed"]["precision"] == "auto":  # likewise for precision
            payload["fixed"].pop("precision")
        if not payload["fixed"]["deterministic"]:  # and for deterministic
            payload["fixed"].pop("deterministic")
        for key, default in TEACHER_DEFAULTS.items():  # and for the as-is teacher's keys
            if payload["fixed"]["teacher"][key] == default:
                payload["fixed"]["teacher"].pop(key)
        # what is kept on disk does not change a result; the hash stays the one of studies made before
        payload["fixed"].pop("keep_students")
        payload["fixed"]["save_students"] = False
        # Students get a freshly initialised pooler and classifier since issue 22 (before, a student cut from a
        # checkpoint that ships a pooler inherited it): a study begun before is refused, not continued with
        # trials of both kinds.
        payload["student_heads"] = "fresh"
        return fingerprint(payload)


def _one_line(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    given = first.get("input")
    shown = "" if isinstance(given, (dict, list)) or given is None or repr(given) in message else f" (got {given!r})"
    more = f" [+{error.error_count() - 1} more]" if error.error_count() > 1 else ""
    return f"{source}: {where}: {message}{shown}{more}"


def parse_study(data: object, source: str = "study", base_dir: Path | list[Path] | None = None) -> StudyConfig:
    """Validate an already-loaded mapping; errors become one-line :class:`HarnessError`.

    Its ``plugins`` are imported first (``base_dir``, the study file's folder, first on ``sys.path``)."""
    if not isinstance(data, dict):
        raise HarnessError(f"{source}: expected a mapping of keys at the top level, got {type(data).__name__}")
    plugins = data.get("plugins") or []
    if not isinstance(plugins, list):
        raise HarnessError(f"{source}: plugins: expected a list of module names, got {plugins!r}")
    try:
        load_plugins(plugins, base_dir)
    except HarnessError as error:
        raise HarnessError(f"{source}: {error}") from None
    try:
        config = StudyConfig.model_validate(data)
    except ValidationError as error:
        raise HarnessError(_one_line(error, source)) from None
    declared = {get_method(m).extra[0] for m in config.methods if get_method(m).extra}
    for name in config.search.extra:
        if name not in declared:
            raise HarnessError(
                f"{source}: search.extra: no listed method searches {name!r} "
                f"(allowed: {', '.join(sorted(declared)) or 'none'})"
            )
    if config.search.extra and config.search.sampler != "grid":
        raise HarnessError(f"{source}: search.extra needs sampler: grid (got {config.search.sampler!r})")
    for method in config.methods:
        if not grid_points(config, method):
            raise HarnessError(
                f"{source}: method '{method}' has no valid grid point: every η+λ exceeds 1 "
                f"(eta={list(config.search.eta)}, lambda={list(config.search.lambda_)})"
            )
    return config


def load_study(path: str | Path) -> StudyConfig:
    """Read and validate a study file."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as error:
        raise HarnessError(f"cannot read study file {str(path)!r}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        line = error.object[: error.start].count(b"\n") + 1
        raise HarnessError(
            f"study file {str(path)!r} line {line}: not UTF-8 text (allowed: a UTF-8 YAML file)"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise HarnessError(f"study file {str(path)!r} is not valid YAML{where}") from None
    return parse_study(data, source=str(path), base_dir=path.resolve().parent)


def grid_points(config: StudyConfig, method: str) -> list[dict[str, float]]:
    """The valid paper-grid points for one method: dicts with ``lr``, ``eta`` and ``lambda``.

    NKD: lr only (η = λ = 0). KD: lr × η with λ = 0. Inter-layer methods: lr × η × λ with
    β = 1 − η − λ ≥ 0. Sorted, so every worker sees the same order.
    """
    spec = get_method(method)
    etas = config.search.eta if spec.searches_eta else (0.0,)
    lambdas = config.search.lambda_ if spec.searches_lambda else (0.0,)
    points = [
        {"lr": lr, "eta": eta, "lambda": lam}
        for lr, eta, lam in itertools.product(config.search.lr, etas, lambdas)
        if eta + lam <= 1.0 + _EPS
    ]
    if spec.extra is not None and spec.extra[0] in config.search.extra:  # the method's one more axis
        name = spec.extra[0]
        points = [{**p, name: value} for p in points for value in config.search.extra[name]]
    return points


WEIGHT_KEYS = ("lr", "eta", "lambda", "seed")


def uses_live_teacher(config: StudyConfig, method: str) -> bool:
    """Whether ``method``'s trials read the live teacher (``fixed.teacher_outputs: live``, or states the cache does
    not hold) rather than the cached teacher outputs."""
    spec = get_method(method)
    return config.fixed.teacher_outputs == "live" or needs_live_teacher(spec, config.fixed.alp_tokens)


def probes_alpha(config: StudyConfig) -> bool:
    """Whether the study runs ALP's α probe (a method with the ``alp`` inter-layer family), so that its teacher's
    dev [CLS] states are kept."""
    return any(get_method(m).inter == "alp" for m in config.methods)


def extra_values(point: dict) -> dict:
    """The point's value of a method's extra axis (``{}`` without one), e.g. ``{"temperature": 2.0}``."""
    return {k: v for k, v in point.items() if k not in WEIGHT_KEYS}


def extra_part(key) -> str:
    """The ``name=value`` a :func:`point_key` ends with for a method's extra searched value (``temperature=2``),
    or ``""`` (no extra axis, or no key)."""
    extra = key.split(",", 3)[3:] if isinstance(key, str) else []
    return extra[0] if extra else ""


def grid_rank(attrs: Mapping) -> tuple:
    """Where a trial's point stands in **grid order**, the one tie-break of every selection (the report's best of
    grid, equal budget, paired tests and α; ``confirm --top``; ``export --best``; ``keep_students: best``).

    ``attrs``: a trial's user attributes or a report row (``lr``, ``eta``, ``lambda``, ``point``, ``seed``).
    Ascending lr, then η, then λ, then the method's extra searched value (read from the point key; numbers
    before texts, each ascending: ``temperature=2`` before ``temperature=10``), then the seed; a value not
    recorded sorts last. It depends on the points and seeds alone, not on the order the workers ran them in.
    """
    text = extra_part(attrs.get("point")).split("=", 1)[-1]
    try:
        extra_rank = (0, float(text), "") if text else (0, 0.0, "")
    except ValueError:
        extra_rank = (1, 0.0, text)
    lr, eta, lam, seed = (_rank(attrs.get(key)) for key in ("lr", "eta", "lambda", "seed"))
    return (lr, eta, lam, extra_rank, seed)


def best_first(trial) -> tuple:
    """A sort key that puts a study's best trial first: highest value, equal values in :func:`grid_rank` order,
    then (the same point and seed run twice) the earlier trial. ``trial``: an Optuna trial with a value."""
    return (-trial.value, grid_rank(trial.user_attrs), trial.number)


def _rank(value) -> tuple:
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    try:
        return (1, 0.0) if missing else (0, float(value))
    except (TypeError, ValueError):  # pandas' NA, a stray text
        return (1, 0.0)


def point_key(point: dict[str, float]) -> str:
    """A stable text key for a grid point, e.g. ``lr=5e-05,eta=0.5,lambda=0.2`` (``,temperature=2`` with an
    extra axis; points without one keep the keys they had before)."""
    key = f"lr={point['lr']:g},eta={point['eta']:g},lambda={point['lambda']:g}"
    for name, value in extra_values(point).items():
        key += f",{name}={value:g}" if isinstance(value, (int, float)) else f",{name}={value}"
    return key
