"""The teacher of one study in one worker process: fine-tuned once, its outputs cached, its dev states.

The fine-tuned teacher is cached under ``<cache>/teachers/<key>`` (the key fingerprints its source, task,
recipe, data and seed), fine-tuned by one process under a file lock with a checkpoint per epoch, and
published by an atomic rename. Teacher outputs (logits and the [CLS] vector of every teacher layer) for the
student's training set are computed once per (teacher checkpoint, encoded training set) and cached on disk
as ``.npy`` files, memory-mapped when read. A manifest with each file's sha256 is written last and the
folder is published by an atomic rename, so a killed writer leaves nothing that is ever read; a cache
whose files do not match their manifest is rebuilt. The teacher runs in eval mode, so cached and live
outputs agree. ``fixed.teacher_cache_dtype`` stores the [CLS] vectors as float32 (default) or float16
(half the disk and page cache; logits stay float32).

The dev [CLS] states of ALP's α probe (float32) belong to the teacher, like its dev score: they are kept in its
folder, ``<cache>/teachers/<key>/dev_states-<dev encoding>``, with a manifest like the outputs'. For a study
with an ALP method they are taken from the pass that scores the teacher on dev (the last epoch's evaluation of
its fine-tuning, or the one scoring of a ``finetune: false`` teacher) when that pass runs in float32 (the CPU,
or ``precision: fp32``): no teacher pass of their own. Otherwise (a GPU's autocast, a teacher cached by a study
without ALP or by an older version, a damaged copy) one float32 pass builds them on first need.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from transformers import AutoModelForSequenceClassification

from harness.data.encoding import EncodedSplit, encode_split
from harness.distill.batches import eval_batches, to_batch, token_lengths
from harness.distill.device import autocast_for
from harness.distill.last_layer import cls_only
from harness.distill.models import load_classifier, load_config, weights_sha256
from harness.distill.teacher_checks import check_head, refuse_chance
from harness.distill.train import Hyper, TeacherSignal, evaluate, fit, layer_cls, predict, primary_value
from harness.spec.config import TEACHER_DEFAULTS, StudyConfig, probes_alpha
from harness.spec.tasks import GlueSplit, TaskSpec, subsample
from harness.util import signals
from harness.util.errors import HarnessError
from harness.util.files import atomic_folder, ensure_space, reserve
from harness.util.hashing import fingerprint, sha256_file

TEACHER_INFO = "harness_teacher.json"


@dataclass(frozen=True)
class PreparedTeacher:
    key: str
    path: Path
    dev_metrics: dict
    value: float


class LastStates:
    """An evaluation probe that keeps the last dev [CLS] states it is given (the teacher's, for ALP's α probe)."""

    def __init__(self):
        self.cls: np.ndarray | None = None

    def __call__(self, cls: np.ndarray) -> dict:
        self.cls = cls
        return {}


def encoding_hash(data: EncodedSplit) -> str:
    digest = hashlib.sha256()
    for feature in data.features:
        digest.update(np.asarray(feature["input_ids"], dtype=np.int32).tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:16]


class Teacher:
    """The teacher's life cycle for one study file: :meth:`prepare` (fine-tune or load), :meth:`signal`
    (cached outputs or the live model), :meth:`dev_cls` (its dev [CLS] states, for ALP's α probe)."""

    def __init__(
        self,
        config: StudyConfig,
        task: TaskSpec,
        pretrained: str,
        tokenizer,
        data_hashes: dict[str, str],
        full_train: GlueSplit,
        train: EncodedSplit,
        evals: dict[str, EncodedSplit],
        cache_dir: Path,
        device: torch.device,
        progress: bool = True,
    ):
        """``full_train``: the training split without the holdout slice, before the students' subsampling
        (the teacher subsamples it by its own recipe); ``train``: the students' encoded training set."""
        self.config = config
        self.task = task
        self.pretrained = pretrained
        self.tokenizer = tokenizer
        self.pad_token_id = tokenizer.pad_token_id or 0
        self.data_hashes = data_hashes
        self.full_train = full_train
        self.train = train
        self.evals = evals
        self.cache_dir = cache_dir
        self.device = device
        self.progress = progress
        self.prepared: PreparedTeacher | None = None
        self._signal: TeacherSignal | None = None
        self._dev_cls: np.ndarray | None = None
        self._weights: str | None = None
        self._prepared_weights: str | None = None
        self._outputs: str | None = None

    def key(self) -> str:
        """The teacher's identity. Fine-tuned here: its source, task, recipe, data, ``max_seq_length`` and seed.
        Used as it is (``finetune: false``): its weights' sha256, with the task and the files its dev score is
        measured on."""
        fixed = self.config.fixed
        if not fixed.teacher.finetune:
            evals = {split: self.data_hashes[split] for split in self.task.eval_splits}
            return fingerprint(
                {
                    "weights": self.weights_sha256(),
                    "task": self.task.name,
                    "data": evals,
                    "max_seq_length": fixed.max_seq_length,
                }
            )
        recipe = fixed.teacher.model_dump(exclude=set(TEACHER_DEFAULTS))
        payload = {
            "source": self.config.teacher,
            "task": self.task.name,
            "recipe": recipe,
            "data": self.data_hashes,
            "max_seq_length": fixed.max_seq_length,
            "seed": fixed.seed,
        }
        if fixed.selection == "holdout":  # the teacher never trains on the holdout slice either
            payload["holdout"] = [fixed.holdout_fraction, fixed.holdout_max_samples]
        return fingerprint(payload)

    def weights_sha256(self) -> str:
        if self._weights is None:
            self._weights = weights_sha256(self.pretrained)
        return self._weights

    def prepared_weights_sha256(self) -> str:
        """The sha256 of the weights the students are distilled from: the fine-tuned folder's, or the as-is
        checkpoint's (:meth:`weights_sha256`); hashed once per process, however many studies record it."""
        if self._prepared_weights is None:
            teacher = self.prepare()
            finetuned = self.config.fixed.teacher.finetune
            self._prepared_weights = weights_sha256(str(teacher.path)) if finetuned else self.weights_sha256()
        return self._prepared_weights

    def outputs_sha256(self) -> str:
        """The identity of the teacher-output cache the students read: the sha256 of its files' sha256s (their
        manifest, which every read checks the files against); the cache is built here if it is not yet."""
        if self._outputs is None:
            self.signal(live=False)
            manifest = json.loads((self.outputs_dir() / "manifest.json").read_text())
            digest = hashlib.sha256()
            for name in ("logits", "cls"):
                digest.update(f"{name}:{manifest[name]['sha256']};".encode())
            self._outputs = digest.hexdigest()
        return self._outputs

    def folder(self) -> Path:
        """Where the fine-tuned teacher is cached (complete once it holds :data:`TEACHER_INFO`)."""
        return self.cache_dir / "teachers" / self.key()

    def prepare(self) -> PreparedTeacher:
        """Fine-tune the teacher on the task, or load it from the cache."""
        if self.prepared is not None:
            return self.prepared
        final = self.folder()
        key = final.name
        final.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(final) + ".lock"):
            if not (final / TEACHER_INFO).is_file():
                self._fine_tune(final) if self.config.fixed.teacher.finetune else self._score_as_is(final)
        info = json.loads((final / TEACHER_INFO).read_text())
        path = final if self.config.fixed.teacher.finetune else Path(self.pretrained)
        self.prepared = PreparedTeacher(key=key, path=path, dev_metrics=info["dev_metrics"], value=info["value"])
        return self.prepared

    def _score_as_is(self, final: Path) -> None:
        """``finetune: false``: check the checkpoint's head, score it on dev once, refuse it at chance; the
        folder then holds only :data:`TEACHER_INFO` (the weights stay where they are)."""
        check_head(load_config(self.pretrained), self.task, self.config.teacher)
        model = load_classifier(self.pretrained).to(self.device)
        fixed = self.config.fixed
        keep = self._dev_states_probe("auto")
        metrics, _, _ = evaluate(
            model, self.task, self.evals, fixed.eval_batch_size, self.pad_token_id, self.device, keep
        )
        value = primary_value(self.task, metrics)
        dev = self.evals[self.task.eval_splits[0]]
        refuse_chance(self.task, value, dev.labels, self.config.teacher, fixed.teacher.allow_chance)
        with atomic_folder(final) as tmp:
            info = {
                "source": self.config.teacher,
                "finetune": False,
                "weights_sha256": self.weights_sha256(),
                "task": self.task.name,
                "dev_metrics": metrics,
                "value": value,
                "data": self.data_hashes,
            }
            self._keep_dev_states(tmp, keep)
            (tmp / TEACHER_INFO).write_text(json.dumps(info, indent=2))

    def _fine_tune(self, final: Path) -> None:
        recipe, fixed = self.config.fixed.teacher, self.config.fixed
        torch.manual_seed(fixed.seed)
        model = AutoModelForSequenceClassification.from_pretrained(self.pretrained, num_labels=self.task.num_labels)
        if not self.task.is_regression:  # so that the saved teacher names its classes (finetune: false checks them)
            model.config.id2label = dict(enumerate(self.task.label_names))
            model.config.label2id = {name: index for index, name in enumerate(self.task.label_names)}
        train = encode_split(
            subsample(self.full_train, recipe.max_train_samples, fixed.seed), self.tokenizer, fixed.max_seq_length
        )
        hyper = Hyper(
            lr=recipe.lr,
            epochs=recipe.epochs,
            batch_size=recipe.batch_size,
            eval_batch_size=fixed.eval_batch_size,
            seed=fixed.seed,
            warmup_ratio=recipe.warmup_ratio,
            weight_decay=recipe.weight_decay,
            max_grad_norm=fixed.max_grad_norm,
        )
        checkpoint = final.with_name(final.name + ".ckpt")
        keep = self._dev_states_probe(hyper.precision)
        history = fit(
            model,
            self.task,
            hyper,
            train,
            self.evals,
            self.pad_token_id,
            checkpoint=checkpoint,
            desc=f"teacher {self.config.teacher}",
            device=self.device,
            progress=self.progress,
            probe=keep,
        )
        # The teacher used for distillation is the model after its last epoch (not the best epoch).
        last = history.epochs[-1]
        with atomic_folder(final) as tmp:
            model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            self._keep_dev_states(tmp, keep)  # the last epoch's: the teacher's
            (tmp / TEACHER_INFO).write_text(
                json.dumps(
                    {
                        "source": self.config.teacher,
                        "task": self.task.name,
                        "recipe": recipe.model_dump(),
                        "dev_metrics": last["metrics"],
                        "value": last["value"],
                        "history": history.epochs,
                        "data": self.data_hashes,
                    },
                    indent=2,
                )
            )
        checkpoint.unlink(missing_ok=True)

    def load_model(self):
        teacher = self.prepare()
        model = AutoModelForSequenceClassification.from_pretrained(str(teacher.path))
        return model.to(self.device).eval()

    def signal(self, live: bool) -> TeacherSignal:
        """Teacher outputs for the student's training set: cached arrays, or the live teacher."""
        if live:
            return TeacherSignal(live=self.load_model())
        if self._signal is None:
            self._signal = self._cached_outputs()
        return self._signal

    def outputs_dir(self) -> Path:
        teacher = self.prepare()
        dtype = self.config.fixed.teacher_cache_dtype
        return self.cache_dir / "teacher_outputs" / f"{teacher.key}-{self._train_hash}-{dtype}"

    def _cached_outputs(self) -> TeacherSignal:
        final = self.outputs_dir()
        final.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(final) + ".lock"):
            signal = read_outputs(final, len(self.train))
            if signal is None:
                shutil.rmtree(final, ignore_errors=True)
                self._write_outputs(final)
                signal = read_outputs(final, len(self.train))
        if signal is None:
            raise HarnessError(f"teacher output cache {str(final)!r} could not be written and read back")
        return signal

    @torch.no_grad()
    def _write_outputs(self, final: Path) -> None:
        model = self.load_model()
        n = len(self.train)
        dtype = np.dtype(self.config.fixed.teacher_cache_dtype)
        cls_shape = (n, model.config.num_hidden_layers, model.config.hidden_size)
        ensure_space(final.parent, output_cache_bytes(n, model.config.num_labels, cls_shape[1:], dtype))
        with atomic_folder(final) as tmp:
            # Written straight into memory-mapped files (MNLI × BERT-base is ~14 GB of [CLS] vectors), their
            # blocks reserved first: a write through a map to a full disk would kill the process (SIGBUS).
            logits = np.lib.format.open_memmap(
                tmp / "logits.npy", mode="w+", dtype=np.float32, shape=(n, model.config.num_labels)
            )
            cls = np.lib.format.open_memmap(tmp / "cls.npy", mode="w+", dtype=dtype, shape=cls_shape)
            reserve(tmp / "logits.npy")
            reserve(tmp / "cls.npy")
            for index in eval_batches(token_lengths(self.train), self.config.fixed.eval_batch_size):
                signals.check()
                batch = to_batch(self.train, index, self.pad_token_id, self.device)
                batch.pop("labels")
                with cls_only(model):  # the cache holds logits and [CLS] states: the top layer's [CLS] position
                    out = model(**batch, output_hidden_states=True)
                logits[index] = out.logits.float().cpu().numpy()
                cls[index] = layer_cls(out.hidden_states).float().cpu().numpy()
            manifest = {}
            for name, array in (("logits", logits), ("cls", cls)):
                array.flush()
                manifest[name] = {"shape": list(array.shape), "sha256": sha256_file(tmp / f"{name}.npy")}
            del logits, cls
            (tmp / "manifest.json").write_text(json.dumps(manifest))

    def _dev_states_probe(self, precision: str) -> LastStates | None:
        """The probe that keeps the dev states of the pass scoring the teacher, where the study runs the α probe
        and that pass is float32 (the states are compared against float32 teacher states everywhere)."""
        if not probes_alpha(self.config) or autocast_for(self.device, precision)[1] is not None:
            return None
        return LastStates()

    def _keep_dev_states(self, folder: Path, keep: LastStates | None) -> None:
        """Write the kept dev states into the teacher folder being published (``folder``), if there are any (a
        fine-tuning resumed after its last epoch ran no evaluation)."""
        if keep is not None and keep.cls is not None:
            states = folder / self._dev_states_name()
            states.mkdir()
            write_states(states, keep.cls, SCORING)

    def _dev_states_name(self) -> str:
        return f"dev_states-{self._dev_hash}"

    @functools.cached_property
    def _train_hash(self) -> str:
        return encoding_hash(self.train)  # hashed once per process: every token of the training set

    @functools.cached_property
    def _dev_hash(self) -> str:
        return encoding_hash(self.evals[self.task.eval_splits[0]])

    def dev_states_dir(self) -> Path:
        """Where the dev [CLS] states of :meth:`dev_cls` are kept: in the teacher's folder."""
        self.prepare()
        return self.folder() / self._dev_states_name()

    def dev_cls(self) -> np.ndarray:
        """The teacher's [CLS] vector of every layer on the first eval split, ``[n, N, H]``, float32.

        Kept in the teacher's folder (from its dev scoring, or built here once by a float32 pass; a manifest with
        sha256, rebuilt when it does not match), so ALP's α probe costs no teacher pass in the processes after
        the first; read into memory once per process."""
        if self._dev_cls is None:
            data = self.evals[self.task.eval_splits[0]]
            final = self.dev_states_dir()
            with FileLock(str(final) + ".lock"):
                arrays = read_arrays(final, len(data), ("cls",))
                if arrays is None:
                    shutil.rmtree(final, ignore_errors=True)
                    self._write_dev_states(final, data)
                    arrays = read_arrays(final, len(data), ("cls",))
            if arrays is None:
                raise HarnessError(f"teacher dev-state cache {str(final)!r} could not be written and read back")
            self._dev_cls = np.array(arrays["cls"])  # in memory: the probe runs on it every epoch
        return self._dev_cls

    def _write_dev_states(self, final: Path, data: EncodedSplit) -> None:
        _, cls = predict(
            self.load_model(),
            data,
            self.config.fixed.eval_batch_size,
            self.pad_token_id,
            self.device,
            states=True,
            precision="fp32",  # like the teacher-output cache: α is compared against float32 teacher states
        )
        with atomic_folder(final) as tmp:
            write_states(tmp, cls, OWN_PASS)


