"""Atomic file writes: nothing a user already has is lost or left half-written.

Every file the package writes (checkpoints, histories, results, reports, plots) goes through
:func:`atomic_write_bytes`: the data goes to a temporary file in the destination's folder, is flushed
to disk, then renamed onto the destination with ``os.replace`` (atomic on POSIX and Windows). If
anything fails, the temporary file is removed and the old destination is untouched.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, make_parents: bool = False) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    Raises ``FileNotFoundError`` when the folder is missing and ``make_parents`` is false, and
    ``PermissionError`` when it is not writable; the destination is never left half-written.
    """
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str, *, make_parents: bool = False) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"), make_parents=make_parents)
