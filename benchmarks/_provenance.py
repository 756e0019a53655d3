"""What every benchmark records beside its numbers: the command, the date, the machine and its load.

Imported by the scripts in this folder (each puts the folder on ``sys.path`` first, so that they run
as ``python benchmarks/<script>.py`` and load in tests by file path alike).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from datetime import datetime, timezone

from anchor_interp.atomic import atomic_write_text


def machine_line() -> str:
    """One line for the end of a benchmark's printout: load average, cores, torch version and threads."""
    import torch

    return (f"load average {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores, shared); torch {torch.__version__}, "
            f"{torch.get_num_threads()} thread(s); {platform.platform()}")


def run_record(script: str, argv: list[str] | None) -> dict:
    """The command (``argv`` = None: this process's own arguments), UTC date, machine, load and torch."""
    import torch

    args = sys.argv[1:] if argv is None else argv
    return {"command": f"python benchmarks/{script} " + " ".join(map(shlex.quote, args)),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.platform(),
            "processor": platform.processor(), "cpus": os.cpu_count(), "load_avg": os.getloadavg(),
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def write_json(path: str | os.PathLike, script: str, argv: list[str] | None, **payload) -> None:
    """``run_record`` plus ``payload``, written atomically (a reader never sees half a file)."""
    out = {**run_record(script, argv), **payload}
    atomic_write_text(path, json.dumps(out, indent=1) + "\n", make_parents=True)
