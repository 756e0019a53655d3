"""Atomic file writes: nothing a user already has is lost or left half-written.

Every file the package writes (checkpoints, histories, results, reports, plots) goes through
:func:`atomic_write_bytes`: the data goes to a temporary file in the destination's folder, is flushed
to disk, then renamed onto the destination with ``os.replace`` (atomic on POSIX and Windows). If
anything fails, the temporary file is removed and the old destination is untouched.

:func:`write_file_set` writes a set of files (a report's HTML, PNGs and JSON) all-or-nothing, through
a temporary sibling folder; :func:`check_writable` checks an output path before long work.
"""

from __future__ import annotations

import os
import shutil
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


def check_writable(path: str | os.PathLike, flag: str = "output") -> None:
    """Raise ValueError (one line, naming ``flag``) unless files can be created at ``path``: its
    nearest existing ancestor folder must accept a new entry (tried with a temporary folder, removed
    again). Call it before long work, so that an unwritable output fails at once."""
    path = Path(path)
    anc = path.parent if str(path.parent) else Path(".")
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise ValueError(f"{flag} {path}: {anc} is not a folder")
    try:
        probe = tempfile.mkdtemp(prefix=".anchor_interp-probe-", dir=anc)
        os.rmdir(probe)
    except OSError as e:
        raise ValueError(f"{flag} {path}: cannot create files under {anc} ({e.strerror})") from None


def write_file_set(files: dict, *, overwrite: bool = False, remove: list | tuple = ()) -> None:
    """Write several files (``{path: bytes}``) all-or-nothing.

    Every file is first written into a temporary sibling folder of its destination (one per
    destination folder, ``.<name>.staging-*``); only when all are written does the commit run: the
    old files (destinations that exist, and ``remove``: files of an older set to drop) are renamed
    aside into the staging folder, the new ones renamed into place, then the staging folders (with
    the old files) deleted. A failure or Ctrl-C while writing leaves the destinations untouched; a
    failure during the commit (renames only, Ctrl-C deferred) puts the old files back. Raises
    FileExistsError, writing nothing, if a destination exists and ``overwrite`` is false.
    """
    files = {Path(p): data for p, data in files.items()}
    if not overwrite:
        existing = [str(p) for p in files if p.exists()]
        if existing:
            raise FileExistsError(f"would overwrite {', '.join(existing)}; pass overwrite=True (CLI: --force)")
    staging: dict[Path, Path] = {}
    try:
        for path, data in files.items():
            if path.parent not in staging:
                path.parent.mkdir(parents=True, exist_ok=True)
                staging[path.parent] = Path(tempfile.mkdtemp(prefix=f".{path.name}.staging-", dir=path.parent))
            atomic_write_bytes(staging[path.parent] / path.name, data)
        with _sigint_deferred():
            _commit(files, staging, [Path(p) for p in remove if Path(p) not in files])
    finally:
        for folder in staging.values():
            shutil.rmtree(folder, ignore_errors=True)


def _commit(files: dict, staging: dict, remove: list) -> None:
    """Old files aside (into their staging folder, as ``old.<name>``), new files in; undo on failure."""
    aside: list[tuple[Path, Path]] = []  # (destination, where it went)
    placed: list[Path] = []
    try:
        for dest in [*files, *remove]:
            if dest.exists():
                folder = staging.get(dest.parent) or Path(tempfile.mkdtemp(prefix=".staging-", dir=dest.parent))
                staging.setdefault(dest.parent, folder)
                os.replace(dest, folder / f"old.{dest.name}")
                aside.append((dest, folder / f"old.{dest.name}"))
        for dest in files:
            os.replace(staging[dest.parent] / dest.name, dest)
            placed.append(dest)
    except BaseException:
        for dest in placed:
            _quiet_unlink(dest)
        for dest, old in aside:
            os.replace(old, dest)
        raise


def _quiet_unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class _sigint_deferred:  # noqa: N801  (a context manager used like a function)
    """Block SIGINT / SIGTERM delivery during the commit's few renames (main thread only)."""

    def __enter__(self):
        import signal
        import threading

        self.mask = None
        if hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread():
            self.mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        return self

    def __exit__(self, *exc):
        import signal

        if self.mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self.mask)
        return False
