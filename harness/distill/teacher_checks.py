"""Checks of a teacher used as it is (``fixed.teacher.finetune: false``): its head fits the task, it beats chance.

* **Head**: the checkpoint's ``config.json`` must name a ``…ForSequenceClassification`` architecture (a bare
  encoder such as MiniLM's ``BertModel`` has no trained head to distil from), with the task's number of
  outputs; when its ``id2label`` carries names (not transformers' default ``LABEL_<i>``), they must be the
  task's label names in the task's order (case-insensitive): a 3-class MNLI head on SST-2, or an SST-2 head
  with its classes swapped, is refused in one line that names both.
* **Chance**: a teacher whose primary dev metric is at most the best constant prediction's (every class
  tried; 0 for a correlation) plus :data:`CHANCE_MARGIN` is refused, unless ``fixed.teacher.allow_chance``.
  The margin is a choice (the paper is silent): 0.02, i.e. two points.
"""

from __future__ import annotations

import re

import numpy as np

from harness.spec.metrics import compute_metrics
from harness.spec.tasks import TaskSpec
from harness.util.errors import HarnessError

CHANCE_MARGIN = 0.02
_DEFAULT_LABEL = re.compile(r"^LABEL_\d+$")


def check_head(model_config, task: TaskSpec, source: str) -> None:
    """Refuse a checkpoint without a sequence-classification head, or with a head for another label set."""
    architectures = list(getattr(model_config, "architectures", None) or [])
    if not any(name.endswith("ForSequenceClassification") for name in architectures):
        raise HarnessError(
            f"teacher {source!r} has no classification head (its config.json names {architectures or 'no'} "
            "architecture); fixed.teacher.finetune: false needs a checkpoint saved from a …ForSequenceClassification "
            "model fine-tuned on the task (or set finetune: true)"
        )
    names = [str(model_config.id2label[i]) for i in sorted(model_config.id2label)]
    expected = list(task.label_names) if not task.is_regression else ["(one regression output)"]
    generic = all(_DEFAULT_LABEL.match(name) for name in names)
    if len(names) != task.num_labels or (
        not generic and not task.is_regression and [n.lower() for n in names] != [n.lower() for n in expected]
    ):
        raise HarnessError(
            f"teacher {source!r} has a {len(names)}-output head ({', '.join(names)}), {task.name} needs "
            f"{task.num_labels} ({', '.join(expected)}), in this order; use a teacher fine-tuned on {task.name} "
            "or fixed.teacher.finetune: true"
        )


def chance_value(task: TaskSpec, labels: np.ndarray) -> float:
    """The primary metric of the best constant prediction on ``labels`` (0.0 for a regression task)."""
    if task.is_regression:
        return 0.0
    n = len(labels)
    return max(
        compute_metrics(task, np.eye(task.num_labels, dtype=np.float32)[np.full(n, c)], labels)[task.primary_metric]
        for c in range(task.num_labels)
    )


def refuse_chance(task: TaskSpec, value: float, labels: np.ndarray, source: str, allow: bool) -> None:
    """Stop when the teacher's dev ``value`` is at chance (see the module docstring), unless ``allow``."""
    chance = chance_value(task, labels)
    if value <= chance + CHANCE_MARGIN and not allow:
        raise HarnessError(
            f"teacher {source!r} scores {task.primary_metric} {value:.4f} on {task.name} {task.eval_splits[0]}, at "
            f"chance (a constant prediction scores {chance:.4f}; margin {CHANCE_MARGIN}); check that it is "
            "fine-tuned on this task, or set fixed.teacher.allow_chance: true to go on"
        )
