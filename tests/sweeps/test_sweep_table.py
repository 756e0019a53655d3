"""sweeps/table.py, plot.py, estimate.py on the session's finished tiny sweep."""

from __future__ import annotations

import csv

from anchor_interp.sweeps.estimate import estimate, run_steps
from anchor_interp.sweeps.manifest import Manifest
from anchor_interp.sweeps.plot import plot_accuracy_vs_n, plot_labels_mosaic, write_plots
from anchor_interp.sweeps.spec import expand
from anchor_interp.sweeps.table import LABEL_COLUMNS, METRIC_COLUMNS, table_rows


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_the_table_has_one_row_per_run_with_settings_metrics_and_labels(tiny_done, tiny_spec):
    folder, summary = tiny_done
    assert summary.counts == {"done": 4} and summary.stacks_run == 1
    rows = _read(folder / "table.csv")
    assert [r["id"] for r in rows] == [r.id for r in expand(tiny_spec)]
    cols = list(rows[0])
    assert cols[:3] == ["id", "status", "reason"]
    assert set(METRIC_COLUMNS) <= set(cols) and set(LABEL_COLUMNS) <= set(cols)
    assert {"model.d_model", "task.seq_len", "recipe.lr", "n_train", "seed", "epochs"} <= set(cols)
    for r in rows:
        assert r["status"] == "done" and r["epochs_trained"] == "3" and 0 <= float(r["test_acc"]) <= 1
        assert float(r["best_test_acc"]) >= float(r["test_acc"])
        assert r["test_acc_masked"] == ""  # identity has no masked group
        assert r["labels_solved"] in ("True", "False") and r["n_shift"] != ""
        assert int(r["steps"]) == 3 * -(-int(r["n_train"]) // 20)


def test_plots(tiny_done, tmp_path):
    folder, _ = tiny_done
    rows = Manifest(folder).rows()
    assert plot_accuracy_vs_n(rows)[:4] == b"\x89PNG"
    assert plot_labels_mosaic(rows)[:4] == b"\x89PNG"
    assert plot_labels_mosaic([{**r, "labels": None} for r in rows]) is None
    paths = write_plots(folder, tmp_path / "figs")
    assert [p.name for p in paths] == ["accuracy_vs_n.png", "labels_mosaic.png"] and all(p.exists() for p in paths)


def test_table_of_unfinished_runs_has_empty_metrics(tiny_spec):
    runs = expand(tiny_spec)
    rows = table_rows([{"id": r.id, "settings": r.settings, "status": "pending", "reason": "", "metrics": {},
                        "labels": None} for r in runs])
    assert all(row["test_acc"] == "" and row["n_shift"] == "" for row in rows)


def test_estimate_counts_steps_and_scales_with_the_model(tiny_spec):
    runs = expand(tiny_spec)
    est = estimate(runs)
    assert [e["steps"] for e in est] == [6, 6, 9, 9] == [run_steps(r) for r in runs]
    assert 0 < est[0]["cpu_s"] < est[2]["cpu_s"]
