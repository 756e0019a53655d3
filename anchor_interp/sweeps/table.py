"""The sweep table: one tidy CSV row per run, from the manifest (docs/sweeps.md, "The table").

Columns, in order: ``id``, ``status``, ``reason``; the settings (``arch``, ``task``, ``task.<param>``,
``preset``, ``model.<field>`` for every override any run sets, ``init_gamma``, ``seed``, ``n_train``,
``epochs``, then every other Recipe field as ``recipe.<field>``); the metrics (:data:`METRIC_COLUMNS`);
the label summary (:data:`LABEL_COLUMNS`, empty without find_heads). Empty cells: no value (a run not
done, a task without masked groups). Lists are joined with ``;``. Wall-time columns (:data:`TIME_COLUMNS`)
are the only ones that differ between two executions of the same sweep.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from anchor_interp.atomic import atomic_write_text
from anchor_interp.sweeps.manifest import Manifest

__all__ = ["LABEL_COLUMNS", "METRIC_COLUMNS", "TABLE", "TIME_COLUMNS", "table_rows", "write_table"]

TABLE = "table.csv"
METRIC_COLUMNS = ("test_acc", "best_test_acc", "test_acc_masked", "best_test_acc_masked", "train_acc",
                  "train_loss", "test_loss", "epochs_trained", "steps", "stopped_early", "train_s", "wall_s",
                  "stack_s", "stack_size", "find_heads_s")
LABEL_COLUMNS = ("labels_solved", "labels_accuracy", "n_shift", "n_broadcast", "shift_heads", "broadcast_heads",
                 "shift_layers", "broadcast_layers", "shift_offsets", "shift_effects", "broadcast_effects")
TIME_COLUMNS = ("train_s", "wall_s", "stack_s", "find_heads_s")


def _join(xs) -> str:
    return ";".join(str(x) for x in xs)


def _labels(lab: dict[str, Any] | None) -> dict[str, Any]:
    if not lab:
        return dict.fromkeys(LABEL_COLUMNS, "")
    eff = lab.get("effects", {})
    return {"labels_solved": lab["solved"], "labels_accuracy": lab["accuracy"], "n_shift": len(lab["shift"]),
            "n_broadcast": len(lab["broadcast"]), "shift_heads": _join(lab["shift"]),
            "broadcast_heads": _join(lab["broadcast"]), "shift_layers": _join(lab["shift_layers"]),
            "broadcast_layers": _join(lab["broadcast_layers"]), "shift_offsets": _join(lab["shift_offsets"]),
            "shift_effects": _join(eff.get(h) for h in lab["shift"]),
            "broadcast_effects": _join(eff.get(h) for h in lab["broadcast"])}


def table_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat dict per manifest row, with the columns of the module docstring (every row has every key)."""
    task_params = sorted({k for r in rows for k in r["settings"]["task"]["params"]})
    model_fields = sorted({k for r in rows for k in r["settings"]["model"]})
    recipe_fields = [k for k in rows[0]["settings"]["recipe"] if k not in ("n_train", "epochs")] if rows else []
    out = []
    for r in rows:
        s = r["settings"]
        row: dict[str, Any] = {"id": r["id"], "status": r["status"], "reason": r.get("reason", ""),
                               "arch": s["arch"], "task": s["task"]["name"]}
        row.update({f"task.{k}": s["task"]["params"].get(k, "") for k in task_params})
        row["preset"] = s["preset"]
        row.update({f"model.{k}": s["model"].get(k, "") for k in model_fields})
        row.update(init_gamma=s["init_gamma"], seed=s["seed"], n_train=s["recipe"]["n_train"],
                   epochs=s["recipe"]["epochs"])
        row.update({f"recipe.{k}": s["recipe"].get(k, "") for k in recipe_fields})
        m = r.get("metrics") or {}
        row.update({k: m.get(k, "") for k in METRIC_COLUMNS})
        row.update(_labels(r.get("labels")))
        out.append({k: ("" if v is None else v) for k, v in row.items()})
    return out


def write_table(folder: str | os.PathLike, path: str | os.PathLike | None = None) -> Path:
    """Write the table of the sweep folder ``folder`` to ``path`` (default ``folder/table.csv``), atomically.
    Raises ValueError when ``folder`` is not a sweep folder."""
    rows = table_rows(Manifest(folder).rows())
    path = Path(path) if path is not None else Path(folder) / TABLE
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["id"], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())
    return path
