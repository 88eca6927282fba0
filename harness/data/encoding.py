"""Tokenised GLUE splits and their batches: unpadded examples, padded per batch (dynamic padding)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from harness.spec.tasks import GlueSplit
from harness.util.errors import HarnessError

FEATURE_KEYS = ("input_ids", "token_type_ids", "attention_mask")
"""The model inputs each encoded example holds, all unpadded lists of ints."""


@dataclass(eq=False)
class EncodedSplit:
    """Tokenised examples (unpadded) and their labels; ``eq=False`` as for GlueSplit."""

    features: list[dict[str, list[int]]]
    labels: np.ndarray

    def __len__(self) -> int:
        """Number of examples."""
        return len(self.features)


def _check_max_seq_length(tokenizer: Any, max_seq_length: int, pair: bool) -> None:
    """``max_seq_length`` must leave room for one token per segment after the special
    tokens, and must not exceed the tokenizer's ``model_max_length`` (the model's
    position embeddings end there).
    """
    minimum = tokenizer.num_special_tokens_to_add(pair=pair) + (2 if pair else 1)
    maximum = int(getattr(tokenizer, "model_max_length", max_seq_length) or max_seq_length)
    if not minimum <= max_seq_length <= maximum:
        raise HarnessError(f"max_seq_length {max_seq_length} (allowed: {minimum}..{maximum} for this tokenizer)")


def encode_split(split: GlueSplit, tokenizer: Any, max_seq_length: int) -> EncodedSplit:
    """Tokenise a split with one batched call of a (fast) tokenizer, without padding.

    Pairs are truncated with the tokenizer's default ``longest_first`` strategy, which
    trims the longer segment first. ``token_type_ids`` are requested explicitly so every
    feature has all of ``FEATURE_KEYS``. Padding is left to ``collate``.
    """
    pair = split.text_b is not None
    _check_max_seq_length(tokenizer, max_seq_length, pair)
    if len(split) == 0:
        return EncodedSplit(features=[], labels=split.labels.copy())
    encoded = tokenizer(
        split.text_a,
        split.text_b,
        truncation=True,
        max_length=max_seq_length,
        padding=False,
        return_token_type_ids=True,
        return_attention_mask=True,
    )
    columns = [encoded[key] for key in FEATURE_KEYS]
    features = [{key: list(values) for key, values in zip(FEATURE_KEYS, row)} for row in zip(*columns)]
    return EncodedSplit(features=features, labels=split.labels.copy())


def collate(features: list[dict], labels: np.ndarray, pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch to its longest example.

    ``input_ids`` are padded with ``pad_token_id``, ``token_type_ids`` and
    ``attention_mask`` with 0. Labels become int64 for class ids and float32 for scores.
    """
    labels = np.asarray(labels)
    if len(features) == 0 or len(features) != len(labels):
        raise ValueError(f"collate: {len(features)} features and {len(labels)} labels (need equal, > 0)")
    width = max(len(feature["input_ids"]) for feature in features)
    pads = {"input_ids": pad_token_id, "token_type_ids": 0, "attention_mask": 0}
    batch: dict[str, torch.Tensor] = {}
    for key, pad in pads.items():
        tensor = torch.full((len(features), width), pad, dtype=torch.long)
        for row, feature in enumerate(features):
            values = feature[key]
            tensor[row, : len(values)] = torch.as_tensor(values, dtype=torch.long)
        batch[key] = tensor
    label_dtype = torch.float32 if np.issubdtype(labels.dtype, np.floating) else torch.long
    batch["labels"] = torch.as_tensor(labels, dtype=label_dtype)
    return batch
