"""analyses/sweep.py: the commands, one-line errors (exit 2, nothing written), resume after kill -9."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures_sweeps import tiny_text

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "analyses"))
import sweep  # noqa: E402

from anchor_interp.sweeps.table import TIME_COLUMNS  # noqa: E402


def _table(path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIME_COLUMNS} for r in csv.DictReader(f)]


def test_help_does_not_import_torch():
    code = ("import runpy, sys\nsys.argv = ['sweep.py', 'run', '--help']\ntry:\n"
            f"    runpy.run_path({str(ROOT / 'analyses' / 'sweep.py')!r}, run_name='__main__')\n"
            "except SystemExit:\n    pass\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "--max-stack" in out.stdout and out.stdout.strip().endswith("False")


def test_expand_lists_runs_and_the_estimate(tmp_path, capsys):
    f = tmp_path / "s.toml"
    f.write_text(tiny_text())
    assert sweep.main(["expand", str(f)]) == 0
    out = capsys.readouterr().out
    assert "tiny: 4 runs" in out and "total: 30 steps" in out and "1 stack(s)" in out
    assert not (tmp_path / "tiny").exists()


@pytest.mark.parametrize("args, message", [
    (["expand", "{dir}/missing.toml"], "does not exist"),
    (["run", "{bad}"], "unknown [settings] key 'colour'"),
    (["run", "{ok}", "--out", "{ok}"], "exists and is not a folder"),
    (["run", "{ok}", "--workers", "0"], "--workers must be >= 1"),
    (["run", "{ok}", "--out", "{dir}"], "holds files but no sweep"),
    (["run", "{ok}", "--device", "tpu"], "--device 'tpu' is not a device"),
    (["run", "{ok}", "--executor", "ray", "--device", "cuda"], "--device cuda"),
    (["status", "{dir}"], "is not a sweep folder"),
    (["table", "{dir}/nothing"], "is not a sweep folder"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    ok, bad = tmp_path / "ok.toml", tmp_path / "bad.toml"
    ok.write_text(tiny_text())
    bad.write_text(tiny_text().replace("[settings]", "[settings]\ncolour = 1"))
    argv = [a.format(dir=tmp_path, ok=ok, bad=bad) for a in args]
    before = sorted(p.name for p in tmp_path.iterdir())
    p = subprocess.run([sys.executable, str(ROOT / "analyses" / "sweep.py"), *argv], capture_output=True, text=True,
                       env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert p.returncode == 2, p.stderr
    assert message in p.stderr and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == before


def test_run_rerun_status_table_plot(tiny_done, tmp_path, capsys):
    folder, _ = tiny_done
    f = tmp_path / "s.toml"
    f.write_text(tiny_text())
    assert sweep.main(["run", str(f), "--out", str(folder), "--workers", "1"]) == 0  # all done: nothing trained
    out = capsys.readouterr().out
    assert "4 done (0 stack(s) trained" in out
    assert sweep.main(["status", str(folder)]) == 0
    assert "4 runs: 0 pending, 0 running, 4 done, 0 failed" in capsys.readouterr().out
    assert sweep.main(["table", str(folder), "--out", str(tmp_path / "t.csv")]) == 0
    assert _table(tmp_path / "t.csv") == _table(folder / "table.csv")
    assert sweep.main(["plot", str(folder), "--out", str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "accuracy_vs_n.png").exists()


def test_kill_9_mid_sweep_then_rerun_gives_the_same_table(tmp_path):
    """A sweep killed (SIGKILL) while two worker processes train its two stacks resumes from their checkpoints
    and gives the table of an uninterrupted in-process run. (Killed between checkpoint writes, as almost
    always: a kill while a stack's checkpoints are being written resumes them in two groups, equal to float
    tolerance only; docs/sweeps.md.)"""
    text = tiny_text(name="killed", epochs=10, n_train="[200, 240]", batch_size=10, find_heads=False)
    f = tmp_path / "s.toml"
    f.write_text(text)
    cmd = [sys.executable, str(ROOT / "analyses" / "sweep.py"), "run", str(f), "--max-stack", "2",
           "--checkpoint-every-steps", "5"]
    p = subprocess.Popen([*cmd, "--workers", "2", "--out", str(tmp_path / "a")], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    killed = False
    while time.monotonic() < deadline and p.poll() is None:
        try:
            resumes = [json.loads(m.read_text())["resume"] for m in (tmp_path / "a" / "runs").glob("*/checkpoint.json")]
        except (OSError, ValueError):
            continue
        if len(resumes) == 4 and all(resumes):
            steps = sorted(r["global_step"] for r in resumes)
            if steps[0] == steps[1] and steps[2] == steps[3]:  # each stack's pair at one step (stacks may differ)
                p.send_signal(signal.SIGKILL)
                killed = True
                break
        time.sleep(0.02)
    p.wait()
    assert killed, "the sweep finished (or never checkpointed) before it could be killed"
    time.sleep(0.5)  # the workers die with their parent (PR_SET_PDEATHSIG): no checkpoint changes after
    metas = sorted((tmp_path / "a" / "runs").glob("*/checkpoint.json"))
    before = [m.stat().st_mtime_ns for m in metas]
    time.sleep(0.7)
    assert [m.stat().st_mtime_ns for m in metas] == before
    rows = json.loads((tmp_path / "a" / "manifest.json").read_text())["runs"]
    assert {r["status"] for r in rows} == {"running"}  # left behind by the killed process: stale locks
    assert sweep.main(["status", str(tmp_path / "a")]) == 0
    assert sweep.main([*cmd[2:], "--workers", "1", "--out", str(tmp_path / "a")]) == 0  # resumes
    assert sweep.main([*cmd[2:], "--workers", "1", "--out", str(tmp_path / "b")]) == 0  # uninterrupted
    a, b = _table(tmp_path / "a" / "table.csv"), _table(tmp_path / "b" / "table.csv")
    assert [r["status"] for r in a] == ["done"] * 4
    assert a == b
    hist = json.loads(next((tmp_path / "a" / "runs").glob("*/checkpoint.json")).read_text())["history"]
    assert [h["epoch"] for h in hist] == list(range(1, 11))
