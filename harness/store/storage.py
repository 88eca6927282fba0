"""Storage: the Optuna RDB storage plus the harness's own grid-claim table, in one database.

Any SQLAlchemy URL works; SQLite is the default and PostgreSQL is what workers on many machines
share. SQLite databases are switched to WAL journaling (readers never block the writer) and every
connection waits up to 60 s for a lock instead of failing with "database is locked".

Grid points are claimed through ``harness_grid_points`` (one row per study × grid point). A claim
is a single conditional ``UPDATE … WHERE state = 'free' OR <claim is stale>``; the database runs
it atomically (SQLite has one writer at a time; PostgreSQL re-checks the ``WHERE`` on the locked
row), so two workers can never both win the same point. A claim is stale when its worker is on
this host and its process is gone, or when its heartbeat is older than the grace period (workers
on other machines). The worker's side of a claim (identity, liveness, transitions, heartbeats) is
:mod:`harness.store.claims`; URLs are :mod:`harness.store.urls`. Beside Optuna's tables the database holds ours:
claims (``harness_grid_points``), one results row per trial (``harness_results``), shared points
(``harness_shared_points``), eval logits (``harness_predictions``) and eval labels (``harness_labels``).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time

import numpy as np
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from harness.store.claims import GRACE_SECONDS, Claim, worker_is_dead
from harness.store.retry import retry_public_methods
from harness.store.urls import engine_kwargs, mask_url, parse_url, prepare_sqlite
from harness.util.errors import HarnessError

_metadata = sa.MetaData()
grid_points_table = sa.Table(
    "harness_grid_points",
    _metadata,
    sa.Column("study_name", sa.String(512), primary_key=True),
    sa.Column("point_key", sa.String(256), primary_key=True),
    sa.Column("params", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False, default="free"),  # free | claimed | done | failed
    sa.Column("worker", sa.String(256)),
    sa.Column("trial_id", sa.Integer),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("heartbeat_at", sa.Float),
    sa.Column("last_error", sa.Text),
)

results_table = sa.Table(
    "harness_results",
    _metadata,
    sa.Column("trial_id", sa.Integer, primary_key=True),  # Optuna's trial_id
    sa.Column("study_name", sa.String(512), nullable=False, index=True),
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("method", sa.String(64), nullable=False),
    sa.Column("point_key", sa.String(256), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("value", sa.Float),
    sa.Column("seed", sa.Integer, nullable=False),
    sa.Column("config", sa.JSON, nullable=False),  # the resolved study config, searched values included
    sa.Column("epochs", sa.JSON),  # per epoch: metrics per split, unweighted loss terms, seconds
    sa.Column("seconds", sa.Float),
    sa.Column("device", sa.String(256)),
    sa.Column("versions", sa.JSON),
    sa.Column("teacher_key", sa.String(64)),
    sa.Column("data_sha256", sa.JSON),
    sa.Column("worker", sa.String(256)),
    sa.Column("updated_at", sa.Float),
)


# A point of one study that is the same computation as a point of another (harness.sweep.sharing) is
# linked here to the owner point that trains it; the linked point's trial copies the owner's outcome.
shared_table = sa.Table(
    "harness_shared_points",
    _metadata,
    sa.Column("study_name", sa.String(512), primary_key=True),
    sa.Column("point_key", sa.String(256), primary_key=True),
    sa.Column("source_study", sa.String(512), nullable=False),
    sa.Column("source_point", sa.String(256), nullable=False),
)

# Eval logits of a trial at its reported epoch (float16, C order), for paired tests over examples.
predictions_table = sa.Table(
    "harness_predictions",
    _metadata,
    sa.Column("trial_id", sa.Integer, primary_key=True),
    sa.Column("split", sa.String(64), primary_key=True),
    sa.Column("epoch", sa.Integer, nullable=False),
    sa.Column("shape", sa.JSON, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
)

# The gold labels of each study's eval splits (float32), for chance rows and paired tests.
labels_table = sa.Table(
    "harness_labels",
    _metadata,
    sa.Column("study_name", sa.String(512), primary_key=True),
    sa.Column("split", sa.String(64), primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
)


@retry_public_methods
class Storage:
    """One database: Optuna's tables and the grid-claim table (every public call retried on a lost
    connection, :mod:`harness.store.retry`)."""

    def __init__(self, url: str, create: bool = True, with_optuna: bool = True):
        """Open (``create``: or create) the database at ``url``; a bad URL is a one-line error.

        ``with_optuna=False`` defers Optuna's storage (:attr:`optuna`) to its first use: setting it up
        imports Optuna and alembic (~0.9 s), which ``status`` does without.
        """
        self.url = url
        self.masked = mask_url(url)
        self._parsed = parse_url(url)
        self._optuna = None
        with self._one_line_errors():
            if self._parsed.get_backend_name() == "sqlite":
                prepare_sqlite(self._parsed, create)
            self.engine = sa.create_engine(url, **engine_kwargs(self._parsed))
            _metadata.create_all(self.engine)
        if with_optuna:
            self.optuna  # noqa: B018 - set up now, so that a bad database fails here

    @property
    def optuna(self):
        """Optuna's RDB storage on the same database (``optuna.storages.RDBStorage``)."""
        if self._optuna is None:
            from harness.store.retry import retrying_rdb_storage

            with self._one_line_errors():
                self._optuna = retrying_rdb_storage(self.url, engine_kwargs(self._parsed))
        return self._optuna

    @contextlib.contextmanager
    def _one_line_errors(self):
        try:
            yield
        except (sa.exc.DBAPIError, sqlite3.Error, RuntimeError) as error:
            reason = (str(getattr(error, "orig", None) or error).strip().splitlines() or [type(error).__name__])[0]
            raise HarnessError(f"cannot use storage {self.masked!r}: {reason}") from None

    # ------------------------------------------------------------------ results
    def record_result(self, trial_id: int, **fields) -> None:
        """Insert or update the harness's own row for one trial."""
        fields["updated_at"] = time.time()
        with self.engine.begin() as connection:
            updated = connection.execute(
                results_table.update().where(results_table.c.trial_id == trial_id).values(**fields)
            ).rowcount
            if not updated:
                connection.execute(results_table.insert().values(trial_id=trial_id, **fields))

    def result(self, trial_id: int) -> dict | None:
        with self.engine.begin() as connection:
            row = (
                connection.execute(sa.select(results_table).where(results_table.c.trial_id == trial_id))
                .mappings()
                .first()
            )
        return dict(row) if row is not None else None

    # ------------------------------------------------------------------ predictions and labels
    def save_predictions(self, trial_id: int, epoch: int, predictions: dict[str, np.ndarray]) -> None:
        """Store (replace) a trial's eval logits of ``epoch``, one row per split, as float16."""
        with self.engine.begin() as connection:
            connection.execute(predictions_table.delete().where(predictions_table.c.trial_id == trial_id))
            for split, array in sorted(predictions.items()):
                array = np.ascontiguousarray(array, dtype="<f2")
                connection.execute(
                    predictions_table.insert().values(
                        trial_id=trial_id, split=split, epoch=epoch, shape=list(array.shape), data=array.tobytes()
                    )
                )

    def predictions(self, trial_ids) -> dict[int, dict[str, tuple[int, np.ndarray]]]:
        """``trial_id → split → (epoch, logits as float32)`` for the given trials that have them."""
        ids = sorted({int(t) for t in trial_ids})
        out: dict[int, dict[str, tuple[int, np.ndarray]]] = {}
        with self.engine.begin() as connection:
            for start in range(0, len(ids), 500):
                rows = (
                    connection.execute(
                        sa.select(predictions_table).where(predictions_table.c.trial_id.in_(ids[start : start + 500]))
                    )
                    .mappings()
                    .all()
                )
                for row in rows:
                    array = np.frombuffer(row["data"], dtype="<f2").reshape(row["shape"]).astype(np.float32)
                    out.setdefault(row["trial_id"], {})[row["split"]] = (row["epoch"], array)
        return out

    def _insert_new(self, table: sa.Table, rows: list[dict]) -> None:
        """Insert each row in its own transaction unless its primary key is there already (another
        worker may insert the same row at the same moment: the loser's IntegrityError is expected)."""
        for row in rows:
            try:
                with self.engine.begin() as connection:
                    connection.execute(table.insert().values(**row))
            except IntegrityError:
                pass

    def save_labels(self, study_name: str, labels: dict[str, np.ndarray]) -> None:
        """Store a study's eval labels once (later calls change nothing)."""
        self._insert_new(
            labels_table,
            [
                {"study_name": study_name, "split": split, "data": np.asarray(array, dtype="<f4").tobytes()}
                for split, array in sorted(labels.items())
            ],
        )

    def labels(self) -> dict[str, dict[str, np.ndarray]]:
        """``study_name → split → labels`` for every study that has them."""
        with self.engine.begin() as connection:
            rows = connection.execute(sa.select(labels_table)).mappings().all()
        out: dict[str, dict[str, np.ndarray]] = {}
        for row in rows:
            out.setdefault(row["study_name"], {})[row["split"]] = np.frombuffer(row["data"], dtype="<f4").copy()
        return out

    # ------------------------------------------------------------------ shared points
    def link_points(self, study_name: str, links: dict[str, tuple[str, str]]) -> None:
        """Link points of ``study_name`` to the owner points that train them (``key → (study, key)``);
        a point linked before keeps its link."""
        known = self.links(study_name)
        self._insert_new(
            shared_table,
            [
                {"study_name": study_name, "point_key": key, "source_study": study, "source_point": point}
                for key, (study, point) in sorted(links.items())
                if key not in known
            ],
        )

    def links(self, study_name: str) -> dict[str, tuple[str, str]]:
        with self.engine.begin() as connection:
            rows = connection.execute(sa.select(shared_table).where(shared_table.c.study_name == study_name)).all()
        return {row.point_key: (row.source_study, row.source_point) for row in rows}

    def point(self, study_name: str, key: str) -> dict | None:
        table = grid_points_table.c
        with self.engine.begin() as connection:
            row = (
                connection.execute(
                    sa.select(grid_points_table).where(table.study_name == study_name, table.point_key == key)
                )
                .mappings()
                .first()
            )
        return dict(row) if row is not None else None

    # ------------------------------------------------------------------ grid claims
    def ensure_points(self, study_name: str, points: dict[str, dict]) -> None:
        """Insert the grid points that are not there yet (idempotent, safe under concurrency)."""
        with self.engine.begin() as connection:
            known = set(
                connection.execute(
                    sa.select(grid_points_table.c.point_key).where(grid_points_table.c.study_name == study_name)
                ).scalars()
            )
        self._insert_new(
            grid_points_table,
            [
                {
                    "study_name": study_name,
                    "point_key": key,
                    "params": json.dumps(params),
                    "state": "free",
                    "attempts": 0,
                }
                for key, params in points.items()
                if key not in known
            ],
        )

    def retry_failed(self, study_name: str) -> int:
        """Free every failed point of the study, with its attempts reset; returns how many."""
        table = grid_points_table.c
        with self.engine.begin() as connection:
            return connection.execute(
                grid_points_table.update()
                .where(table.study_name == study_name, table.state == "failed")
                .values(state="free", attempts=0)
            ).rowcount

    def points(self, study_name: str) -> list[dict]:
        with self.engine.begin() as connection:
            rows = (
                connection.execute(
                    sa.select(grid_points_table)
                    .where(grid_points_table.c.study_name == study_name)
                    .order_by(grid_points_table.c.point_key)
                )
                .mappings()
                .all()
            )
        return [dict(row) for row in rows]

    @staticmethod
    def _is_stale(row: dict, now: float) -> bool:
        """A claim is stale when its worker is gone (this host) or its heartbeat is too old (any host)."""
        return worker_is_dead(row["worker"] or "") or (row["heartbeat_at"] or 0.0) < now - GRACE_SECONDS

    def claim_next(self, study_name: str, me: str, max_attempts: int, keys: set[str] | None = None) -> Claim | None:
        """Atomically claim a free (or stale) point, of ``keys`` if given; ``None`` when none is left."""
        while True:
            now = time.time()
            # A free point has attempts left; a stale claim is always taken over (a killed worker
            # does not use up an attempt: only a trial that raised does).
            rows = [row for row in self.points(study_name) if keys is None or row["point_key"] in keys]
            # A point already claimed by this worker is one whose claim committed while its connection
            # dropped (the call was retried, harness.store.retry): a worker asks for a point of a study only
            # while it holds none there, so it takes that one back instead of leaving it claimed for good.
            mine = [row for row in rows if row["state"] == "claimed" and row["worker"] == me]
            if mine:
                row = mine[0]
                return Claim(
                    self, study_name, row["point_key"], json.loads(row["params"]), me, attempts=row["attempts"]
                )
            candidates = [
                row
                for row in rows
                if (row["state"] == "free" and row["attempts"] < max_attempts)
                or (row["state"] == "claimed" and self._is_stale(row, now))
            ]
            if not candidates:
                return None
            row = candidates[0]
            table = grid_points_table.c
            with self.engine.begin() as connection:
                won = (
                    connection.execute(
                        grid_points_table.update()
                        .where(
                            table.study_name == study_name,
                            table.point_key == row["point_key"],
                            table.state == row["state"],
                            table.attempts == row["attempts"],
                            _same(table.worker, row["worker"]),
                            _same(table.heartbeat_at, row["heartbeat_at"]),
                        )
                        .values(
                            state="claimed",
                            worker=me,
                            heartbeat_at=now,
                            attempts=table.attempts + (1 if row["state"] == "free" else 0),
                        )
                    ).rowcount
                    == 1
                )
            if won:
                stale = row["state"] == "claimed"
                return Claim(
                    self,
                    study_name,
                    row["point_key"],
                    json.loads(row["params"]),
                    me,
                    attempts=row["attempts"] + (0 if stale else 1),
                    stale_trial_id=row["trial_id"] if stale else None,
                    stale_worker=row["worker"] if stale else None,
                )

    def _update(self, study_name: str, key: str, me: str, **values) -> int:
        """Update a point this worker holds; the number of rows changed (0: it is no longer this worker's)."""
        table = grid_points_table.c
        with self.engine.begin() as connection:
            return connection.execute(
                grid_points_table.update()
                .where(table.study_name == study_name, table.point_key == key, table.worker == me)
                .values(**values)
            ).rowcount

    def _give_back(self, study_name: str, key: str, me: str, used: int) -> None:
        """Free a point this worker holds, handing back ``used`` attempts."""
        self._update(study_name, key, me, state="free", attempts=grid_points_table.c.attempts - used)


def _same(column, value):
    return column.is_(None) if value is None else column == value
