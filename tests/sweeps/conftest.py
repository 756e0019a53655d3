"""Session fixtures of the sweep tests: the tiny sweep (tests/fixtures_sweeps.py) and one finished run of it."""

from __future__ import annotations

import pytest
from fixtures_sweeps import tiny_text


@pytest.fixture(scope="session")
def tiny_spec():
    from anchor_interp.sweeps import parse_spec

    return parse_spec(tiny_text(), where="tiny.toml")


@pytest.fixture(scope="session")
def tiny_done(tmp_path_factory, tiny_spec):
    """(folder, summary) of the tiny sweep run once in this process (local executor, workers=1)."""
    from anchor_interp.sweeps import run_sweep

    folder = tmp_path_factory.mktemp("tiny_sweep")
    summary = run_sweep(tiny_spec, folder, workers=1, log=lambda m: None)
    return folder, summary
