"""SIGTERM (what SLURM preemption, ``docker stop`` and systemd send) handled like Ctrl-C.

:class:`Terminated` is a :class:`KeyboardInterrupt`, so every path that gives a point back on Ctrl-C (trial
FAIL "interrupted", no attempt used, checkpoint kept) runs for it too; the command then exits with 143
(128 + SIGTERM). A second SIGTERM during that clean-up is ignored (a SIGKILL still ends the process).
"""

from __future__ import annotations

import signal

EXIT_TERMINATED = 128 + signal.SIGTERM  # 143


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM."""


def _raise_terminated(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one clean-up at a time
    raise Terminated()


def terminate_like_interrupt() -> None:
    """From now on, SIGTERM raises :class:`Terminated` in the main thread."""
    signal.signal(signal.SIGTERM, _raise_terminated)