SCORING, OWN_PASS = "the teacher's dev scoring", "a float32 pass of their own"


def write_states(folder: Path, cls: np.ndarray, made_by: str) -> None:
    """Dev [CLS] states into ``folder``: ``cls.npy`` and the manifest :func:`read_arrays` checks it against, which
    also says what made them (:data:`SCORING` or :data:`OWN_PASS`)."""
    np.save(folder / "cls.npy", cls)
    manifest = {"cls": {"shape": list(cls.shape), "sha256": sha256_file(folder / "cls.npy")}, "made_by": made_by}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def output_cache_bytes(n: int, num_labels: int, cls_shape: tuple[int, int], dtype) -> int:
    """The size of a teacher-output cache of ``n`` examples: float32 logits and ``[layers, hidden]`` [CLS]
    vectors per example in ``dtype``."""
    return n * num_labels * 4 + n * cls_shape[0] * cls_shape[1] * np.dtype(dtype).itemsize


def read_arrays(folder: Path, n: int, names: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """Memory-map the ``names`` arrays of a cache folder (``n`` rows each), or ``None`` if any is missing,
    partial or does not match the folder's manifest."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        arrays = {}
        for name in names:
            path = folder / f"{name}.npy"
            if sha256_file(path) != manifest[name]["sha256"]:
                return None
            arrays[name] = np.load(path, mmap_mode="r")
            if list(arrays[name].shape) != manifest[name]["shape"] or arrays[name].shape[0] != n:
                return None
    except (OSError, ValueError, KeyError):
        return None
    return arrays


def read_outputs(folder: Path, n: int) -> TeacherSignal | None:
    """Memory-map a teacher-output cache, or ``None`` if it is missing, partial or corrupt."""
    arrays = read_arrays(folder, n, ("logits", "cls"))
    return None if arrays is None else TeacherSignal(logits=arrays["logits"], cls=arrays["cls"])
