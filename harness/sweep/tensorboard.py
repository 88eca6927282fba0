"""TensorBoard event files of trials (``run``/``confirm --tensorboard DIR``).

One TensorBoard *run* per trial, in ``DIR/<study name>/<point>`` (a confirmation adds ``,seed=N``), so
``tensorboard --logdir DIR`` lists them by study and grid point. What is written is what the trial stores
in the database, as it is stored (nothing is measured twice):

* ``train/<term>`` (each loss term unweighted, and ``total``), ``train/grad_norm`` and ``train/lr`` from the
  step log (one point per :data:`harness.distill.steplog.SYNC_EVERY` steps), at the optimizer step;
* ``<split>/<metric>`` (``dev/accuracy``, ``holdout/pearson`` …), ``epoch/<term>`` (the epoch's mean
  loss terms) and, for ALP methods, ``alp/alpha_entropy`` (mean entropy of α over dev, nats) at the step
  that ends each epoch;
* the point, seed and method once, as text.

A grid point shared with another method's (λ = 0 ≡ KD, …) is trained once, so its run is under the study
that trained it. The events are written when an epoch ends. A trial that resumes from its checkpoint
reports its finished epochs again; its run folder is emptied when the trial starts, so each run holds
every epoch once.
The ``tensorboard`` package is needed (``pip install -e .[dev]`` has it); optuna-dashboard needs nothing:
it reads the same database.
"""

from __future__ import annotations

import re
from pathlib import Path

from harness.util.errors import HarnessError

EVENTS_GLOB = "events.out.tfevents.*"


def require() -> None:
    """Fail now, in one line, when TensorBoard cannot be written (before any training starts)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401 - the import is the check
    except ImportError as error:
        raise HarnessError(
            f"--tensorboard needs the 'tensorboard' package ({error}); install it: pip install tensorboard"
        ) from None


def run_folder(root: Path, study_name: str, point: str, seed: int | None = None) -> Path:
    """``root/<study>/<point>[,seed=N]``, each part made safe as a folder name (``/`` becomes ``__``)."""
    parts = [study_name, point if seed is None else f"{point},seed={seed}"]
    return root.joinpath(*(re.sub(r"[^\w.,=+-]", "_", part.replace("/", "__")) for part in parts))


class TrialBoard:
    """The event file of one trial; :meth:`epoch` takes the epoch records ``fit`` reports."""

    def __init__(self, folder: Path, text: dict[str, str]):
        from torch.utils.tensorboard import SummaryWriter

        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob(EVENTS_GLOB):  # an earlier attempt at this trial: it is written again in full
            old.unlink()
        self.writer = SummaryWriter(log_dir=str(folder))
        self.offset = 0  # optimizer steps of the epochs already written
        for key, value in text.items():
            self.writer.add_text(key, value, 0)

    def epoch(self, record: dict) -> None:
        trace = record.get("steps") or {"columns": ["step"], "rows": []}
        columns = trace["columns"]
        last = self.offset
        for row in trace["rows"]:
            step = self.offset + int(row[0])
            for name, value in zip(columns[1:], row[1:], strict=True):
                self.writer.add_scalar(f"train/{name}", value, step)
            last = step
        for split, metrics in record["metrics"].items():
            for name, value in metrics.items():
                self.writer.add_scalar(f"{split}/{name}", value, last)
        for name, value in record.get("losses", {}).items():
            self.writer.add_scalar(f"epoch/{name}", value, last)
        if "alpha_entropy" in record:  # ALP: how spread its attention over teacher layers is
            self.writer.add_scalar("alp/alpha_entropy", record["alpha_entropy"], last)
        self.offset = last
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
