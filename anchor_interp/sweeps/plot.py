"""Sweep figures from the manifest: held-out accuracy versus training-set size N, and a mosaic of head labels.

``accuracy_vs_n.png``: final held-out accuracy (unmasked groups) of every finished run against N, one
series per combination of the other settings (mean +- std over seeds, every seed as a dot), with the
paper's identity-learning means (:data:`PAPER_IDENTITY`) overlaid when the task is ``identity``.
``labels_mosaic.png``: one row per finished run with a label summary (sorted by series, N, seed), one
column per head (``L0H0``, ...): shift, broadcast or neither; runs below find_heads' competence floor
(labelled anyway) are marked ``*``.
"""

from __future__ import annotations

import io
import json
import os
import statistics
from pathlib import Path
from typing import Any

from anchor_interp.atomic import atomic_write_bytes
from anchor_interp.sweeps.manifest import Manifest

__all__ = ["PAPER_IDENTITY", "plot_accuracy_vs_n", "plot_labels_mosaic", "write_plots"]

# Zhang et al. (arXiv 2401.08309), identity learning, 4L4H post-LN, 4000 epochs: mean final held-out
# accuracy over 10 seeds at each training-set size N.
PAPER_IDENTITY = {200: 0.039, 300: 0.251, 400: 0.773, 500: 0.954, 600: 0.992, 800: 0.999, 1000: 1.0, 1400: 1.0,
                  1600: 1.0}
LABEL_COLORS = {"shift": "#d62728", "broadcast": "#1f77b4", "neither": "#e8e8e8"}


def _series_key(settings: dict[str, Any]) -> str:
    s = {k: v for k, v in settings.items() if k != "seed"}
    s["recipe"] = {k: v for k, v in s["recipe"].items() if k != "n_train"}
    return json.dumps(s, sort_keys=True)


def _flat(settings: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in settings.items() if k not in ("task", "model", "recipe", "seed")}
    out["task"] = settings["task"]["name"]
    out.update({f"task.{k}": v for k, v in settings["task"]["params"].items()})
    out.update({f"model.{k}": v for k, v in settings["model"].items()})
    out.update({k: v for k, v in settings["recipe"].items() if k != "n_train"})
    return out


def _series(rows: list[dict[str, Any]]) -> dict[str, tuple[str, list[dict[str, Any]]]]:
    """Series key -> (a label naming the settings that differ between series, its rows)."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(_series_key(r["settings"]), []).append(r)
    flats = [_flat(g[0]["settings"]) for g in groups.values()]
    varying = sorted({k for f in flats for k in f if len({json.dumps(x.get(k)) for x in flats}) > 1})
    out = {}
    for (key, g), f in zip(groups.items(), flats, strict=True):
        label = ", ".join(f"{k}={f.get(k)}" for k in varying) or f"{f['preset']}, {f['name']}, {f['epochs']} epochs"
        out[key] = (label, g)
    return out


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def plot_accuracy_vs_n(rows: list[dict[str, Any]], title: str = "") -> bytes:
    """PNG bytes of final held-out accuracy vs N (see the module docstring). Raises ValueError without done runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["status"] == "done" and r["metrics"].get("test_acc") is not None]
    if not done:
        raise ValueError("no finished run with a held-out accuracy to plot; run the sweep first")
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for c, (label, g) in enumerate(_series(done).values()):
        by_n: dict[int, list[float]] = {}
        for r in g:
            by_n.setdefault(r["settings"]["recipe"]["n_train"], []).append(r["metrics"]["test_acc"])
        ns = sorted(by_n)
        means = [statistics.fmean(by_n[n]) for n in ns]
        stds = [statistics.stdev(by_n[n]) if len(by_n[n]) > 1 else 0.0 for n in ns]
        ax.errorbar(ns, means, yerr=stds, marker="o", capsize=3, color=f"C{c}", label=f"{label} (mean +- std)")
        ax.scatter([n for n in ns for _ in by_n[n]], [a for n in ns for a in by_n[n]], s=10, alpha=0.4, color=f"C{c}")
    if any(r["settings"]["task"]["name"] == "identity" for r in done):
        pn = sorted(PAPER_IDENTITY)
        ax.plot(pn, [PAPER_IDENTITY[n] for n in pn], marker="s", ls="--", color="k", alpha=0.7,
                label="paper (4L4H, 4000 epochs, 10 seeds)")
    ax.set_xlabel("training-set size N")
    ax.set_ylabel("held-out accuracy (final)")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def plot_labels_mosaic(rows: list[dict[str, Any]], title: str = "") -> bytes | None:
    """PNG bytes of the layers x heads label mosaic across runs; None when no run has a label summary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    lab = [r for r in rows if r["status"] == "done" and r.get("labels")]
    if not lab:
        return None
    lab.sort(key=lambda r: (_series_key(r["settings"]), r["settings"]["recipe"]["n_train"], r["settings"]["seed"]))
    heads = list(dict.fromkeys(h for r in lab for h in r["labels"]["heads"]))
    codes = list(LABEL_COLORS)
    grid = [[codes.index(r["labels"]["heads"].get(h, "neither")) for h in heads] for r in lab]
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * len(heads), min(1.5 + 0.22 * len(lab), 40)))
    ax.imshow(grid, cmap=ListedColormap(list(LABEL_COLORS.values())), vmin=0, vmax=len(codes) - 1, aspect="auto",
              interpolation="nearest")
    ax.set_xticks(range(len(heads)), heads, rotation=90, fontsize=7)
    ax.set_yticks(range(len(lab)), [f"N={r['settings']['recipe']['n_train']} s{r['settings']['seed']}"
                                    + ("" if r["labels"]["solved"] else " *") for r in lab], fontsize=6)
    ax.set_title((title or "head labels across runs") + "\n(* below the competence floor)", fontsize=9)
    ax.legend(handles=[Patch(color=c, label=k) for k, c in LABEL_COLORS.items()], fontsize=7,
              loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return _png(fig)


def write_plots(folder: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> list[Path]:
    """Write ``accuracy_vs_n.png`` and (with labels) ``labels_mosaic.png`` to ``out_dir`` (default: the
    sweep folder); returns the paths written. Raises ValueError for a folder without finished runs."""
    doc = Manifest(folder).read()
    out = Path(out_dir) if out_dir is not None else Path(folder)
    written = [out / "accuracy_vs_n.png"]
    atomic_write_bytes(written[0], plot_accuracy_vs_n(doc["runs"], title=f"sweep {doc.get('sweep')}"),
                       make_parents=True)
    mosaic = plot_labels_mosaic(doc["runs"], title=f"sweep {doc.get('sweep')}: head labels")
    if mosaic is not None:
        written.append(out / "labels_mosaic.png")
        atomic_write_bytes(written[1], mosaic, make_parents=True)
    return written
