"""The sweep folder's manifest: one row per run (settings, status, metrics, labels), written atomically.

    DIR/manifest.json   {"sweep": name, "version": 1, "runs": [row, ...]} (rows in sweep order)
    DIR/sweep.toml      the sweep file's text, as first run
    DIR/runs/<id>/      each run's checkpoint folder (train_many's out_dir)

A row: ``id``, ``settings`` (:class:`~anchor_interp.sweeps.spec.RunSpec` settings), ``status``
(``pending``, ``running``, ``done``, ``failed``), ``reason`` (one line, for failed runs), ``metrics``,
``labels`` (when find_heads ran), ``lock`` (while running: ``pid``, ``host``, ``heartbeat`` (Unix time),
``stack``). Every change is a read-modify-write under an exclusive ``fcntl`` lock on ``DIR/.manifest.lock``
and an atomic rename, so two executors on one folder never lose each other's rows.

A running row's lock is *stale* (its process is gone; the run is resumed) when it was taken on this host by
a process that no longer exists, or when its heartbeat is older than :data:`STALE_AFTER_S`.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from anchor_interp.atomic import atomic_write_text

__all__ = ["HEARTBEAT_S", "MANIFEST", "STALE_AFTER_S", "STATUSES", "Manifest", "is_stale", "new_lock"]

MANIFEST = "manifest.json"
STATUSES = ("pending", "running", "done", "failed")
HEARTBEAT_S = 10.0  # a running executor refreshes its locks this often (seconds)
STALE_AFTER_S = 120.0  # a lock whose heartbeat is older than this is stale, whatever its host


def new_lock(stack: str) -> dict[str, Any]:
    """A lock held by this process: pid, host, heartbeat (now, Unix seconds) and the stack's id."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "heartbeat": time.time(), "stack": stack}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(lock: dict[str, Any] | None, now: float | None = None) -> bool:
    """True when ``lock`` no longer protects anything: missing, its heartbeat older than STALE_AFTER_S,
    or taken on this host by a process that has exited."""
    if not lock:
        return True
    now = time.time() if now is None else now
    if now - float(lock.get("heartbeat", 0)) > STALE_AFTER_S:
        return True
    return lock.get("host") == socket.gethostname() and not _pid_alive(int(lock.get("pid", -1)))


class Manifest:
    """The manifest of the sweep folder ``folder`` (created by :meth:`init`)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / MANIFEST

    def exists(self) -> bool:
        return self.path.exists()

    def read(self) -> dict[str, Any]:
        """The manifest document. Raises ValueError (one line) when the folder holds none or it is unreadable."""
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"{self.folder} is not a sweep folder (no {MANIFEST}); give the folder "
                             f"'sweep.py run' wrote") from None
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{self.path} cannot be read ({e})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("runs"), list):
            raise ValueError(f"{self.path} is not a sweep manifest (no 'runs' list)")
        return doc

    def rows(self) -> list[dict[str, Any]]:
        return self.read()["runs"]

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder's exclusive manifest lock (fcntl.flock on .manifest.lock) for a read-modify-write."""
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".manifest.lock", "a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _write(self, doc: dict[str, Any]) -> None:
        atomic_write_text(self.path, json.dumps(doc, indent=1, allow_nan=False) + "\n")

    def init(self, name: str, runs: list, source: str) -> list[str]:
        """Create the manifest (or add the runs it lacks to an existing one: a rerun or an extended sweep)
        with every new run pending; write ``sweep.toml`` once. Returns the ids of the runs added.
        Raises SweepError (a ValueError) when the folder holds a sweep of another name."""
        with self.locked():
            doc = self.read() if self.exists() else {"sweep": name, "version": 1, "runs": []}
            if doc.get("sweep") != name:
                from anchor_interp.sweeps.spec import SweepError

                raise SweepError(f"{self.folder} holds the sweep {doc.get('sweep')!r}, not {name!r}; "
                                 f"give another --out folder")
            have = {r["id"] for r in doc["runs"]}
            added = [r for r in runs if r.id not in have]
            doc["runs"].extend({"id": r.id, "settings": r.settings, "status": "pending", "reason": "",
                                "metrics": {}, "labels": None, "lock": None} for r in added)
            self._write(doc)
            if not (self.folder / "sweep.toml").exists():
                atomic_write_text(self.folder / "sweep.toml", source)
        return [r.id for r in added]

    def update(self, fn: Callable[[dict[str, dict[str, Any]]], Any]) -> Any:
        """Under the lock: read, call ``fn(rows_by_id)`` (it edits rows in place), write; returns fn's value."""
        with self.locked():
            doc = self.read()
            result = fn({r["id"]: r for r in doc["runs"]})
            self._write(doc)
        return result

    def claim(self, ids: list[str], stack: str) -> bool:
        """Mark the runs ``ids`` running under a new lock of this process, unless one of them is running
        under a live lock (another executor has it): then change nothing and return False."""

        def fn(rows):
            if any(rows[i]["status"] == "running" and not is_stale(rows[i]["lock"]) for i in ids):
                return False
            lock = new_lock(stack)
            for i in ids:
                rows[i].update(status="running", reason="", lock=dict(lock))
            return True

        return self.update(fn)

    def heartbeat(self, ids: list[str]) -> None:
        """Refresh the heartbeat of this process's locks on ``ids``."""
        me, now = os.getpid(), time.time()

        def fn(rows):
            for i in ids:
                lock = rows[i].get("lock")
                if rows[i]["status"] == "running" and lock and lock.get("pid") == me:
                    lock["heartbeat"] = now

        self.update(fn)

    def finish(self, results: dict[str, dict[str, Any]]) -> None:
        """Write each run's outcome (``{"status", "reason", "metrics", "labels"}``) and drop its lock."""

        def fn(rows):
            for i, res in results.items():
                rows[i].update(res)
                rows[i]["lock"] = None

        self.update(fn)

    def release(self, ids: list[str]) -> None:
        """Back to pending (an interrupted executor): the runs' checkpoints stay for the resume."""

        def fn(rows):
            for i in ids:
                if rows[i]["status"] == "running" and (rows[i].get("lock") or {}).get("pid") == os.getpid():
                    rows[i].update(status="pending", lock=None)

        self.update(fn)
