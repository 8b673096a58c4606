"""Ground-floor file writing: every artifact of mirl is written atomically.

``atomic_write(path)`` yields a temporary path in the target's folder; on success the temporary
file replaces the target with ``os.replace``, so a reader sees the previous file or the new one,
never half of one, and a failed write (an exception, a full disk) leaves the previous file
untouched. The result gets the permissions an ordinary new file gets under the process umask.

This module imports neither torch nor any other part of mirl except ``errors``.
"""
from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mirl_lib.core.errors import DiskFullError


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def file_mode() -> int:
    """The mode an ordinary new file gets (``0o666`` less the umask)."""
    return 0o666 & ~_umask()


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it goes.

    The temporary name keeps ``path``'s suffix so writers that pick a format by extension work.
    A full disk (``ENOSPC``/``EDQUOT``) becomes a ``DiskFullError`` naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}",
                                        dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise _disk_full(exc, path) or exc
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except OSError as exc:
        raise _disk_full(exc, path) or exc
    finally:
        tmp.unlink(missing_ok=True)


def _disk_full(exc: OSError, path: Path) -> DiskFullError | None:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"{path}: no space left on device; nothing was replaced (free some "
                             f"space and run again)")
    return None


def atomic_write_bytes(data: bytes, path: str | Path) -> None:
    """Write ``data`` to ``path`` atomically (flushed to disk before the rename)."""
    with atomic_write(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_text(text: str, path: str | Path) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(text.encode("utf-8"), path)
