"""The package: `pip install -e .` (what requirements.txt does) gives the `alp-kd` command, pinned dependencies."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import harness

from conftest import REPO, run_cli

ALP_KD = Path(sys.executable).parent / "alp-kd"


def test_the_alp_kd_command_has_a_version_and_the_same_sub_commands_as_run_study(tmp_path):
    assert ALP_KD.is_file(), "no alp-kd command beside this Python: install the project with pip install -e ."
    version = subprocess.run([ALP_KD, "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.strip() == f"alp-kd {harness.__version__}"
    usage = subprocess.run([ALP_KD, "--help"], capture_output=True, text=True).stdout
    theirs_usage = run_cli("--help").stdout
    commands = theirs_usage.split("{", 1)[1].split("}", 1)[0]
    assert set(commands.split(",")) >= {"run", "plan", "report", "status", "confirm", "reproduce", "export", "slurm"}
    assert usage.startswith("usage: alp-kd") and "{" + commands + "}" in usage
    missing = ["status", "--storage", f"sqlite:///{tmp_path / 'none.db'}"]
    ours, theirs = subprocess.run([ALP_KD, *missing], capture_output=True, text=True), run_cli(*missing)
    assert ours.returncode == theirs.returncode == 2
    assert ours.stderr == theirs.stderr and ours.stderr.startswith("error: no database at")


def test_every_dependency_is_pinned_in_one_place():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = project["dependencies"] + project["optional-dependencies"]["dev"]
    assert pins and all("==" in pin for pin in pins), [pin for pin in pins if "==" not in pin]
    requirements = [
        line for line in (REPO / "requirements.txt").read_text().splitlines() if line and not line.startswith("#")
    ]
    assert requirements == ["-e .[dev]"]  # requirements.txt installs the package, it does not repeat the pins
