"""Report outputs are written all-or-nothing (issue 14 item 6): anchor_interp.atomic.write_file_set,
report.write_report and the find_heads CLI's JSON + HTML + PNG set."""

from __future__ import annotations

import os

import pytest
from fixtures_findheads import synthetic_result

from anchor_interp import atomic, report
from anchor_interp.cli import find_heads as cli


class Boom(Exception):
    pass


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


def contents(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def failing_after(monkeypatch, module, name, k, exc=Boom):
    """Let the first k calls of module.name through, raise ``exc`` at call k + 1 (only there: the
    clean-up after it works)."""
    real, calls = getattr(module, name), {"n": 0}

    def fn(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == k + 1:
            raise exc(f"{name} call {calls['n']}")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, fn)
    return calls


FILES = {"report.html": b"<html>new</html>", "report_a.png": b"new a", "report.json": b"{}"}


@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt])
@pytest.mark.parametrize("k", [0, 1, 2])
def test_a_failure_while_writing_leaves_nothing_new(tmp_path, monkeypatch, k, exc):
    failing_after(monkeypatch, atomic, "atomic_write_bytes", k, exc)
    with pytest.raises(exc):
        atomic.write_file_set({tmp_path / n: d for n, d in FILES.items()})
    assert listing(tmp_path) == []  # no file of the set, no staging folder


@pytest.mark.parametrize("k", range(7))
def test_a_failure_at_any_rename_keeps_the_old_set(tmp_path, monkeypatch, k):
    old = {"report.html": b"old", "report_a.png": b"old a", "report.json": b"old json", "report_b.png": b"old b"}
    for n, d in old.items():
        (tmp_path / n).write_bytes(d)
    calls = failing_after(monkeypatch, os, "replace", k)
    files = {tmp_path / n: d for n, d in FILES.items()}
    try:
        atomic.write_file_set(files, overwrite=True, remove=[tmp_path / "report_b.png"])
    except Boom:
        assert contents(tmp_path) == old  # everything put back, staging removed
    else:
        assert calls["n"] <= k  # no failure was reached: the new set, the stale figure gone
        assert contents(tmp_path) == FILES


def test_existing_files_are_not_overwritten_without_overwrite(tmp_path):
    (tmp_path / "report.json").write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="report.json"):
        atomic.write_file_set({tmp_path / n: d for n, d in FILES.items()})
    assert contents(tmp_path) == {"report.json": b"mine"}


def test_write_report_failure_in_the_middle_leaves_no_partial_report(tmp_path, monkeypatch):
    result = synthetic_result()
    path = tmp_path / "r.html"
    failing_after(monkeypatch, atomic, "atomic_write_bytes", 2)  # the third file of the set fails
    with pytest.raises(Boom):
        report.write_report(result, path, extra_files={tmp_path / "r.json": b"{}"})
    assert listing(tmp_path) == []
    monkeypatch.undo()
    report.write_report(result, path)
    first = contents(tmp_path)
    assert "r.html" in first and len(first) >= 2
    failing_after(monkeypatch, atomic, "atomic_write_bytes", 1)
    with pytest.raises(Boom):  # --force over a complete report, failing midway: the old one stays
        report.write_report(result, path, overwrite=True)
    assert contents(tmp_path) == first


def test_find_heads_outputs_are_one_set(tmp_path, monkeypatch, capsys):
    result = synthetic_result()
    html, js = tmp_path / "out" / "report.html", tmp_path / "out" / "report.json"
    failing_after(monkeypatch, atomic, "atomic_write_bytes", 3)
    with pytest.raises(Boom):
        cli._write_outputs(result, html, js, force=False)
    assert listing(tmp_path / "out") == []
    monkeypatch.undo()
    cli._write_outputs(result, html, js, force=False)
    assert {"report.html", "report.json"} <= set(listing(tmp_path / "out"))
    assert js.read_text() == result.to_json()
    capsys.readouterr()


def test_unwritable_output_fails_before_the_analysis(capsys, monkeypatch):
    def no_analysis(*a, **k):
        raise AssertionError("the analysis ran")

    monkeypatch.setattr(cli, "_run", no_analysis)
    rc = cli.main(["--report", "/proc/anchor_interp_test/report.html"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "cannot create files under /proc" in err[0]
