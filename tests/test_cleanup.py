"""The session's clean-up: what a test started is ended, also when the run is interrupted."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from conftest import REPO

INTERRUPTED = """
import subprocess, pathlib, sys

def test_starts_a_sweep_like_process_then_is_interrupted(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
    pathlib.Path({pidfile!r}).write_text(str(child.pid))
    raise KeyboardInterrupt  # what Ctrl-C does in the middle of a test
"""

# The project's conftest, loaded under another name (this folder's own conftest is the module "conftest").
CONFTEST = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("project_conftest", {path!r})
project = importlib.util.module_from_spec(spec)
sys.modules["project_conftest"] = project
spec.loader.exec_module(project)
end_everything_tests_started = project.end_everything_tests_started
"""


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_an_interrupted_session_kills_the_processes_its_tests_left(tmp_path):
    pidfile = tmp_path / "child.pid"
    inner = tmp_path / "test_inner.py"
    inner.write_text(INTERRUPTED.format(pidfile=str(pidfile)))
    (tmp_path / "conftest.py").write_text(CONFTEST.format(path=str(REPO / "tests" / "conftest.py")))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--setup-show", str(inner)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 2, done.stdout + done.stderr  # pytest's exit status for an interrupted session
    assert "TEARDOWN S end_everything_tests_started" in done.stdout, done.stdout
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid), f"process {pid} that the interrupted test started is still running"
