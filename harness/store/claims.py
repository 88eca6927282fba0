"""Grid-point claims as the worker holding one sees them: who a worker is, whether it is alive, the claim's
transitions (attach, heartbeat, done, release, give back, give up) and the heartbeat thread.

The atomic claim itself is one conditional ``UPDATE`` in :meth:`harness.store.storage.Storage.claim_next`.
"""

from __future__ import annotations

import functools
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.store.retry import retry_public_methods

# How often a worker writes its claim's heartbeat, and how old a heartbeat may grow before any worker may take
# the point over. HARNESS_HEARTBEAT_SECONDS changes the first (tests use it to make a lost claim quick to see).
HEARTBEAT_SECONDS = float(os.environ.get("HARNESS_HEARTBEAT_SECONDS", 10))
GRACE_SECONDS = 120


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), or ``None`` if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


@functools.lru_cache(maxsize=1)
def pid_scope() -> str:
    """Where a pid means this process: the boot id (which machine, which boot) and the pid namespace's inode
    (which container). Containers that share a hostname (Docker ``--network host``, some SLURM set-ups) see
    each other's pids as missing; the scope tells them apart. ``0`` where /proc does not say."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:12]
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return "0"
    return f"{boot}.{namespace}"


def worker_id() -> str:
    """``host:pid:start:scope`` — the start time tells a reused pid from the worker that held it, the scope
    (:func:`pid_scope`) a worker in another pid namespace on a host of the same name."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or 0}:{pid_scope()}"


def slurm_job() -> str | None:
    """This worker's SLURM job (``ARRAYJOB_TASK`` for an array task), or ``None`` outside SLURM; recorded with
    every trial it creates, so that ``status`` shows which job trains what."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID") or None


def worker_is_dead(worker: str) -> bool:
    """True when ``worker`` (``host:pid[:start[:scope]]``) ran on this host, in this pid namespace, and its
    process is gone.

    A pid now used by another process (a different start time) counts as gone. Workers on other hosts
    or in another pid namespace (another scope) are judged by their heartbeat instead (see
    :meth:`Storage._is_stale`); ids without a scope (written before it existed) are trusted as local.
    """
    host, pid, *rest = worker.split(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    start, scope = (rest + [None, None])[:2]
    if scope is not None and scope != pid_scope():
        return False
    start = [start] if start is not None else []
    now = _start_time(int(pid))
    if now is None:
        return True
    return bool(start) and start[0] not in ("0", now) and now != ""


@functools.partial(retry_public_methods, skip=("heartbeat", "mark_lost"))
@dataclass
class Claim:
    """A grid point this worker owns until it marks it done or releases it."""

    storage: object  # the harness.store.storage.Storage that made it
    study_name: str
    key: str
    params: dict
    worker: str
    attempts: int = 1
    stale_trial_id: int | None = None
    stale_worker: str | None = None
    lost: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)
    lost_reason: str = ""

    def attach(self, trial_id: int) -> None:
        now = time.time()
        if not self.storage._update(self.study_name, self.key, self.worker, trial_id=trial_id, heartbeat_at=now):
            self.mark_lost("taken over by another worker")

    def heartbeat(self) -> bool:
        """Refresh the heartbeat; ``False`` when the row is no longer this worker's (the claim is lost)."""
        return bool(self.storage._update(self.study_name, self.key, self.worker, heartbeat_at=time.time()))

    def mark_lost(self, reason: str) -> None:
        """From now on the trial working for this claim stops at its next step (:func:`harness.util.signals.check`)."""
        self.lost_reason = reason
        self.lost.set()

    def done(self) -> None:
        self.storage._update(self.study_name, self.key, self.worker, state="done")

    def release(self, error: str, max_attempts: int) -> None:
        """Give the point back after a failed trial; after ``max_attempts`` it is marked failed for good."""
        self.storage._update(
            self.study_name,
            self.key,
            self.worker,
            state="failed" if self.attempts >= max_attempts else "free",
            last_error=error[:2000],
        )

    def interrupt(self) -> None:
        """Give the point back after Ctrl-C: an interruption uses up no attempt."""
        self.give_back()

    def give_back(self) -> None:
        """Give the point back unused (Ctrl-C, or its shared run is busy elsewhere): no attempt is used."""
        used = 0 if self.stale_worker is not None else 1  # a fresh claim counted an attempt, a takeover did not
        self.storage._give_back(self.study_name, self.key, self.worker, used)

    def give_up(self, error: str) -> None:
        """Mark the point failed now, whatever its attempts (``run --retry-failed`` frees it again)."""
        self.storage._update(self.study_name, self.key, self.worker, state="failed", last_error=error[:2000])


class Heartbeat:
    """Context manager: refresh a claim's heartbeat from a background thread, and watch it.

    A heartbeat that updates no row means another worker took the point over; a heartbeat that cannot be
    written (the database restarting, a network outage) is retried after ``retry``, 2×, 4×, … (at most ``every``),
    and once the last written one is older than :data:`GRACE_SECONDS` the point may be taken over at any
    moment. Either way the claim is marked lost, and the trial stops at its next step
    (:func:`harness.util.signals.check`, active inside this block) without writing anything more for it.
    """

    def __init__(
        self, claim: Claim, every: float = HEARTBEAT_SECONDS, grace: float = GRACE_SECONDS, retry: float = 1.0
    ):
        self.claim, self.every, self.grace, self.retry = claim, every, grace, retry
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._watch = None

    def _run(self) -> None:
        written, delay = time.monotonic(), self.every
        while not self._stop.wait(delay):
            try:
                owned = self.claim.heartbeat()
            except Exception as error:  # noqa: BLE001 - retried with back-off, a lost claim past the grace
                if time.monotonic() - written > self.grace:
                    self.claim.mark_lost(
                        f"no heartbeat could be written for {self.grace:.0f} s ({type(error).__name__})"
                    )
                    return
                delay = min(self.retry, self.every) if delay >= self.every else min(2 * delay, self.every)
                continue
            if not owned:
                self.claim.mark_lost("taken over by another worker")
                return
            written, delay = time.monotonic(), self.every

    def __enter__(self) -> Heartbeat:
        from harness.util.signals import watch

        self._watch = watch(self.claim)
        self._watch.__enter__()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._watch.__exit__(*exc)
