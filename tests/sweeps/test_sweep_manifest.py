"""sweeps/manifest.py: rows, atomic writes, claims, stale locks, heartbeats."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anchor_interp.sweeps.manifest import STALE_AFTER_S, Manifest, is_stale
from anchor_interp.sweeps.spec import expand


@pytest.fixture
def manifest(tmp_path, tiny_spec):
    m = Manifest(tmp_path)
    runs = expand(tiny_spec)
    assert m.init("tiny", runs, "source") == [r.id for r in runs]
    return m, [r.id for r in runs]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_init_is_idempotent_and_refuses_another_sweep(manifest, tiny_spec):
    m, ids = manifest
    assert m.init("tiny", expand(tiny_spec), "changed") == []  # a rerun adds nothing, keeps sweep.toml
    assert (m.folder / "sweep.toml").read_text() == "source"
    assert [r["status"] for r in m.rows()] == ["pending"] * 4
    with pytest.raises(ValueError, match="holds the sweep 'tiny'"):
        m.init("other", [], "")
    assert not [p for p in os.listdir(m.folder) if p.endswith(".tmp")]  # atomic writes leave no temp files


def test_claim_blocks_a_live_lock_and_takes_a_stale_one(manifest):
    m, ids = manifest
    assert m.claim(ids[:2], "s1")
    assert not m.claim(ids[1:3], "s2")  # ids[1] is running under this (live) process's lock
    rows = {r["id"]: r for r in m.rows()}
    assert rows[ids[2]]["status"] == "pending" and rows[ids[0]]["lock"]["pid"] == os.getpid()

    def kill(rows):  # as if the claiming process had been killed
        rows[ids[0]]["lock"]["pid"] = rows[ids[1]]["lock"]["pid"] = _dead_pid()

    m.update(kill)
    assert m.claim(ids[:3], "s3")
    assert {r["lock"]["stack"] for r in m.rows() if r["status"] == "running"} == {"s3"}


def test_staleness_by_heartbeat_and_host():
    now = time.time()
    live = {"pid": os.getpid(), "host": socket.gethostname(), "heartbeat": now}
    assert not is_stale(live, now)
    assert is_stale({**live, "heartbeat": now - STALE_AFTER_S - 1}, now)
    assert not is_stale({**live, "host": "elsewhere", "pid": 1}, now)  # another host: only the heartbeat counts
    assert is_stale(None)


def test_heartbeat_finish_and_release(manifest):
    m, ids = manifest
    m.claim(ids, "s")
    before = {r["id"]: r["lock"]["heartbeat"] for r in m.rows()}
    time.sleep(0.01)
    m.heartbeat(ids[:1])
    after = {r["id"]: r["lock"]["heartbeat"] for r in m.rows()}
    assert after[ids[0]] > before[ids[0]] and after[ids[1]] == before[ids[1]]
    m.finish({ids[0]: {"status": "done", "reason": "", "metrics": {"test_acc": 0.5}, "labels": None}})
    m.release(ids[1:])
    rows = m.rows()
    assert [r["status"] for r in rows] == ["done", "pending", "pending", "pending"]
    assert all(r["lock"] is None for r in rows)
    assert json.loads(m.path.read_text())["runs"][0]["metrics"] == {"test_acc": 0.5}


def test_read_errors_are_one_line(tmp_path):
    with pytest.raises(ValueError, match="is not a sweep folder"):
        Manifest(tmp_path).read()
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(ValueError, match="cannot be read"):
        Manifest(tmp_path).read()


def test_concurrent_writers_lose_no_update(manifest):
    """Two processes each make 30 read-modify-writes of the same row: the flock keeps all 60."""
    m, ids = manifest
    code = ("import sys\nfrom anchor_interp.sweeps.manifest import Manifest\nm = Manifest(sys.argv[1])\n"
            "def bump(rows):\n    r = rows[sys.argv[2]]['metrics']\n    r['n'] = r.get('n', 0) + 1\n"
            "for _ in range(30):\n    m.update(bump)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                         os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(m.folder), ids[0]], env=env) for _ in range(2)]
    assert [p.wait() for p in procs] == [0, 0]
    assert m.rows()[0]["metrics"]["n"] == 60
