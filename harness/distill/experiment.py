"""Everything the trials of one study file share: task data, tokenizer, fine-tuned teacher, teacher outputs.

:class:`Experiment` is built once per worker process and then runs any number of trials.

Teacher outputs (logits and the [CLS] vector of every teacher layer) for the student's training set
are computed once per (teacher checkpoint, encoded training set) and cached on disk as ``.npy``
files, memory-mapped when read. A manifest with each file's sha256 is written last and the folder
is published by an atomic rename, so a killed writer leaves nothing that is ever read; a cache
whose files do not match their manifest is rebuilt. The teacher runs in eval mode, so cached and
live outputs agree. Methods that need every token (``alp_tokens: all``) use the live teacher, and so does every
method with ``fixed.teacher_outputs: live``. ``fixed.teacher_cache_dtype`` stores the [CLS]
vectors as float32 (default) or float16 (half the disk and page cache; logits stay float32).
"""

from __future__ import annotations

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
from harness.data.holdout import HOLDOUT_SPLIT, split_holdout
from harness.data.loading import load_split
from harness.distill.device import pick_device
from harness.distill.losses import InterLayerLoss
from harness.distill.models import (
    build_student,
    check_student_depth,
    load_config,
    load_tokenizer,
    resolve_pretrained,
)
from harness.distill.train import (
    History,
    Hyper,
    TeacherSignal,
    eval_batches,
    fit,
    layer_cls,
    predict,
    to_batch,
    token_lengths,
)
from harness.spec.config import StudyConfig
from harness.spec.methods import get_method
from harness.spec.tasks import GlueSplit, get_task, subsample
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


def encoding_hash(data: EncodedSplit) -> str:
    digest = hashlib.sha256()
    for feature in data.features:
        digest.update(np.asarray(feature["input_ids"], dtype=np.int32).tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:16]


