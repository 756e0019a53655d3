"""One bad-input table for every script (issue 14, item 8).

Each row of TABLE is one kind of bad input; each script answers it with ONE line on stderr and exit
status 2, writing nothing. The same rows run against train.py, reproduce_identity_curve.py, head_study.py,
find_heads and the benchmarks that take arguments, each as a subprocess in an empty temporary folder (a
script's row is left out only where the script has no such option: see docs/models.md, "Bad input").
All subprocesses run concurrently in one module fixture, so the module takes a few seconds.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 60  # per subprocess; each fails in well under 5 s

# the output folder every row gives (relative to the subprocess's cwd, a fresh temporary folder); "BLOCKED" is
# a path under a regular file (no folder can be made there), "READONLY" one where no file can be created
OUT, BLOCKED, READONLY = "out", "blocker/out", "<readonly>/out"

# case -> script -> the bad arguments (None: the script has no such option). Every script gets its own
# valid output path (if any) in BASE, so that a row fails for its own reason only.
SCRIPTS = {
    "train": "analyses/train.py",
    "reproduce_identity_curve": "analyses/reproduce_identity_curve.py",
    "head_study": "analyses/head_study.py",
    "find_heads": "analyses/find_heads.py",
    "bench_many_models": "benchmarks/bench_many_models.py",
    "bench_memory": "benchmarks/bench_memory.py",
    "bench_patching": "benchmarks/bench_patching.py",
    "bench_precision": "benchmarks/bench_precision.py",
    "bench_sampling": "benchmarks/bench_sampling.py",
    "bench_training": "benchmarks/bench_training.py",
    "find_heads_cli": "benchmarks/find_heads_cli.py",
}
OUT_OPTION = {"train": "--out", "reproduce_identity_curve": "--out", "head_study": "--out",
              "find_heads": "--report", "bench_many_models": "--json", "bench_memory": "--json",
              "bench_patching": "--json", "bench_precision": "--json", "bench_training": "--json"}
OUT_FILE = {"--out": "", "--report": "/r.html", "--json": "/r.json"}  # appended to the folder
COUNT = {"train": "--threads", "reproduce_identity_curve": "--sizes", "head_study": "--n-samples",
         "find_heads": "--n-samples", "bench_memory": "--batch", "find_heads_cli": "--repeats",
         "bench_many_models": "--threads", "bench_patching": "--threads", "bench_precision": "--threads",
         "bench_sampling": "--threads", "bench_training": "--threads"}
DEVICE = {"train", "reproduce_identity_curve", "find_heads"}
FIELDS = {"train": "--set", "reproduce_identity_curve": "--set", "head_study": "--recipe-override",
          "bench_many_models": "--set"}


def _row(case: str, name: str) -> list[str] | None:
    count, fields = COUNT.get(name), FIELDS.get(name)
    out_opt = OUT_OPTION.get(name)
    if case == "unknown option":
        return ["--no-such-option"]
    if case == "bad integer":
        return [count, "abc"]
    if case == "negative count":
        return [count, "-5"]
    if case == "zero count":
        return {"train": ["--n-train", "0"], "reproduce_identity_curve": ["--seeds", "0"],
                "head_study": ["--threads", "0"], "find_heads": ["--n-samples", "0"],
                "bench_sampling": ["--repeats", "0"]}.get(name, [count, "0"])
    if case == "negative seed":
        return {"train": ["--seed", "-1"], "head_study": ["--seeds", "-1"], "find_heads": ["--seed", "-1"],
                "bench_patching": ["--seed", "-1"]}.get(name)
    if case == "repeated seeds":
        return {"train": ["--seeds", "0", "0"], "head_study": ["--seeds", "0", "0"],
                "reproduce_identity_curve": ["--sizes", "100", "100"]}.get(name)
    if case == "bad device":
        return ["--device", "gpu"] if name in DEVICE else None
    if case == "bad field=value":
        return None if fields is None else [fields, "lr=abc" if fields == "--set" else 'lr="abc"']
    if case == "unknown field":
        if name == "head_study":
            return ["--model-override", "nosuch=1"]  # checked against HookedTransformerConfig (imports it)
        return None if fields is None else [fields, "nosuch=1"]
    if case in ("output under a file", "read-only output folder"):
        folder = BLOCKED if case == "output under a file" else READONLY
        return None if out_opt is None else [out_opt, folder + OUT_FILE[out_opt]]
    raise AssertionError(case)


CASES = ("unknown option", "bad integer", "negative count", "zero count", "negative seed", "repeated seeds",
         "bad device", "bad field=value", "unknown field", "output under a file", "read-only output folder")
TABLE = {(case, name): args for case in CASES for name in SCRIPTS if (args := _row(case, name)) is not None}


def _base(name: str) -> list[str]:
    """A valid output path for the script (so that nothing can land in the repository)."""
    opt = OUT_OPTION.get(name)
    return [] if opt is None else [opt, OUT + OUT_FILE[opt]]


def _readonly_folder(tmp: Path) -> str:
    if os.name == "posix" and os.geteuid() == 0:  # root writes anywhere: /proc refuses new entries even to root
        return "/proc/anchor-interp-no-such-dir"
    ro = tmp / "readonly"
    ro.mkdir()
    ro.chmod(0o555)
    return str(ro)


def _run(key, root: Path):
    case, name = key
    tmp = root / f"{name}-{CASES.index(case)}"
    tmp.mkdir()
    (tmp / "blocker").write_text("a file, not a folder\n")
    args = [a.replace("<readonly>", _readonly_folder(tmp)) if "<readonly>" in a else a for a in TABLE[key]]
    before = sorted(p.relative_to(tmp) for p in tmp.rglob("*"))
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, str(REPO / SCRIPTS[name]), *_base(name), *args], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    after = sorted(p.relative_to(tmp) for p in tmp.rglob("*"))
    return proc, before, after


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {key: pool.submit(_run, key, root) for key in TABLE}
        return {key: f.result() for key, f in futures.items()}


@pytest.mark.parametrize("key", list(TABLE), ids=[f"{n}: {c}" for c, n in TABLE])
def test_bad_input_is_one_line_exit_2_nothing_written(results, key):
    proc, before, after = results[key]
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert len(err) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "usage:" not in proc.stderr
    assert after == before, f"wrote {sorted(set(after) - set(before))}"


def test_every_script_has_the_common_rows():
    """Unknown option, bad integer and negative count apply to every script; an output row to each that writes."""
    for name in SCRIPTS:
        for case in ("unknown option", "bad integer", "negative count"):
            assert (case, name) in TABLE
        if name in OUT_OPTION:
            assert ("output under a file", name) in TABLE


def test_recipe_field_table_matches_the_recipe():
    """anchor_interp.cli.args names the Recipe fields without importing torch; they must agree."""
    from anchor_interp.cli.args import RECIPE_FIELD_TYPES
    from anchor_interp.training.recipe import Recipe

    assert list(RECIPE_FIELD_TYPES) == [f.name for f in dataclasses.fields(Recipe)]
