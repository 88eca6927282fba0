"""The offline example (reports/offline-glue): its documented commands (`make example-train`) run end to end on tiny
copies of its study files, and the report they write regenerates byte-identically from the database; the committed
report is what `make example` writes from the committed database (harness.tools.snapshot)."""

from __future__ import annotations

import lzma
import os
import sqlite3
import subprocess

import pytest
import yaml

from harness.tools.snapshot import main as snapshot
from harness.tools.snapshot import pack, unpack
from harness.util.errors import HarnessError

from conftest import REPO

TASKS = ("sst2", "stsb")  # a classification and a regression task of the four; the others differ only in data


def test_make_example_on_tiny_copies_and_the_report_regenerates_byte_identically(tmp_path, tiny_bert, glue_dir):
    for task in TASKS:
        study = yaml.safe_load((REPO / "studies" / f"offline-glue-{task}.yaml").read_text())
        assert study["name"] == "offline-glue" and len(study["methods"]) == 8
        study["teacher"] = str(tiny_bert)
        study["fixed"].update(
            epochs=1, max_seq_length=32, max_train_samples=48, holdout_max_samples=32, eval_batch_size=512
        )
        study["fixed"]["teacher"].update(epochs=1, max_train_samples=48)
        (tmp_path / f"offline-glue-{task}.yaml").write_text(yaml.safe_dump(study))
    first, second = tmp_path / "report", tmp_path / "again"
    copy = tmp_path / "unpacked.db"  # what `make example` reports from: the packed database, unpacked
    storage = f"sqlite:///{copy}"
    variables = [
        f"EXAMPLE_TASKS={' '.join(TASKS)}",
        f"EXAMPLE_STUDIES={tmp_path}",
        f"EXAMPLE_DB_FILE={tmp_path / 'example.db'}",
        f"EXAMPLE_OUT={first}",
        f"EXAMPLE_SAVED={tmp_path / 'example.db.xz'}",
        f"EXAMPLE_COPY={copy}",
        "EXAMPLE_SEEDS=2",  # the documented run uses 5; two are enough for the paired tests to exist
        f"GLUE={glue_dir}",
    ]
    env = {**os.environ, "HARNESS_CACHE": str(tmp_path / "cache")}
    made = subprocess.run(
        ["make", "-C", str(REPO), "example-train", *variables], capture_output=True, text=True, env=env
    )
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    assert "confirming the top 1 configuration(s) with 2 seed(s) each" in made.stdout + made.stderr
    assert (tmp_path / "example.db.xz").is_file() and copy.is_file()  # packed, then unpacked and reported from
    python = REPO / ".venv" / "bin" / "python"
    again = subprocess.run(
        [python, "run_study.py", "report", "--name", "offline-glue", "--storage", storage, "--out", str(second)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
    )
    assert again.returncode == 0, again.stderr
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert {"README.md", "trials.csv"} <= {str(f) for f in files} and any(f.suffix == ".png" for f in files)
    different = [str(f) for f in files if (first / f).read_bytes() != (second / f).read_bytes()]
    assert different == []
    readme = (first / "README.md").read_text()
    for part in ("SST-2", "STS-B", "alp-po", "Equal budget", "Holm"):
        assert part in readme, part


EXAMPLE = REPO / "reports" / "offline-glue"
SAVED = EXAMPLE / "offline-glue.db.xz"
COPY = "studies/offline-glue-saved.db"  # the Makefile's EXAMPLE_COPY, relative: the report's commands name it


def test_the_committed_report_is_what_make_example_writes_from_the_committed_database(tmp_path):
    """`make example` unpacks the committed database and reports from it; done here in a scratch folder with the same
    relative storage URL, every file of the committed report comes out byte for byte (NOTES.md is written by hand)."""
    assert SAVED.is_file(), "the offline example's database is not committed"
    unpack(SAVED, tmp_path / COPY)
    out = tmp_path / "report"
    python = REPO / ".venv" / "bin" / "python"
    made = subprocess.run(
        [python, str(REPO / "run_study.py"), "report", "--name", "offline-glue", "--storage", f"sqlite:///{COPY}"]
        + ["--out", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr[-3000:]
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    committed = sorted(
        str(p.relative_to(EXAMPLE))
        for p in EXAMPLE.rglob("*")
        if p.is_file() and p.name not in ("NOTES.md", SAVED.name)
    )
    assert written == committed
    assert [f for f in written if (out / f).read_bytes() != (EXAMPLE / f).read_bytes()] == []


def test_a_packed_database_unpacks_to_the_same_rows(tmp_path):
    database = tmp_path / "a.db"
    with sqlite3.connect(database) as connection:
        connection.execute("pragma journal_mode=wal")
        connection.execute("create table t (x integer, y text)")
        connection.executemany("insert into t values (?, ?)", [(i, str(i) * 3) for i in range(500)])
    pack(database, tmp_path / "a.db.xz")
    assert (tmp_path / "a.db.xz").stat().st_size < database.stat().st_size
    unpack(tmp_path / "a.db.xz", tmp_path / "b.db")
    with sqlite3.connect(tmp_path / "b.db") as connection:
        assert connection.execute("select count(*), sum(x), max(y) from t").fetchone() == (500, 124750, "999999")
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_snapshot_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "text.db").write_text("not a database")
    with lzma.open(tmp_path / "text.xz", "wb") as packed:
        packed.write(b"not a database either")
    (tmp_path / "plain.xz").write_bytes(b"not xz")
    cases = [
        (["pack", str(tmp_path / "missing.db"), str(tmp_path / "out.xz")], "does not exist"),
        (["pack", str(tmp_path / "text.db"), str(tmp_path / "out.xz")], "is not a SQLite database"),
        (["unpack", str(tmp_path / "missing.xz"), str(tmp_path / "out.db")], "does not exist"),
        (["unpack", str(tmp_path / "plain.xz"), str(tmp_path / "out.db")], "is not xz data"),
        (["unpack", str(tmp_path / "text.xz"), str(tmp_path / "out.db")], "does not hold a SQLite database"),
        (["copy", "a", "b"], "usage:"),
    ]
    for args, expected in cases:
        assert snapshot(args) == 2, args
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1, (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.xz", "text.db", "text.xz"]
    with pytest.raises(HarnessError, match="is not xz data"):  # the same error for a caller in Python
        unpack(tmp_path / "plain.xz", tmp_path / "out.db")
