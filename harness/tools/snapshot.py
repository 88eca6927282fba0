"""A SQLite sweep database as one xz-compressed file, and back: how the offline example's database is committed.

``python -m harness.tools.snapshot pack studies/offline-glue.db reports/offline-glue/offline-glue.db.xz`` copies
the database through SQLite's online backup (a consistent copy, whatever its journal mode, even while a reader has
it open), then compresses it; ``unpack`` writes the database back. Both write a temporary file next to the target
and rename it into place, so a failure leaves the old file or none. ``make example`` unpacks the committed copy and
reports from it; ``make example-train`` trains everything again and packs the result (Makefile).
"""

from __future__ import annotations

import lzma
import os
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

from harness.util.errors import HarnessError

__all__ = ["pack", "unpack"]


def _published(target: Path, write) -> None:
    """``write(path)`` into a temporary file beside ``target``, then renamed onto it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(handle)
    try:
        write(Path(tmp))
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp's 0600 would outlive the rename
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def pack(database: Path, out: Path) -> None:
    """Compress the SQLite file ``database`` into ``out`` (xz)."""
    if not database.is_file():
        raise HarnessError(f"database {str(database)!r} does not exist (expected a SQLite file)")

    def write(tmp: Path) -> None:
        with tempfile.TemporaryDirectory() as folder:
            copy = Path(folder) / "copy.db"
            source = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
            target = sqlite3.connect(copy)
            try:
                source.backup(target)
            except sqlite3.DatabaseError as error:
                raise HarnessError(f"database {str(database)!r} is not a SQLite database ({error})") from None
            finally:
                source.close()
                target.close()
            with open(copy, "rb") as raw, lzma.open(tmp, "wb", preset=9) as packed:
                shutil.copyfileobj(raw, packed)

    _published(out, write)


def unpack(packed: Path, database: Path) -> None:
    """Write the SQLite database compressed in ``packed`` (xz) to ``database``, replacing it."""
    if not packed.is_file():
        raise HarnessError(f"packed database {str(packed)!r} does not exist (expected an .xz file written by pack)")

    def write(tmp: Path) -> None:
        try:
            with lzma.open(packed, "rb") as source, open(tmp, "wb") as raw:
                shutil.copyfileobj(source, raw)
        except lzma.LZMAError as error:
            raise HarnessError(f"packed database {str(packed)!r} is not xz data ({error})") from None
        with open(tmp, "rb") as raw:
            if raw.read(16) != b"SQLite format 3\x00":
                raise HarnessError(f"packed database {str(packed)!r} does not hold a SQLite database")

    _published(database, write)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    commands = {"pack": pack, "unpack": unpack}
    if len(args) != 3 or args[0] not in commands:
        print("usage: python -m harness.tools.snapshot pack DATABASE OUT.xz | unpack IN.xz DATABASE", file=sys.stderr)
        return 2
    try:
        commands[args[0]](Path(args[1]), Path(args[2]))
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
