"""analyses/inductive_bias.py at toy size: stacks group runs by architecture and recipe, histories
stream to JSONL, the summary reads them, `choose` picks a HookedTransformer variant."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.scripts import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "analyses" / "inductive_bias.py"


@pytest.fixture(scope="module")
def ib():
    return load_script("analyses/inductive_bias.py")


def test_runs_share_a_stack_only_with_equal_architecture_and_recipe(ib):
    args = ib.parse_args(["study", "--sizes", "400", "600", "--seeds", "0", "1", "--out", "/tmp/x-unused"])
    stacks = ib.plan_stacks("study", args)
    by_variants = sorted(sorted({r["variant"] for r in s["runs"]}) for s in stacks)
    assert ["paper", "tl_init", "torch_init"] in by_variants  # three inits, one architecture, one recipe
    assert ["no_bias", "torch_init_no_bias"] in by_variants  # the frozen-bias recipe
    assert ["reference"] in by_variants and ["paper_wd_0.1"] in by_variants
    assert sum(len(s["runs"]) for s in stacks) == len(ib.VARIANTS) * 2 * 2
    fig = ib.plan_stacks("figure", ib.parse_args(["figure", "--variant", "paper", "--out", "/tmp/x-unused"]))
    early = [r for s in fig for r in s["runs"] if r["recipe"].get("early_stop_acc") == 1.0]
    full = [r for s in fig for r in s["runs"] if "early_stop_acc" not in r["recipe"]]
    assert len(early) == 9 * 5 and [r["n_train"] for r in full] == [400, 600]
    assert all(r["file"].endswith("_full.jsonl") for r in full)


def test_acc_at_reads_the_evaluation_at_that_epoch(ib):
    rows = [{"epoch": 10, "test_acc": 0.1}, {"epoch": 20, "test_acc": 0.3}]
    assert ib.acc_at(rows, 20) == 0.3 and ib.acc_at(rows, 15) == 0.1
    assert ib.acc_at(rows, 30) is None  # not reached: cut short
    early = rows + [{"end": True, "epoch": 20, "stopped_early": True}]
    assert ib.acc_at(early, 4000) == 0.3  # stopped at held-out 1.0 (here 0.3 for the test): the value stands


def test_toy_study_streams_histories_and_chooses(ib, tmp_path, capsys):
    out = tmp_path / "study"
    assert ib.main(["study", "--preset", "small", "--epochs", "1", "--sizes", "400", "600", "--seeds", "0",
                    "--workers", "1", "--device", "cpu", "--variants", "paper", "reference", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "reference" / "n400_seed0.jsonl").read_text().splitlines()]
    assert rows[0]["epoch"] == 1 and 0 <= rows[0]["test_acc"] <= 1 and rows[-1]["end"]
    summary = json.loads((out / "summary.json").read_text())
    assert {(c["variant"], c["n_train"]) for c in summary["cells"]} == {
        ("paper", 400), ("paper", 600), ("reference", 400), ("reference", 600)}
    assert ib.choose(summary) == "paper"  # the only HookedTransformer variant trained; never the reference
    assert ib.main(["choose", str(out)]) == 0 and capsys.readouterr().out.strip().endswith("paper")


def test_toy_reference_figure_with_a_deadline_and_its_plot(ib, tmp_path):
    """One stack with --deadline-s runs in a process it can stop (so the script runs as users run it,
    not imported); plot draws accuracy vs N."""
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "fig"
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, str(root / "analyses" / "inductive_bias.py"), "figure", "--variant", "reference",
                    "--full", "--workers", "1", "--deadline-s", "120", "--preset", "small", "--epochs", "1",
                    "--sizes", "50", "100", "--seeds", "0", "--device", "cpu", "--out", str(out)],
                   check=True, capture_output=True, cwd=root)
    summary = json.loads((out / "summary.json").read_text())
    assert {c["n_train"] for c in summary["cells"]} == {50, 100} and all(not c["full"] for c in summary["cells"])
    assert ib.main(["plot", str(out)]) == 0
    assert (out / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
