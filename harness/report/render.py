"""Byte-stable PNGs: a figure is a :class:`Job` (name, draw function, inputs), drawn only when its inputs or
its code changed, by forked processes on Linux, and written atomically.

Each PNG stores a hash of exactly what it was drawn from (its inputs, the source of the module that
draws it, matplotlib's version), so re-running a report on a growing database only redraws what moved.
Figures are drawn under matplotlib's default style, at a fixed dpi and without the ``Software``
metadata, so the same inputs always give the same bytes.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import inspect
import json
import multiprocessing
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.style
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from harness.util.files import atomic_write

DPI = 100
FOLDER = "figures"
PREFIXES = ("heatmap__", "lr__", "history__", "epochs__", "bars", "budget__", "alpha__")  # ours, for clean-up
KEY_FIELD = "Harness-Input"


@functools.cache
def _code(path: str) -> str:
    """The hash of a drawing module's source and of matplotlib's version."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() + matplotlib.__version__


def slug(text: str) -> str:
    """A filesystem-safe, stable file-name part: ``demo/SST-2/alp`` → ``demo__SST-2__alp``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text.replace("/", "__"))


def _digest(value) -> str:
    """A stable text of a figure's inputs (frames as CSV, epoch lists and dicts as sorted JSON)."""
    if isinstance(value, pd.DataFrame):
        plain = value.drop(columns=["epochs"], errors="ignore").to_csv(index=False)
        return plain + (json.dumps(list(value["epochs"]), sort_keys=True) if "epochs" in value else "")
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_digest(v) for v in value) + "]"
    return json.dumps(value, sort_keys=True, default=repr)


def _stored_key(path: Path) -> str | None:
    try:
        with Image.open(path) as image:
            return image.info.get(KEY_FIELD)
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class Job:
    """One figure: ``draw(*inputs)`` saved as ``figures/<name>``."""

    name: str
    draw: Callable[..., Figure]
    inputs: tuple

    @property
    def path(self) -> str:
        return f"{FOLDER}/{self.name}"

    def key(self) -> str:
        """A hash of the inputs, of the drawing module's source and of matplotlib's version."""
        code = _code(inspect.getsourcefile(self.draw))
        return hashlib.sha256((code + self.name + _digest(list(self.inputs))).encode()).hexdigest()


def _draw(out: Path, job: Job, key: str) -> None:
    with matplotlib.style.context("default"):
        figure = job.draw(*job.inputs)
        atomic_write(
            out / job.path,
            functools.partial(
                figure.savefig,
                format="png",
                dpi=DPI,
                metadata={"Software": None, KEY_FIELD: key},
                pil_kwargs={"compress_level": 1},
            ),
            durable=False,
        )  # fast zlib: the PNGs stay small


def _draw_packed(args: tuple[Path, Job, str]) -> None:
    _draw(*args)


def default_workers() -> int:
    """Drawing processes by default: one per CPU this process may use on Linux (where forking is
    safe and cheap), else 1."""
    return len(os.sched_getaffinity(0)) if sys.platform == "linux" else 1


def render(out: Path, jobs: list[Job], workers: int | None = None) -> None:
    """Draw each job's figure unless its PNG was drawn from the same inputs.

    The PNG carries :meth:`Job.key`, so an unchanged figure is not drawn again (a report on a
    growing database redraws only what moved) and a drawn one is the same bytes either way.
    Agg drawing is pure Python under the GIL, so on Linux the figures are drawn by ``workers``
    forked processes (default: :func:`default_workers`; forking costs a few ms and imports
    nothing). Every figure is drawn from its own inputs alone, so the bytes do not depend
    on the number of workers.
    """
    todo = [(out, job, key) for job in jobs if _stored_key(out / job.path) != (key := job.key())]
    workers = min(default_workers() if workers is None else workers, len(todo))
    if workers <= 1:
        for args in todo:
            _draw_packed(args)
        return
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        for _ in pool.map(_draw_packed, todo):  # re-raises a worker's exception here
            pass


def remove_stale(out: Path, keep: set[str]) -> None:
    """Delete figures of an earlier report in ``out`` that this one no longer draws (ours only)."""
    for path in sorted((out / FOLDER).glob("*.png")):
        if path.name.startswith(PREFIXES) and f"{FOLDER}/{path.name}" not in keep:
            path.unlink()
