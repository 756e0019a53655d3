"""Start-up and end-to-end time of the find_heads CLI, against baselines measured in the same run.

    python benchmarks/find_heads_cli.py [--repeats 5]

Each case runs in a fresh subprocess (what a user pays); the table gives the median wall time and the
median CPU time (user + sys of the child), and ratios to the baselines:

- ``python -c pass`` (interpreter start) for ``--help``;
- ``import anchor_interp.models.adapter`` (TransformerLens import, which any model load pays) for the no-argument run.

The no-argument run analyses the shipped default model and writes report + JSON + PNGs into a
temporary folder (--force). On a shared machine wall time depends on the load: read the CPU column
and the ratios, and the load average printed with them.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from anchor_interp.cli.args import OneLineParser, parse_pos_int, run_main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def run_once(cmd: list[str], cwd: str) -> tuple[float, float]:
    """(wall seconds, child CPU seconds) of one run of ``cmd``; raises if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({proc.returncode}): {proc.stderr[-800:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main(argv=None) -> int:
    ap = OneLineParser(prog="find_heads_cli.py", description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=parse_pos_int("--repeats"), default=5)
    args = ap.parse_args(argv)
    py = sys.executable
    script = str(REPO / "analyses" / "find_heads.py")
    with tempfile.TemporaryDirectory() as tmp:
        cases = {
            "python -c pass": [py, "-c", "pass"],
            "find_heads --help": [py, script, "--help"],
            "import anchor_interp.models.adapter": [py, "-c", "import anchor_interp.models.adapter"],
            "find_heads (no arguments)": [py, script, "--force", "--quiet"],
        }
        results: dict[str, tuple[float, float]] = {}
        run_once(cases["find_heads (no arguments)"], tmp)  # warm the file cache once
        for name, cmd in cases.items():
            walls, cpus = [], []
            for _ in range(args.repeats):
                w, c = run_once(cmd, tmp)
                walls.append(w)
                cpus.append(c)
            results[name] = (statistics.median(walls), statistics.median(cpus))
    print(f"{'case':<28} {'wall (median s)':>16} {'cpu (median s)':>15}")
    for name, (w, c) in results.items():
        print(f"{name:<28} {w:>16.3f} {c:>15.3f}")
    h, p = results["find_heads --help"], results["python -c pass"]
    n, t = results["find_heads (no arguments)"], results["import anchor_interp.models.adapter"]
    print(f"--help / python start-up: wall {h[0] / p[0]:.2f}x, cpu {h[1] / p[1]:.2f}x")
    print(f"no-arg run / TL import:   wall {n[0] / t[0]:.2f}x, cpu {n[1] / t[1]:.2f}x "
          f"(no-arg run minus TL import: {n[1] - t[1]:.2f} s cpu)")
    print(f"repeats {args.repeats}, load average {os.getloadavg()[0]:.2f} (2 cores shared)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, prog="find_heads_cli.py"))
