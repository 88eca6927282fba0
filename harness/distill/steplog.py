"""The step log: every step's loss terms kept on the device and read once per window (:class:`LossLog`), so
the training step never waits for the host; each window leaves one row of the log stored with the trial."""

from __future__ import annotations

import math

import torch

SYNC_EVERY = 50  # steps between reads of the loss terms (one host-device sync each)


class LossLog:
    """The loss terms of every step, kept on the device and read once per :data:`SYNC_EVERY` steps.

    Reading a value (``.item()``, a finiteness test) makes the host wait for the device; doing it
    once per window instead of ~5 times per step keeps a GPU busy. A non-finite value raises
    :class:`FloatingPointError` with the term, the epoch and the step (the steps after it in the same
    window have run by then; the trial fails either way, and no checkpoint is written mid-epoch).
    Sums are float64, per term unweighted, plus ``total`` (the weighted loss). Each window also leaves one
    row in :attr:`trace` (the step log stored with the trial): the window's last step, each term's mean,
    the mean gradient norm (before clipping) and the learning rate at its end.
    """

    def __init__(self, every: int | None = None):
        self.every, self.names, self.window, self.steps = every or SYNC_EVERY, None, [], 0
        self.sums: torch.Tensor | None = None
        self.last = math.nan
        self.rows: list[list[float]] = []
        self.lr = math.nan

    def add(
        self,
        terms: dict[str, torch.Tensor],
        loss: torch.Tensor,
        epoch: int,
        lr: float = math.nan,
        grad_norm: torch.Tensor | None = None,
    ) -> bool:
        """Keep one step's values; read the window when it is full (returns True then)."""
        if self.names is None:
            self.names = [*terms, "total"]
        norm = loss.new_tensor(math.nan) if grad_norm is None else grad_norm.detach()
        values = [*(t.detach().float() for t in terms.values()), loss.detach().float(), norm.float()]
        self.window.append(torch.stack(values))
        self.lr = lr
        if len(self.window) < self.every:
            return False
        self.flush(epoch)
        return True

    @property
    def trace(self) -> dict:
        """The step log: ``columns`` and one row per window (compact: a few rows per epoch)."""
        return {"columns": ["step", *(self.names or []), "grad_norm", "lr"], "rows": self.rows}

    def flush(self, epoch: int) -> None:
        if not self.window:
            return
        block = torch.stack(self.window).double().cpu()  # the one sync of the window
        start, self.steps, self.window = self.steps, self.steps + len(self.window), []
        norms, block = block[:, -1], block[:, :-1]  # a gradient norm may be inf (fp16 scaler skips the step)
        finite = norms[torch.isfinite(norms)]
        norm = float(finite.mean()) if len(finite) else math.nan
        self.rows.append(
            [self.steps, *(round(float(v), 6) for v in block.mean(0)), round(norm, 6), float(f"{self.lr:.6g}")]
        )
        bad = ~torch.isfinite(block)
        if bad.any():
            row, column = (int(v) for v in bad.nonzero()[0])
            raise FloatingPointError(
                f"non-finite {self.names[column]} loss {block[row, column].item()} at epoch {epoch}, "
                f"step {start + row + 1}"
            )
        self.sums = block.sum(0) if self.sums is None else self.sums + block.sum(0)
        self.last = float(block[-1, -1])

    def means(self, steps: int) -> dict[str, float]:
        """Each term's mean over the epoch's ``steps``."""
        return {
            name: float(total) / steps
            for name, total in zip(self.names or [], self.sums if self.sums is not None else [])
        }
