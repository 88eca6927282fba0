"""Storage URLs: parsing and checking them before anything is created, masking passwords, SQLite set-up.

Any SQLAlchemy URL works; SQLite is the default and PostgreSQL is what workers on many machines share.
SQLite databases are switched to WAL journaling (readers never block the writer) and every connection
waits up to 60 s for a lock instead of failing with "database is locked".
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from harness.util.errors import HarnessError


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (never print a password)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<malformed storage URL>"


def default_storage(root: Path) -> str:
    return f"sqlite:///{root / 'studies' / 'harness.db'}"


def parse_url(url: str) -> sa.URL:
    """The parsed storage URL, its dialect and driver importable; creates nothing.

    A malformed URL, an unknown dialect, a driver that is not installed or a SQLite file in a
    folder that does not exist is a one-line :class:`HarnessError`.
    """
    masked = mask_url(url)
    try:
        parsed = make_url(url)
        parsed.get_dialect().import_dbapi()
    except NoSuchModuleError:
        raise HarnessError(
            f"unsupported storage URL {masked!r} (allowed: any SQLAlchemy URL whose "
            "driver is installed: sqlite, postgresql, mysql)"
        ) from None
    except ArgumentError:
        raise HarnessError(
            f"malformed storage URL {masked!r} (expected e.g. sqlite:///path.db or postgresql://user:pass@host/db)"
        ) from None
    except ModuleNotFoundError as error:
        raise HarnessError(
            f"storage URL {masked!r} needs the Python package {error.name!r}, which is not installed"
        ) from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        folder = Path(parsed.database).parent
        if not folder.is_dir():
            raise HarnessError(f"storage folder {str(folder)!r} does not exist")
        kind = filesystem_type(folder)
        if kind in NETWORK_FILESYSTEMS:
            raise HarnessError(
                f"SQLite database {parsed.database!r} is on a network filesystem ({kind}), whose file locks SQLite "
                "cannot trust: workers could corrupt it or train a point twice; put it on a local disk (one machine) "
                "or use postgresql://user:pass@host/db (see README, 'Running on a SLURM cluster')"
            )
    return parsed


# statfs types (as /proc/self/mountinfo names them) whose locking SQLite's documentation says not to rely on
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "lustre",
        "gpfs",
        "beegfs",
        "ceph",
        "fuse.sshfs",
        "9p",
        "afs",
        "glusterfs",
        "fuse.glusterfs",
        "fuse.ceph",
        "panfs",
        "ocfs2",
        "gfs2",
        "wekafs",
        "fuse.s3fs",
        "fuse.gcsfuse",
        "virtiofs",
    }
)
NODE_LOCAL_FILESYSTEMS = frozenset({"tmpfs", "ramfs", "devtmpfs"})


def filesystem_type(path: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> str:
    """The filesystem type of the mount that holds ``path`` (the longest mount point above it); ``unknown``
    where the kernel does not say (not Linux)."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return "unknown"
    target, best, kind = str(Path(path).resolve()), "", "unknown"
    for line in lines:
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        point = fields[4].replace("\\040", " ")
        after = line.split(" - ", 1)[1].split()
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best) and after:
            best, kind = point, after[0]
    return kind


def prepare_sqlite(url: sa.URL, create: bool) -> None:
    if url.database in (None, "", ":memory:"):
        return
    path = Path(url.database)
    if not create and not path.is_file():
        raise HarnessError(f"no database at {str(path)!r} (running a study creates it; check --storage)")
    with sqlite3.connect(path, timeout=60) as connection:
        connection.execute("PRAGMA journal_mode=WAL")


def engine_kwargs(url: sa.URL) -> dict:
    if url.get_backend_name() == "sqlite":
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True}