class Experiment:
    """The shared state of one study file in one worker process."""

    def __init__(
        self,
        config: StudyConfig,
        data_dir: Path | None,
        cache_dir: Path,
        progress: bool = True,
        device: torch.device | None = None,
    ):
        """``device``: where this process trains (default: the first CUDA device, else the CPU)."""
        self.config = config
        self.cache_dir = cache_dir
        self.progress = progress
        self.task = get_task(config.task)
        self.device = device or pick_device()
        self.pretrained = resolve_pretrained(config.teacher)
        self.tokenizer = load_tokenizer(self.pretrained)
        check_student_depth(self.pretrained, config.student_layers)  # before any fine-tuning
        self.pad_token_id = self.tokenizer.pad_token_id or 0
        fixed = config.fixed
        train = load_split(self.task, "train", data_dir)
        self.data_hashes = {"train": train.sha256}
        self.evals: dict[str, EncodedSplit] = {}
        for split in self.task.eval_splits:
            loaded = load_split(self.task, split, data_dir)
            self.data_hashes[split] = loaded.sha256
            self.evals[split] = encode_split(loaded, self.tokenizer, fixed.max_seq_length)
        # The split whose score chooses the epoch and the grid point (see harness.data.holdout).
        self.select_split = self.task.eval_splits[0]
        if fixed.selection == "holdout":
            train, held = split_holdout(
                train, fixed.holdout_fraction, fixed.seed, fixed.holdout_max_samples, regression=self.task.is_regression
            )
            self.evals[HOLDOUT_SPLIT] = encode_split(held, self.tokenizer, fixed.max_seq_length)
            self.select_split = HOLDOUT_SPLIT
        self.train = encode_split(
            subsample(train, fixed.max_train_samples, fixed.seed), self.tokenizer, fixed.max_seq_length
        )
        self._full_train: GlueSplit = train  # without the holdout slice, if any
        self.teacher: PreparedTeacher | None = None
        self._signal: TeacherSignal | None = None
        self._teacher_dev_cls: np.ndarray | None = None

    # ------------------------------------------------------------------ teacher
    def teacher_key(self) -> str:
        fixed = self.config.fixed
        payload = {
            "source": self.config.teacher,
            "task": self.task.name,
            "recipe": fixed.teacher.model_dump(),
            "data": self.data_hashes,
            "max_seq_length": fixed.max_seq_length,
            "seed": fixed.seed,
        }
        if fixed.selection == "holdout":  # the teacher never trains on the holdout slice either
            payload["holdout"] = [fixed.holdout_fraction, fixed.holdout_max_samples]
        return fingerprint(payload)

    def teacher_folder(self) -> Path:
        """Where the fine-tuned teacher is cached (complete once it holds :data:`TEACHER_INFO`)."""
        return self.cache_dir / "teachers" / self.teacher_key()

    def prepare_teacher(self) -> PreparedTeacher:
        """Fine-tune the teacher on the task, or load it from the cache."""
        if self.teacher is not None:
            return self.teacher
        final = self.teacher_folder()
        key = final.name
        final.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(final) + ".lock"):
            if not (final / TEACHER_INFO).is_file():
                self._fine_tune_teacher(final)
        info = json.loads((final / TEACHER_INFO).read_text())
        self.teacher = PreparedTeacher(key=key, path=final, dev_metrics=info["dev_metrics"], value=info["value"])
        return self.teacher

    def _fine_tune_teacher(self, final: Path) -> None:
        recipe, fixed = self.config.fixed.teacher, self.config.fixed
        torch.manual_seed(fixed.seed)
        model = AutoModelForSequenceClassification.from_pretrained(self.pretrained, num_labels=self.task.num_labels)
        train = encode_split(
            subsample(self._full_train, recipe.max_train_samples, fixed.seed), self.tokenizer, fixed.max_seq_length
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
        )
        # The teacher used for distillation is the model after its last epoch (not the best epoch).
        last = history.epochs[-1]
        with atomic_folder(final) as tmp:
            model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
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

    def load_teacher_model(self):
        teacher = self.prepare_teacher()
        model = AutoModelForSequenceClassification.from_pretrained(teacher.path)
        return model.to(self.device).eval()

    # ------------------------------------------------------------------ teacher outputs
    def teacher_signal(self, live: bool) -> TeacherSignal:
        """Teacher outputs for the student's training set: cached arrays, or the live teacher."""
        if live:
            return TeacherSignal(live=self.load_teacher_model())
        if self._signal is None:
            self._signal = self._cached_outputs()
        return self._signal

    def outputs_dir(self) -> Path:
        teacher = self.prepare_teacher()
        dtype = self.config.fixed.teacher_cache_dtype
        return self.cache_dir / "teacher_outputs" / f"{teacher.key}-{encoding_hash(self.train)}-{dtype}"

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
        model = self.load_teacher_model()
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
                out = model(**batch, output_hidden_states=True)
                logits[index] = out.logits.float().cpu().numpy()
                cls[index] = layer_cls(out.hidden_states).float().cpu().numpy()
            manifest = {}
            for name, array in (("logits", logits), ("cls", cls)):
                array.flush()
                manifest[name] = {"shape": list(array.shape), "sha256": sha256_file(tmp / f"{name}.npy")}
            del logits, cls
            (tmp / "manifest.json").write_text(json.dumps(manifest))

    def teacher_dev_cls(self) -> np.ndarray:
        """The teacher's [CLS] vector of every layer on the first eval split, ``[n, N, H]`` (computed once)."""
        if self._teacher_dev_cls is None:
            data = self.evals[self.task.eval_splits[0]]
            _, self._teacher_dev_cls = predict(
                self.load_teacher_model(),
                data,
                self.config.fixed.eval_batch_size,
                self.pad_token_id,
                self.device,
                states=True,
                precision="fp32",  # like the teacher-output cache: α is compared against float32 teacher states
            )
        return self._teacher_dev_cls

    def alpha_probe(self, inter: InterLayerLoss):
        """After each epoch: ALP's mean attention α over dev ``[M × N]`` and its mean entropy (nats)."""
        teacher = torch.from_numpy(self.teacher_dev_cls())

        @torch.no_grad()
        def probe(student_cls: np.ndarray) -> dict:
            student = torch.from_numpy(student_cls)
            alpha = torch.cat(
                [
                    inter.attention(s.to(self.device), t.to(self.device)).float().cpu()
                    for s, t in zip(student.split(1024), teacher.split(1024))
                ]
            )
            entropy = torch.special.entr(alpha).sum(-1).mean()
            return {"alpha": alpha.mean(0).tolist(), "alpha_entropy": float(entropy)}

        return probe

    # ------------------------------------------------------------------ trials
    def hyper(self, point: dict[str, float], seed: int) -> Hyper:
        """A student run's values at one grid point: the point's lr, η, λ and the study file's fixed set-up."""
        fixed = self.config.fixed
        return Hyper(
            lr=point["lr"],
            eta=point["eta"],
            lam=point["lambda"],
            epochs=fixed.epochs,
            batch_size=fixed.batch_size,
            eval_batch_size=fixed.eval_batch_size,
            seed=seed,
            temperature=fixed.temperature,
            warmup_ratio=fixed.warmup_ratio,
            weight_decay=fixed.weight_decay,
            max_grad_norm=fixed.max_grad_norm,
            precision=fixed.precision,
        )

    def run_trial(
        self,
        method: str,
        point: dict[str, float],
        seed: int | None = None,
        checkpoint: Path | None = None,
        on_epoch=None,
        desc: str | None = None,
        save_to: Path | None = None,
        save_epoch: str = "best",
        epochs: int | None = None,
    ) -> History:
        """Distil the teacher into a fresh student with one grid point's values.

        With ``save_to``, the trained student after its ``save_epoch`` (``best``, or ``last``) is published
        there atomically as a Hugging Face folder (``save_pretrained``: weights, config with the task's
        label names, tokenizer), with the inter-layer loss's trained parameters (CKD's projections)
        as ``inter_layer_loss.pt`` (those are of the last epoch). ``epochs`` stops the run after that many
        epochs of the study's schedule (the learning-rate schedule still spans ``fixed.epochs``), which
        gives exactly the weights an uninterrupted trial had after that epoch.
        """
        fixed = self.config.fixed
        spec = get_method(method)
        seed = fixed.seed if seed is None else seed
        teacher = self.prepare_teacher()
        teacher_config = load_config(str(teacher.path))
        student = build_student(
            self.pretrained, self.config.student_layers, self.task.num_labels, fixed.student_init, seed
        )
        inter = None
        signal = None
        if spec.searches_eta:
            if spec.inter is not None:
                inter = InterLayerLoss(
                    spec,
                    teacher_config.num_hidden_layers,
                    self.config.student_layers,
                    student.config.hidden_size,
                    teacher_config.hidden_size,
                    alp_scale=fixed.alp_scale,
                    alp_tokens=fixed.alp_tokens,
                )
            live = fixed.teacher_outputs == "live" or (inter is not None and inter.needs_tokens)
            signal = self.teacher_signal(live=live)
        hyper = self.hyper(point, seed)
        probe = self.alpha_probe(inter) if inter is not None and spec.inter == "alp" else None
        if not self.task.is_regression:
            student.config.id2label = dict(enumerate(self.task.label_names))
            student.config.label2id = {name: index for index, name in enumerate(self.task.label_names)}
        history = fit(
            student,
            self.task,
            hyper,
            self.train,
            self.evals,
            self.pad_token_id,
            inter=inter,
            teacher=signal,
            checkpoint=checkpoint,
            on_epoch=on_epoch,
            desc=desc or method,
            device=self.device,
            progress=self.progress,
            compile_model=fixed.compile,
            select_split=self.select_split,
            probe=probe,
            keep_best=save_to is not None and save_epoch == "best",
            stop_after=epochs,
        )
        if save_to is not None:
            if save_epoch == "best" and history.best_state is not None:
                student.load_state_dict(history.best_state)
            history.best_state = None
            with atomic_folder(save_to) as tmp:
                student.save_pretrained(tmp)
                self.tokenizer.save_pretrained(tmp)
                torch.save(inter.state_dict() if inter is not None else {}, tmp / "inter_layer_loss.pt")
                shutil.rmtree(save_to, ignore_errors=True)
        return history

    def prepare_shared(self) -> None:
        """Everything trials share: the fine-tuned teacher and, if a method needs them, its cached outputs."""
        self.prepare_teacher()
        if any(get_method(m).searches_eta for m in self.config.methods):
            self.teacher_signal(live=False)


def output_cache_bytes(n: int, num_labels: int, cls_shape: tuple[int, int], dtype) -> int:
    """The size of a teacher-output cache of ``n`` examples: float32 logits and ``[layers, hidden]`` [CLS]
    vectors per example in ``dtype``."""
    return n * num_labels * 4 + n * cls_shape[0] * cls_shape[1] * np.dtype(dtype).itemsize


def read_outputs(folder: Path, n: int) -> TeacherSignal | None:
    """Memory-map a teacher-output cache, or ``None`` if it is missing, partial or corrupt."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        arrays = {}
        for name in ("logits", "cls"):
            path = folder / f"{name}.npy"
            if sha256_file(path) != manifest[name]["sha256"]:
                return None
            arrays[name] = np.load(path, mmap_mode="r")
            if list(arrays[name].shape) != manifest[name]["shape"] or arrays[name].shape[0] != n:
                return None
    except (OSError, ValueError, KeyError):
        return None
    return TeacherSignal(logits=arrays["logits"], cls=arrays["cls"])
