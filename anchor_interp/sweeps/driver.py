"""The executor-independent part of running a sweep: prepare the folder, claim stacks in the manifest,
hand them to a backend (in-process, a process pool, Ray), keep the locks' heartbeats, record outcomes.

The driver process is the only writer of the manifest; workers only write their runs' checkpoint folders.
A stack is claimed (its unfinished runs marked running under this process's lock) just before it is
handed to a backend, at most ``window`` stacks at a time, so a second executor on the same folder takes
other stacks, and a killed driver's runs are recognised as stale (manifest.is_stale) and resumed.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from anchor_interp.sweeps.execute import ExecOptions
from anchor_interp.sweeps.manifest import HEARTBEAT_S, Manifest, is_stale
from anchor_interp.sweeps.pack import DEFAULT_MAX_STACK, Stack, pack
from anchor_interp.sweeps.spec import RunSpec, SweepError, SweepSpec, expand

__all__ = ["Backend", "SweepSummary", "default_folder", "drive", "prepare", "todo_stacks"]


@runtime_checkable
class Backend(Protocol):
    """Where stacks are trained: ``submit(runs)`` returns a handle; ``wait(handles)`` blocks until at least
    one finishes and returns ``[(handle, outcome or None, error or None)]``; ``close()`` frees workers."""

    window: int

    def submit(self, runs: list[RunSpec]) -> Any: ...

    def wait(self, handles: list) -> list[tuple[Any, dict | None, BaseException | None]]: ...

    def close(self) -> None: ...


@dataclass
class SweepSummary:
    """What one ``run`` did: stacks trained, runs now done / failed / pending, runs held by another executor."""

    folder: Path
    stacks_run: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    held_elsewhere: list[str] = field(default_factory=list)
    seconds: float = 0.0


def default_folder(name: str) -> Path:
    """``$XDG_CACHE_HOME/anchor_interp/sweeps/<name>`` (``~/.cache`` when XDG_CACHE_HOME is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "anchor_interp" / "sweeps" / name


def prepare(spec: SweepSpec, folder: str | os.PathLike, max_stack: int = DEFAULT_MAX_STACK
            ) -> tuple[list[RunSpec], list[Stack]]:
    """Expand the sweep, create or extend the folder's manifest, and pack the runs into stacks.
    Raises SweepError / ValueError (one line) for a bad sweep or a folder holding another sweep."""
    runs = expand(spec)
    stacks = pack(runs, max_stack)
    folder = Path(folder)
    if folder.is_dir() and any(folder.iterdir()) and not Manifest(folder).exists():
        raise SweepError(f"{folder} holds files but no sweep (no manifest.json); give a new or empty --out folder "
                         "so nothing there is mixed with the sweep's runs")
    Manifest(folder).init(spec.name, runs, spec.source)
    return runs, stacks


def todo_stacks(folder: Path, stacks: list[Stack], retry_failed: bool) -> list[tuple[Stack, list[str]]]:
    """Each stack with its runs still to do: pending, running under a stale lock, or failed (``retry_failed``)."""
    rows = {r["id"]: r for r in Manifest(folder).rows()}
    out = []
    for st in stacks:
        ids = [i for i in st.ids if rows[i]["status"] == "pending"
               or (rows[i]["status"] == "running" and is_stale(rows[i]["lock"]))
               or (rows[i]["status"] == "failed" and retry_failed)]
        if ids:
            out.append((st, ids))
    return out


class _Heartbeat(threading.Thread):
    """Refreshes the heartbeat of the locks this process holds, every HEARTBEAT_S seconds."""

    def __init__(self, manifest: Manifest):
        super().__init__(daemon=True, name="sweep-heartbeat")
        self.manifest, self.ids, self.stop = manifest, set(), threading.Event()
        self.lock = threading.Lock()

    def run(self):
        while not self.stop.wait(HEARTBEAT_S):
            with self.lock:
                ids = list(self.ids)
            if ids:
                try:
                    self.manifest.heartbeat(ids)
                except (OSError, ValueError):
                    pass  # the next beat tries again; a stale lock only means another executor may resume


def drive(folder: str | os.PathLike, stacks: list[Stack], backend: Backend, *, retry_failed: bool = False,
          log: Callable[[str], None] = print) -> SweepSummary:
    """Train every unfinished stack of ``stacks`` on ``backend`` and record the outcomes in the manifest.
    On KeyboardInterrupt the claimed runs go back to pending (their checkpoints stay) and it re-raises."""
    folder = Path(folder)
    manifest = Manifest(folder)
    t0 = time.perf_counter()
    summary = SweepSummary(folder)
    queue = deque(todo_stacks(folder, stacks, retry_failed))
    inflight: dict[Any, tuple[Stack, list[str], float]] = {}
    held: set[str] = set()  # claimed by this process and not yet recorded
    beat = _Heartbeat(manifest)
    beat.start()
    try:
        while queue or inflight:
            while queue and len(inflight) < backend.window:
                st, ids = queue.popleft()
                if not manifest.claim(ids, st.id):
                    summary.held_elsewhere.extend(ids)
                    continue
                held.update(ids)
                with beat.lock:
                    beat.ids.update(ids)
                by_id = {r.id: r for r in st.runs}
                inflight[backend.submit([by_id[i] for i in ids])] = (st, ids, time.perf_counter())
            if not inflight:
                break
            for handle, outcome, err in backend.wait(list(inflight)):
                st, ids, t_sub = inflight.pop(handle)
                if err is not None:
                    reason = f"{type(err).__name__}: {' '.join(str(err).split())}"[:500]
                    outcome = {i: {"status": "failed", "reason": reason, "metrics": {}, "labels": None} for i in ids}
                manifest.finish(outcome)
                held.difference_update(ids)
                with beat.lock:
                    beat.ids.difference_update(ids)
                summary.stacks_run += 1
                states = [outcome[i]["status"] for i in ids]
                log(f"stack {st.id}: {len(ids)} run(s) in {time.perf_counter() - t_sub:.1f} s: "
                    + ", ".join(f"{states.count(s)} {s}" for s in ("done", "failed", "pending") if s in states))
    except BaseException:
        if held:
            manifest.release(sorted(held))
        raise
    finally:
        beat.stop.set()
        backend.close()
    rows = manifest.rows()
    for r in rows:
        summary.counts[r["status"]] = summary.counts.get(r["status"], 0) + 1
    summary.seconds = time.perf_counter() - t0
    return summary



def run_sweep(spec: SweepSpec, folder: str | os.PathLike | None = None, *, executor: str = "local",
              workers: int | None = None, max_stack: int = DEFAULT_MAX_STACK, opts: ExecOptions | None = None,
              threads: int = 1, retry_failed: bool = False, ray_address: str | None = None,
              gpus_per_stack: float = 0.0, log: Callable[[str], None] = print) -> SweepSummary:
    """Run (or resume) the sweep ``spec`` in ``folder`` (default :func:`default_folder`) with the ``local``
    or ``ray`` executor, then write the table (``folder/table.csv``). Finished runs are skipped, interrupted
    ones resumed from their checkpoints. Raises SweepError / ValueError for a bad sweep or folder, ImportError
    (with the install command) for ``ray`` without Ray installed."""
    from anchor_interp.sweeps.table import write_table

    folder = Path(folder) if folder is not None else default_folder(spec.name)
    opts = opts or ExecOptions()
    opts.after = dict(spec.after)
    if executor not in ("local", "ray"):
        raise ValueError(f"executor={executor!r}: use 'local' or 'ray'")
    _, stacks = prepare(spec, folder, max_stack)
    if executor == "ray":
        from anchor_interp.sweeps.ray_executor import RayBackend

        backend = RayBackend(folder, opts, address=ray_address, num_cpus=workers, gpus_per_stack=gpus_per_stack,
                             threads=threads)
    else:
        from anchor_interp.sweeps.local import local_backend

        backend = local_backend(folder, opts, workers, threads)
    summary = drive(folder, stacks, backend, retry_failed=retry_failed, log=log)
    write_table(folder)
    return summary
