"""Files that are either whole or absent: a killed writer never leaves half of one to be read later.

Everything the harness publishes (epoch checkpoints, fine-tuned teachers, the teacher-output
cache, report files) is written beside its final place and renamed into it; a rename within one
filesystem is atomic, so a reader sees the old version, the new one, or nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: Path, write: Callable[[BinaryIO], object], durable: bool = True) -> None:
    """Call ``write(stream)`` on a temporary file beside ``path``, then rename it to ``path``.

    ``durable`` also fsyncs the data before the rename, so a power cut cannot leave an empty file
    behind a finished rename (checkpoints need that; a report that is cheap to rebuild does not).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    handle = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            if durable:
                stream.flush()
                os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_dir(final: Path) -> Path:
    """A fresh temporary folder beside ``final``; publish it with :func:`publish_dir`."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))


def publish_dir(tmp: Path, final: Path) -> None:
    """Move a finished temporary folder into place (atomic on one filesystem); if another writer
    published first, keep theirs."""
    if final.exists():
        shutil.rmtree(tmp, ignore_errors=True)
        return
    os.replace(tmp, final)
