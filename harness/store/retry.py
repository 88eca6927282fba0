"""Database calls that survive a server restart or a network blip: retried with back-off on transient errors.

A PostgreSQL restart (``pg_ctl restart``, a fail-over, a dropped connection) cuts every open connection: the
call in flight fails with ``OperationalError`` and, for a second or two, new connections are refused. The
engine's ``pool_pre_ping`` (:func:`harness.store.urls.engine_kwargs`) replaces dead pooled connections when they
are checked out; :func:`retrying` re-runs a call that failed in the window, after 0.2, 0.4, 0.8 … s (at most
5 s apart) for up to :data:`RETRY_SECONDS` (``HARNESS_DB_RETRY_SECONDS``), then lets the error through.
Only connection-level errors are retried, never a constraint or a programming error.

Wrapped: every public method of :class:`harness.store.storage.Storage`, the claim transitions of
:class:`harness.store.claims.Claim` and every call of Optuna's storage (:func:`retrying_rdb_storage`). Heartbeats
are not (:class:`harness.store.claims.Heartbeat` retries them on its own clock and gives the claim up past the
grace period). A retried write whose first try committed before the connection dropped runs twice; every
harness write is conditional or an upsert, so that is harmless, and Optuna's are rare enough to accept.
"""

from __future__ import annotations

import functools
import inspect
import os
import time

import sqlalchemy as sa

RETRY_SECONDS = float(os.environ.get("HARNESS_DB_RETRY_SECONDS", 120))


def transient(error: BaseException) -> bool:
    """True for a lost or refused database connection (also when Optuna wrapped it in its own error)."""
    cause = error
    if type(error).__name__ == "StorageInternalError" and error.__cause__ is not None:
        cause = error.__cause__
    if isinstance(cause, sa.exc.DBAPIError) and cause.connection_invalidated:
        return True
    # PendingRollbackError: a query in the same session already lost its connection (Optuna's _get_trials
    # retries a failed query once in that session); Optuna rolls the session back, so a new call works.
    return isinstance(cause, (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.PendingRollbackError))


def retrying(function):
    """``function``, re-run on :func:`transient` errors with back-off for up to :data:`RETRY_SECONDS`."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        deadline, delay = time.monotonic() + RETRY_SECONDS, 0.2
        while True:
            try:
                return function(*args, **kwargs)
            except Exception as error:
                if not transient(error) or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(2 * delay, 5.0)

    wrapper.retrying = True
    return wrapper


def retry_public_methods(cls: type, skip: tuple[str, ...] = ()) -> type:
    """Class decorator: wrap every public method ``cls`` defines itself in :func:`retrying`."""
    for name, member in list(vars(cls).items()):
        if inspect.isfunction(member) and not name.startswith("_") and name not in skip:
            setattr(cls, name, retrying(member))
    return cls


_CACHED_STORAGE_CALLS = (
    "_create_new_trial",
    "_get_best_trial_id",
    "_get_stale_trial_ids",
    "_get_trials",
    "_set_trial_param",
)


@functools.cache
def _retrying_rdb_class() -> type:
    from optuna.storages import BaseStorage, RDBStorage

    names = [n for n in dir(BaseStorage) if not n.startswith("_") and callable(getattr(RDBStorage, n))]
    # Optuna's _CachedStorage (what a Study holds) also calls these private RDBStorage methods directly
    names += [n for n in _CACHED_STORAGE_CALLS if callable(getattr(RDBStorage, n, None))]
    methods = {name: retrying(getattr(RDBStorage, name)) for name in names}
    return type("RetryingRDBStorage", (RDBStorage,), {"__module__": __name__, **methods})


def retrying_rdb_storage(url: str, engine_kwargs: dict):
    """Optuna's ``RDBStorage`` on ``url`` with every storage call :func:`retrying` (opening it is not: a
    server that cannot be reached at start is a bad URL, reported at once)."""
    return _retrying_rdb_class()(url, engine_kwargs=engine_kwargs)
