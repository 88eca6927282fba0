"""Reasons for this process to stop what it is doing: SIGTERM, and a grid-point claim another worker took over.

SIGTERM (what SLURM preemption, ``docker stop`` and systemd send) is handled like Ctrl-C: :class:`Terminated`
is a :class:`KeyboardInterrupt`, so every path that gives a point back on Ctrl-C (trial FAIL "interrupted",
no attempt used, checkpoint kept) runs for it too, and the command exits with 143 (128 + SIGTERM). A second
SIGTERM during that clean-up is ignored (a SIGKILL still ends the process).

Inside :func:`cooperative` (``run`` and ``confirm``), the handler only records the request and the work
raises at its next safe point, :func:`check`: every training and evaluation step, every wait. Raising from
the handler itself could land inside a garbage-collector finalizer (SQLAlchemy's connection clean-up), where
Python prints "Exception ignored" with a traceback and the interruption is lost.

A claim is *lost* when its heartbeat finds the row owned by another worker (or cannot write it for longer
than the grace period, :class:`harness.store.claims.Heartbeat`); :func:`check` then raises :class:`ClaimLost`
in the trial that works for it, which stops at that step and writes nothing more.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

EXIT_TERMINATED = 128 + signal.SIGTERM  # 143

_requested = threading.Event()  # SIGTERM arrived while cooperative
_requeue = threading.Event()  # the signal was SIGUSR1: SLURM's --signal before the time limit (harness.sweep.slurm)
_cooperative = 0
_watched: list = []  # the claims being worked for, innermost last (see watch)


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM."""


class ClaimLost(Exception):
    """The point this trial trains was taken over by another worker: stop, write nothing more for it."""


def _on_sigterm(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one clean-up at a time
    if _cooperative:
        _requested.set()
    else:
        raise Terminated()


def _on_usr1(signum, frame) -> None:
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    _requeue.set()
    _on_sigterm(signum, frame)


def terminate_like_interrupt() -> None:
    """From now on, SIGTERM raises :class:`Terminated` in the main thread (at once, or at :func:`check`); so does
    SIGUSR1, which SLURM sends before a job's time limit (``--signal=B:USR1@…``), and which also asks for a
    requeue (:func:`requeue_requested`)."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGUSR1, _on_usr1)


def requeue_requested() -> bool:
    """Whether the stop was SIGUSR1 (the job's time limit is near: it should be requeued)."""
    return _requeue.is_set()


@contextlib.contextmanager
def cooperative() -> Iterator[None]:
    """Within this block, SIGTERM raises at the next :func:`check` instead of wherever the process is."""
    global _cooperative
    _cooperative += 1
    try:
        yield
        check()
    finally:
        _cooperative -= 1


def check() -> None:
    """Raise :class:`Terminated` after SIGTERM, or :class:`ClaimLost` when the innermost watched claim is lost."""
    if _requested.is_set():
        raise Terminated()
    if _watched and _watched[-1].lost.is_set():
        claim = _watched[-1]
        raise ClaimLost(f"{claim.study_name}: {claim.key}: {claim.lost_reason}")


def wait(seconds: float) -> None:
    """Sleep up to ``seconds``, waking at once for SIGTERM; then :func:`check`."""
    _requested.wait(seconds)
    check()


@contextlib.contextmanager
def watch(claim) -> Iterator[None]:
    """:func:`check` raises :class:`ClaimLost` inside this block once ``claim.lost`` is set."""
    _watched.append(claim)
    try:
        yield
    finally:
        _watched.remove(claim)


def reset() -> None:
    """Forget a SIGTERM request (for a process that goes on, e.g. a test that sends one)."""
    _requested.clear()
    _requeue.clear()
