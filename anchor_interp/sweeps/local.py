"""The local executor: stacks trained one per process, one torch thread each (``workers`` processes), or
in this process (``workers=1``: also the way to train every stack on one GPU from one process).

Worker processes are started with ``spawn`` and die with their parent (Linux: PR_SET_PDEATHSIG; elsewhere a
watchdog thread notices the parent is gone), so a killed sweep leaves no orphan writing checkpoints.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from anchor_interp.sweeps.execute import ExecOptions, train_stack
from anchor_interp.sweeps.spec import RunSpec

__all__ = ["InProcess", "ProcessPool", "local_backend"]


def _set_threads(threads: int) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


class InProcess:
    """Train each stack in this process when it is submitted (window 1)."""

    window = 1

    def __init__(self, folder: Path, opts: ExecOptions, threads: int = 1):
        self.folder, self.opts = folder, opts
        _set_threads(threads)
        self._done: dict[int, tuple[dict | None, BaseException | None]] = {}
        self._n = 0

    def submit(self, runs: list[RunSpec]) -> int:
        self._n += 1
        try:
            self._done[self._n] = (train_stack(runs, self.folder, self.opts), None)
        except Exception as e:  # noqa: BLE001 - recorded as the stack's failure
            self._done[self._n] = (None, e)
        return self._n

    def wait(self, handles: list) -> list[tuple[Any, dict | None, BaseException | None]]:
        return [(h, *self._done.pop(h)) for h in handles]

    def close(self) -> None:
        pass


def _die_with_parent(threads: int) -> None:
    """Worker initializer: one torch thread, and end when the parent process ends."""
    import signal
    import threading
    import time

    parent = os.getppid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch():
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
    _set_threads(threads)


class ProcessPool:
    """Train stacks in ``workers`` spawned processes (one torch thread each by default)."""

    def __init__(self, folder: Path, opts: ExecOptions, workers: int, threads: int = 1):
        self.folder, self.opts, self.window, self.threads = folder, opts, workers, threads
        self.pool = self._new_pool()

    def _new_pool(self):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(self.window, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_die_with_parent, initargs=(self.threads,))

    def submit(self, runs: list[RunSpec]):
        from concurrent.futures.process import BrokenProcessPool

        try:
            return self.pool.submit(train_stack, runs, self.folder, self.opts)
        except BrokenProcessPool:  # a worker was killed (e.g. out of memory): its stacks failed; go on with a new pool
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = self._new_pool()
            return self.pool.submit(train_stack, runs, self.folder, self.opts)

    def wait(self, handles: list) -> list[tuple[Any, dict | None, BaseException | None]]:
        from concurrent.futures import FIRST_COMPLETED, wait

        done, _ = wait(handles, return_when=FIRST_COMPLETED)
        out = []
        for f in done:
            err = f.exception()
            out.append((f, None if err else f.result(), err))
        return out

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def local_backend(folder: Path, opts: ExecOptions, workers: int | None = None, threads: int = 1):
    """``workers`` processes (default: the CPU cores), or in-process for ``workers=1``."""
    workers = workers or os.cpu_count() or 1
    return InProcess(folder, opts, threads) if workers == 1 else ProcessPool(folder, opts, workers, threads)
