"""Files that are either whole or absent: a killed writer never leaves half of one to be read later.

Everything the harness publishes (epoch checkpoints, fine-tuned teachers, the teacher-output
cache, report files) is written beside its final place and renamed into it; a rename within one
filesystem is atomic, so a reader sees the old version, the new one, or nothing.

A full disk (``ENOSPC``, or a quota: ``EDQUOT``) is a :class:`DiskFull`: the temporary file or folder is
removed and the error is one line naming the path and the space left there. Large files written through
memory maps are reserved first (:func:`reserve`): a memory-mapped write to a full disk is a ``SIGBUS``
that kills the process, not an error that can be reported.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from harness.util.errors import HarnessError


class DiskFull(HarnessError):
    """No space left where the harness writes (the trial fails, the worker claims nothing more)."""


def gigabytes(size: float) -> str:
    """``1.23 GB``: a size in bytes as the messages and ``plan`` print it."""
    return f"{size / 1e9:.2f} GB"


def disk_full(path: Path, needed: int | None = None) -> DiskFull:
    """The one-line error for a write to ``path`` that the disk has no room for."""
    folder = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    free = shutil.disk_usage(folder).free
    need = f", {gigabytes(needed)} needed" if needed is not None else ""
    return DiskFull(
        f"no space left on the device writing {str(path)!r} ({gigabytes(free)} free there{need}); "
        "free some space or use another --cache-dir"
    )


def is_disk_full(error: BaseException) -> bool:
    """An ``OSError`` for a full disk or quota; also the libraries' wrapped ones (safetensors, torch)."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(error) or "os error 28" in str(error)


def ensure_space(folder: Path, needed: int) -> None:
    """Fail now, with a :class:`DiskFull`, if ``folder``'s filesystem has less than ``needed`` bytes free."""
    if shutil.disk_usage(folder).free < needed:
        raise disk_full(folder, needed)


def reserve(path: Path) -> None:
    """Allocate the blocks of ``path`` at its current size (a sparse file made by a memory map), so that
    writing through the map cannot hit a full disk; a :class:`DiskFull` if they cannot be had."""
    handle = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(handle, 0, os.fstat(handle).st_size)
    except OSError as error:
        if is_disk_full(error):
            raise disk_full(path, os.fstat(handle).st_size) from None
        if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a filesystem without fallocate: go on
            raise
    finally:
        os.close(handle)


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
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if is_disk_full(error):
            raise disk_full(path) from None
        raise


def atomic_dir(final: Path) -> Path:
    """A fresh temporary folder beside ``final``; publish it with :func:`publish_dir`."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))


@contextlib.contextmanager
def atomic_folder(final: Path) -> Iterator[Path]:
    """A temporary folder beside ``final`` to write into, published as ``final`` when the block ends
    (:func:`publish_dir`) and removed if it raises; a full disk becomes a :class:`DiskFull`."""
    tmp = atomic_dir(final)
    try:
        yield tmp
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(error):
            raise disk_full(final) from None
        raise
    publish_dir(tmp, final)


def publish_dir(tmp: Path, final: Path) -> None:
    """Move a finished temporary folder into place (atomic on one filesystem); if another writer
    published first, keep theirs."""
    if final.exists():
        shutil.rmtree(tmp, ignore_errors=True)
        return
    os.replace(tmp, final)
