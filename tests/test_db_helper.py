"""``run_study.py db start|stop|url DIR`` (harness/store/postgres.py): a PostgreSQL server of one's own.

As root (CI) initdb refuses to run, and so does the command, in one line (tested in a process of its own); the
other tests then give the module's calls ``run_as="postgres"`` (``runuser -u postgres --``), as the ``postgres``
fixture does, and run the command in this process."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from harness.store import postgres as db_server
from harness.util.errors import HarnessError
from harness.util.signals import EXIT_TERMINATED

from conftest import _CLUSTERS, RUN_AS, _stop_cluster, run_cli, run_here

ROOT = os.geteuid() == 0


@pytest.fixture
def folder():
    """An empty folder the server's user can reach (not tmp_path: under root that is the postgres user's); whatever
    a test started in it is stopped afterwards."""
    path = Path(tempfile.mkdtemp(prefix="harness-db-"))
    _CLUSTERS[path] = RUN_AS
    try:
        yield path
    finally:
        _stop_cluster(path)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def as_the_server_user(monkeypatch):
    """As root, the command's calls get ``run_as="postgres"``, as the fixture's do; the root refusal is tested in
    a process of its own."""
    if ROOT:
        for name in ("start", "stop", "is_running"):
            monkeypatch.setattr(db_server, name, functools.partial(getattr(db_server, name), run_as=RUN_AS))


def _db(capsys, *args: str) -> str:
    """``db ARGS`` in this process: its stdout."""
    result = run_here(capsys, "db", *args)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return result.stdout


def _refused(capsys, *args: str) -> str:
    """The one-line refusal of ``db ARGS``; nothing on stdout."""
    result = run_here(capsys, "db", *args)
    assert result.returncode == 2 and result.stdout == "" and result.stderr.count("\n") == 1, result
    return result.stderr


def _url(folder: Path) -> str:
    return db_server.load(folder).url()


def _answers(url: str) -> bool:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(sa.text("SELECT current_database()")).scalar() == "sweeps"
    except sa.exc.OperationalError:
        return False
    finally:
        engine.dispose()


def test_start_status_start_again_stop_start_after_stop(folder, capsys):
    started = _db(capsys, "start", str(folder), "--host", "127.0.0.1")
    url = _db(capsys, "url", str(folder)).strip()
    assert url == _url(folder)
    password = (folder / "password").read_text().strip()
    assert url.startswith("postgresql://") and f":{password}@127.0.0.1:" in url and url.endswith("/sweeps")
    assert (folder / "password").stat().st_mode & 0o777 == 0o600
    assert password not in started  # start prints the URL masked; 'db url' prints it whole
    assert "made and started PostgreSQL" in started and ":***@127.0.0.1:" in started
    assert "no other machine can connect" in started  # 127.0.0.1 is loopback
    assert _answers(url)
    assert not _answers(url.replace(password, "wrong"))  # the password is really asked for
    status = run_here(capsys, "status", "--storage", url)
    assert status.returncode == 0 and "no studies yet" in status.stdout and password not in status.stdout

    again = _db(capsys, "start", str(folder), "--host", "127.0.0.1")
    assert "already running:" in again
    assert _url(folder) == url

    assert "stopped" in _db(capsys, "stop", str(folder))
    assert not _answers(url)
    assert "was not running" in _db(capsys, "stop", str(folder))

    restarted = _db(capsys, "start", str(folder), "--host", "127.0.0.1")
    assert restarted.startswith("started PostgreSQL")
    assert _url(folder) == url and _answers(url)  # the same cluster, port and password
    _db(capsys, "stop", str(folder))


def test_the_fixture_cluster_is_the_modules(postgres):
    assert _answers(postgres.url.replace(":not-shown", ""))  # trust: the placeholder password is ignored
    assert db_server.load(postgres.data.parent).trust
    postgres.restart()
    assert _answers(postgres.url)


def test_a_start_that_fails_half_way_leaves_the_folder_empty(folder, monkeypatch):
    def broken(server):
        raise HarnessError("no database today")

    monkeypatch.setattr(db_server, "_create_database", broken)
    with pytest.raises(HarnessError, match="no database today"):
        db_server.start(folder, "127.0.0.1", run_as=RUN_AS)
    assert list(folder.iterdir()) == []  # no cluster, log or password left, and no server running (stopped)


def test_as_root_the_command_refuses_in_one_line_and_writes_nothing(tmp_path, capsys):
    if not ROOT:
        pytest.skip("only as root")
    result = run_cli("db", "start", str(tmp_path / "pg"))  # a real process: one line, no traceback
    assert result.returncode == 2 and result.stdout == "" and result.stderr.count("\n") == 1
    assert "refuse to run as root" in result.stderr and "runuser -u postgres" in result.stderr
    assert not (tmp_path / "pg").exists()


def test_missing_server_binaries_are_named_with_their_packages(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    result = run_here(capsys, "db", "start", str(tmp_path / "pg"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "initdb and pg_ctl not found on PATH" in result.stderr
    assert "apt install postgresql" in result.stderr and "conda install -c conda-forge postgresql" in result.stderr
    assert not (tmp_path / "pg").exists()


def test_a_folder_with_other_files_a_port_in_use_and_no_cluster_are_refused(folder, capsys):
    (folder / "notes.txt").write_text("mine")
    said = _refused(capsys, "start", str(folder), "--host", "127.0.0.1")
    assert "holds files that are not a cluster made by 'db start'" in said
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        said = _refused(capsys, "start", str(folder / "pg"), "--host", "127.0.0.1", "--port", str(port))
    assert f"port {port} on 127.0.0.1 (127.0.0.1) is in use" in said and "another --port" in said
    assert not (folder / "pg").exists()

    for action in ("stop", "url"):
        said = _refused(capsys, action, str(folder))
        assert f"no cluster in '{folder}'" in said and "db start" in said


def test_wait_stops_the_server_on_sigterm(folder, capsys):
    """``db start DIR --wait``, the SLURM job of its own: SIGTERM (scancel, the time limit) stops the server."""

    def terminate_once_it_answers():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not ((folder / "server.json").is_file() and _answers(_url(folder))):
            time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGTERM)

    helper = threading.Thread(target=terminate_once_it_answers)
    helper.start()
    result = run_here(capsys, "db", "start", str(folder), "--host", "127.0.0.1", "--wait")
    helper.join()
    assert result.returncode == EXIT_TERMINATED and "made and started PostgreSQL" in result.stdout
    assert "terminated (SIGTERM)" in result.stderr
    assert not db_server.is_running(db_server.load(folder))
