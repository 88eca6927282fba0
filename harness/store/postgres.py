"""A user-space PostgreSQL server in a folder of one's own (``run_study.py db start|stop|url DIR``).

For people with no database server: ``initdb`` and ``pg_ctl`` run as the user, the cluster lives in ``DIR``:

==================  ==================================================================================
``DIR/data/``       the cluster (``initdb``'s folder)
``DIR/server.log``  the server's log
``DIR/password``    the generated password (mode 0600, the only copy); not there for a ``trust`` cluster
``DIR/server.json`` host, port, user, database; written last, so its presence means a complete cluster
==================  ==================================================================================

The server listens on TCP only (no Unix socket), on one address; ``pg_hba.conf`` lets any client that reaches
it in with the password (scram-sha-256) and nothing without. The test fixture uses the same functions with
``trust`` authentication and, when the tests run as root, ``run_as="postgres"`` (initdb refuses root): the
binaries then run through ``runuser -u postgres --`` and the folder is given to that user.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import getpass
import ipaddress
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import sqlalchemy as sa

from harness.util.errors import HarnessError
from harness.util.files import atomic_write

BINARIES = ("initdb", "pg_ctl")
STATE = "server.json"
MAX_CONNECTIONS = 200  # workers × pool connections, with room for status and report


@dataclasses.dataclass(frozen=True)
class Server:
    """One cluster in ``folder``: where it listens and whom it lets in."""

    folder: Path
    host: str
    port: int
    user: str
    database: str = "sweeps"
    trust: bool = False

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log(self) -> Path:
        return self.folder / "server.log"

    @property
    def password_file(self) -> Path:
        return self.folder / "password"

    def url(self, database: str | None = None, hide_password: bool = False) -> str:
        """The SQLAlchemy URL (for ``--storage``), with the password unless ``hide_password``."""
        password = None if self.trust else self.password_file.read_text().strip()
        url = sa.URL.create("postgresql", self.user, password, self.host, self.port, database or self.database)
        return url.render_as_string(hide_password=hide_password)


def load(folder: Path) -> Server:
    """The cluster that :func:`start` made in ``folder``; a one-line error if there is none."""
    state = folder / STATE
    if not (state.is_file() and (folder / "data" / "PG_VERSION").is_file()):
        raise HarnessError(f"no cluster in {str(folder)!r} (python run_study.py db start {folder} makes one)")
    fields = json.loads(state.read_text())
    return Server(folder=folder, **fields)


def as_user(run_as: str | None) -> list[str]:
    """The prefix that runs a server binary as ``run_as`` (a process running as root); none for oneself."""
    return ["runuser", "-u", run_as, "--"] if run_as else []


def is_running(server: Server, *, run_as: str | None = None) -> bool:
    status = subprocess.run(
        [*as_user(run_as), "pg_ctl", "status", "-D", str(server.data)], capture_output=True, text=True, timeout=60
    )
    return status.returncode == 0


def start(
    folder: Path,
    host: str | None = None,
    port: int | None = None,
    *,
    run_as: str | None = None,
    trust: bool = False,
    user: str | None = None,
) -> tuple[Server, str]:
    """Start the cluster in ``folder``, making it first if the folder is new or empty: ``(server, what)`` where
    ``what`` is ``created``, ``started`` (an existing cluster) or ``running`` (it was already; nothing done).

    ``host`` defaults to this machine's hostname (the one the compute nodes know), ``port`` to a free one. Every
    refusal comes before anything is written; a start that fails half-way removes what it wrote.
    """
    _check_can_run(run_as)
    folder = Path(folder).absolute()
    if (folder / STATE).is_file():
        return _start_existing(load(folder), host, port, run_as)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise HarnessError(
            f"{str(folder)!r} holds files that are not a cluster made by 'db start'; give a new or empty folder"
        )
    host = host or socket.gethostname()
    server = Server(folder, host, _free_port(host, port), user or getpass.getuser(), trust=trust)
    new = not folder.exists()
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if run_as:  # the server's user writes the cluster and its log there
            shutil.chown(folder, run_as)
        if not trust:
            _write_password(server.password_file, run_as)
        _initdb(server, run_as)
        _pg_ctl_start(server, run_as)
        _create_database(server)
        _save(server)
    except BaseException:
        with contextlib.suppress(Exception):
            stop(folder, run_as=run_as, mode="immediate", state=server)
        if new:
            shutil.rmtree(folder, ignore_errors=True)
        else:  # the folder was the user's, empty: empty again
            shutil.rmtree(server.data, ignore_errors=True)
            for path in (server.log, server.password_file):
                path.unlink(missing_ok=True)
        raise
    return server, "created"


def stop(folder: Path, *, run_as: str | None = None, mode: str = "fast", state: Server | None = None) -> bool:
    """``pg_ctl stop`` (``mode`` fast: open sessions are cut, what they committed is kept); ``False`` if the
    cluster was not running. ``state``: the server of a start still in progress, before its ``server.json``."""
    _check_can_run(run_as)
    server = state or load(Path(folder).absolute())
    if not is_running(server, run_as=run_as):
        return False
    stopped = subprocess.run(
        [*as_user(run_as), "pg_ctl", "stop", "-D", str(server.data), "-m", mode, "-w"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if stopped.returncode != 0:
        raise HarnessError(f"pg_ctl stop failed in {str(server.data)!r}: {_last_line(stopped.stderr)}")
    return True


def loopback_only(host: str) -> bool:
    """``host`` resolves only to loopback addresses (Debian maps the hostname to 127.0.1.1): no other machine
    can reach a server listening there."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}
    except socket.gaierror:
        return False
    return all(ipaddress.ip_address(address.split("%")[0]).is_loopback for address in addresses)


