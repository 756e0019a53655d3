"""The benchmark scripts still run (``--quick``, toy sizes) and write the JSON their docs describe.

Speed itself is measured by running the scripts, never here."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_training_quick(tmp_path):
    out = tmp_path / "t.json"
    assert load("bench_training").main(["--quick", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert [s["case"] for s in d["summary"]] == ["small:paper", "small:quick", "small:quick:precision=fp32"]
    assert [r["recipe_fields"]["precision"] for r in d["runs"]] == ["fp32", "bf16", "fp32"]
    for r in d["runs"]:
        assert r["epochs"] == len(r["trace"]) >= 1  # one held-out evaluation per epoch
        assert 0 <= r["eval_s"] <= r["wall_s"] and 0.0 <= r["best_acc"] <= 1.0
        assert r["reached"] == (r["best_acc"] >= d["target"])


@pytest.mark.parametrize("case", ["paper-fast", "paper:fast:lr", "paper:fast:precision=fp16", "paper:fast:lr_max=1"])
def test_bench_training_rejects_bad_case(case, capsys):
    with pytest.raises(SystemExit):
        load("bench_training").main(["--cases", case])
    assert case in capsys.readouterr().err


def test_bench_precision_quick(tmp_path):
    out = tmp_path / "p.json"
    assert load("bench_precision").main(["--quick", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    (mm,) = d["matmul"]
    assert set(mm["gflops"]) == {"fp32", "bf16"} and min(mm["gflops"].values()) > 0
    assert [r["case"] for r in d["steps"]] == ["small: training step, batch 50", "small: AdamW update"]
    assert set(d["steps"][1]["speedup"]) == {"fused"}


def test_bench_many_models_quick(tmp_path):
    out = tmp_path / "m.json"
    assert load("bench_many_models").main(["--quick", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert [r["k"] for r in d["throughput"]] == [1, 4]
    for r in d["throughput"]:
        assert r["together_s"] > 0 and r["separate_s"] > 0
        assert r["together_model_steps_per_s"] == pytest.approx(r["k"] * r["steps"] / r["together_s"])
    fig = d["figure"]
    assert fig["full_figure_sequences"] == 4000 * 10 * sum(range(200, 2301, 100))  # 1.1e9
    assert fig["full_figure_extrapolated_s"] > fig["measured_total_s"] > 0


def test_bench_memory_quick(tmp_path):
    out = tmp_path / "mem.json"
    proc = subprocess.run([sys.executable, str(BENCH / "bench_memory.py"), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r, fh = json.loads(out.read_text())["results"]
    assert r["case"] == "ours:patch_head_out" and r["peak_mib"] > 0 and r["rise_mib"] >= 0
    assert r["caches"], "the sweep's activation cache was not seen"
    for c in r["caches"]:  # only the hooks the sweep needs, never the model's full cache
        assert 0 < c["hooks"] < c["hook_points"]
    assert fh["case"] == "find_heads" and fh["n_samples"] == 40 and fh["wall_s"] > 0 and fh["peak_mib"] > 0
    assert fh["caches"] and all(c["rows"] <= 2 * 40 for c in fh["caches"])  # clean + corrupt stacked at most


def test_bench_patching_small_run(tmp_path):
    """One repetition at batch 4: both sweeps run, equal TransformerLens's outputs, and the JSON says how."""
    out = tmp_path / "p.json"
    assert load("bench_patching").main(["--batch", "4", "--reps", "1", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["command"].startswith("python benchmarks/bench_patching.py --batch 4") and d["cpus"] >= 1
    assert [r["sweep"] for r in d["results"]] == ["head_out_by_pos", "resid_pre"]
    assert all(r["equal"] and r["max_abs_diff"] <= 1e-5 for r in d["results"])


def test_bench_figure_gpu_quick(tmp_path):
    """The GPU figure benchmark runs end to end (tiny, on the CPU) and its extrapolation is consistent."""
    out = tmp_path / "fig.json"
    assert load("bench_figure_gpu").main(["--quick", "--device", "cpu", "--json", str(out)]) == 0
    r = json.loads(out.read_text())["results"]
    assert r["models"] == 4 and r["total_steps"] == 4000 * 2
    ex = load("bench_figure_gpu").extrapolate([200, 2600], 2.0, 1.0, 1, 4000)
    # 16,000 steps with both models (2.0 s each), then 192,000 with one (1.0 s each)
    assert ex == dict(total_steps=208_000, extrapolated_s=16_000 * 2.0 + 192_000 * 1.0, upper_bound_s=416_000.0)


def test_bench_graph_step_quick(tmp_path):
    """The graph-step benchmark runs end to end (tiny, on the CPU: the static step without capture)."""
    out = tmp_path / "graph.json"
    assert load("bench_graph_step").main(["--quick", "--device", "cpu", "--json", str(out)]) == 0
    r = json.loads(out.read_text())["results"]
    # per-step times are differences of two noisy timings: at this size they can come out <= 0 under load
    assert r["models"] == 4 and isinstance(r["step_eager_ms"], float) and isinstance(r["step_graph_ms"], float)
    assert r["max_weight_difference"] < 1e-3  # the static step's arithmetic is the eager step's


def test_bench_reference_forward_small(tmp_path):
    """The reference-forward benchmark runs (tiny) and its two formulations agree."""
    out = tmp_path / "ref.json"
    assert load("bench_reference_forward").main(["--models", "2", "--reps", "1", "--d-model", "16",
                                                 "--json", str(out)]) == 0
    r = json.loads(out.read_text())["results"]
    assert r["models"] == 2 and r["max_abs_diff"] < 1e-4 and r["broadcast_ms"] > 0 and r["bmm_ms"] > 0