def _check_can_run(run_as: str | None) -> None:
    missing = [name for name in BINARIES if shutil.which(name) is None]
    if missing:
        raise HarnessError(
            f"{' and '.join(missing)} not found on PATH: install the PostgreSQL server (Debian/Ubuntu: apt install "
            "postgresql, then add /usr/lib/postgresql/<version>/bin to PATH; conda: conda install -c conda-forge "
            "postgresql)"
        )
    if os.geteuid() == 0 and not run_as:
        raise HarnessError(
            "initdb and pg_ctl refuse to run as root: run 'db' as an ordinary user (e.g. runuser -u postgres -- "
            "python run_study.py db start DIR, with DIR writable by that user)"
        )


def _start_existing(server: Server, host: str | None, port: int | None, run_as: str | None) -> tuple[Server, str]:
    moved = dataclasses.replace(server, host=host or server.host, port=port or server.port)
    if is_running(server, run_as=run_as):
        if moved != server:
            raise HarnessError(
                f"the cluster in {str(server.folder)!r} is running on {server.host}:{server.port}; "
                f"stop it first (db stop {server.folder}) to move it to {moved.host}:{moved.port}"
            )
        return server, "running"
    _free_port(moved.host, moved.port)
    _pg_ctl_start(moved, run_as)
    if moved != server:
        _save(moved)
    return moved, "started"


def _free_port(host: str, port: int | None) -> int:
    """``port``, checked free on every address of ``host``; a free one (from the OS) when ``port`` is None."""
    try:
        infos = socket.getaddrinfo(host, port or 0, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise HarnessError(
            f"--host {host!r} does not resolve ({error.strerror}); give a name or address of this machine"
        ) from None
    chosen = port
    for family, kind, _, _, address in infos:
        with socket.socket(family, kind) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is fine
            try:
                probe.bind((address[0], chosen or 0, *address[2:]))
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    raise HarnessError(
                        f"port {chosen} on {host} ({address[0]}) is in use; give another --port, or none for a free one"
                    ) from None
                raise HarnessError(
                    f"cannot listen on {host} ({address[0]}): {error.strerror}; give --host an address of this machine"
                ) from None
            chosen = chosen or probe.getsockname()[1]
    return chosen


def _write_password(path: Path, run_as: str | None) -> None:
    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(handle, "w") as stream:
        stream.write(secrets.token_urlsafe(24) + "\n")  # URL-safe: the URL needs no escaping
    if run_as:  # initdb reads it as that user
        shutil.chown(path, run_as)


def _initdb(server: Server, run_as: str | None) -> None:
    auth = ["-A", "trust"] if server.trust else ["-A", "scram-sha-256", f"--pwfile={server.password_file}"]
    made = subprocess.run(
        [*as_user(run_as), "initdb", "-D", str(server.data), "-U", server.user, "-E", "UTF8", *auth],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if made.returncode != 0:
        raise HarnessError(f"initdb failed in {str(server.data)!r}: {_last_line(made.stderr)}")
    if not server.trust:  # rewritten in place: the file keeps its owner (the server's user) and mode
        (server.data / "pg_hba.conf").write_text(
            "# written by run_study.py db start: TCP only, the password (scram-sha-256) from any address\n"
            f"host all {server.user} all scram-sha-256\n"
        )


def _pg_ctl_start(server: Server, run_as: str | None) -> None:
    options = (
        f"-p {server.port} -c listen_addresses='{server.host}' -c unix_socket_directories='' "
        f"-c max_connections={MAX_CONNECTIONS}"
    )
    with tempfile.TemporaryFile("w+") as said:  # not a pipe: the server would hold it open as long as it runs
        started = subprocess.run(
            [*as_user(run_as), "pg_ctl", "start", "-w", "-D", str(server.data), "-l", str(server.log), "-o", options],
            stdout=said,
            stderr=subprocess.STDOUT,
            timeout=300,
        )
        said.seek(0)
        output = said.read()
    if started.returncode != 0:
        log = server.log.read_text(errors="replace") if server.log.is_file() else output
        raise HarnessError(f"the server in {str(server.data)!r} did not start: {_last_line(log)} (log: {server.log})")


def _create_database(server: Server) -> None:
    engine = sa.create_engine(server.url("postgres"), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{server.database}"'))
    finally:
        engine.dispose()


def _save(server: Server) -> None:
    fields = {key: value for key, value in dataclasses.asdict(server).items() if key != "folder"}
    atomic_write(server.folder / STATE, lambda stream: stream.write(json.dumps(fields, indent=1).encode()))


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"
