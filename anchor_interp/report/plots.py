"""Matplotlib figures of a FindHeadsResult: patching heatmaps, ablation bars, training curves, head patterns.

Every function takes plain JSON-able data (parts of ``FindHeadsResult.to_dict()``) and returns a
``matplotlib.figure.Figure`` built without pyplot (no global state, no display needed).
`result_figures` draws every figure a result supports; `figure_png` turns one into PNG bytes. The report
embeds these PNGs and saves the same bytes next to the HTML. matplotlib is imported on first use.
"""

from __future__ import annotations

import io
import math
from typing import Any

from anchor_interp.names import hook_name

_DPI = 100


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=_DPI, layout="constrained")


def figure_png(fig) -> bytes:
    """PNG bytes of ``fig`` (Agg renderer, no metadata, so the same figure gives the same bytes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    return buf.getvalue()


def figure_svg(fig) -> bytes:
    """SVG bytes of ``fig`` (text as text, no date, fixed element ids: the same figure gives the same bytes)."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "anchor-interp", "svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return buf.getvalue()


def plot_mean_attention(mean_attention: dict[str, Any], heads: list[dict[str, Any]]):
    """Every head's anchor-aligned mean attention (``FindHeadsResult.mean_attention``) as one mosaic image:
    a layer x head grid of panels, each with rows = query offset from the anchor and columns = key
    offset, colour in [0, 1] (grey: no row reaches the cell; the anchor's row and column are at the
    ticks marked 0). One image in one axes, so that drawing and saving stay fast.
    Raises ValueError if the result has no mean attention."""
    import numpy as np

    values, offsets = mean_attention.get("values"), mean_attention.get("offsets")
    if not values or not offsets:
        raise ValueError("plot_mean_attention: the result has no mean attention (not computed)")
    lo, hi = offsets
    n = hi - lo + 1
    names = {(h.get("layer"), h.get("head")): h for h in heads}
    n_layers, n_heads = len(values), len(values[0])
    gap = 2
    mosaic = np.full((n_layers * (n + gap) - gap, n_heads * (n + gap) - gap), np.nan)
    for layer in range(n_layers):
        for head in range(n_heads):
            r, c = layer * (n + gap), head * (n + gap)
            mosaic[r:r + n, c:c + n] = np.array(_as_matrix(values[layer][head]))
    fig = _figure(1.7 * n_heads + 1.2, 1.8 * n_layers + 0.6)
    ax = fig.add_subplot()
    cmap = __import__("matplotlib").colormaps["Blues"].with_extremes(bad="#f1f5f9")
    im = ax.imshow(np.ma.masked_invalid(mosaic), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ticks = sorted({lo, 0, hi})
    ax.set_xticks([h * (n + gap) + t - lo for h in range(n_heads) for t in ticks])
    ax.set_xticklabels([f"{t:+d}" for _ in range(n_heads) for t in ticks], fontsize=7)
    ax.set_yticks([layer * (n + gap) + t - lo for layer in range(n_layers) for t in ticks])
    ax.set_yticklabels([f"{t:+d}" for _ in range(n_layers) for t in ticks], fontsize=7)
    for layer in range(n_layers):
        for head in range(n_heads):
            h = names.get((layer, head), {"name": f"L{layer}H{head}", "label": None})
            ax.text(head * (n + gap) + n / 2 - 0.5, layer * (n + gap) - 0.8, _head_title(h), ha="center",
                    va="bottom", fontsize=7)
    ax.set_xlabel("key offset from the anchor (per head)", fontsize=8)
    ax.set_ylabel("query offset from the anchor", fontsize=8)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title("anchor-aligned mean attention", fontsize=9, pad=14)
    fig.colorbar(im, ax=ax, label="mean attention", shrink=0.8)
    return fig


def _as_matrix(values: Any) -> list[list[float]]:
    """A 2-D list of floats (None -> nan) from nested lists; ValueError if it is not rectangular 2-D."""
    if not isinstance(values, list) or not values or not all(isinstance(r, list) for r in values):
        raise ValueError("values must be a non-empty 2-D nested list")
    width = len(values[0])
    if width == 0 or any(len(r) != width for r in values):
        raise ValueError("values must be rectangular (every row the same non-zero length)")
    return [[math.nan if v is None else float(v) for v in r] for r in values]


def plot_patching(patch: dict[str, Any], title: str = ""):
    """Heatmap of one 2-D PatchResult dict (axes e.g. ("layer", "head") or ("layer", "pos")).

    Colour = the patched metric (normalised: 1 = patching this site restores the clean answer,
    0 = no effect), diverging around 0. Raises ValueError if the result is not 2-D.
    """
    axes = list(patch.get("axes", ()))
    values = patch.get("values")
    if len(axes) != 2:
        raise ValueError(f"plot_patching: needs a 2-D PatchResult, got axes {axes}")
    m = _as_matrix(values)
    n_rows, n_cols = len(m), len(m[0])
    finite = [abs(v) for r in m for v in r if not math.isnan(v)]
    vmax = max(finite + [1e-9])
    if patch.get("normalised"):
        vmax = max(vmax, 1.0)
    fig = _figure(max(3.0, 0.6 * n_cols + 1.8), max(2.2, 0.45 * n_rows + 1.3))
    ax = fig.add_subplot()
    im = ax.imshow(m, cmap="RdBu", vmin=-vmax, vmax=vmax, aspect="auto")
    ax.set_xlabel(axes[1])
    ax.set_ylabel(axes[0])
    ax.set_xticks(range(n_cols))
    pos_labels = (patch.get("extra") or {}).get("pos_labels")
    if axes[1] == "pos" and isinstance(pos_labels, list) and len(pos_labels) == n_cols:
        ax.set_xticklabels([str(x) for x in pos_labels], fontsize=8)
    ax.set_yticks(range(n_rows))
    for i in range(n_rows):
        for j in range(n_cols):
            v = m[i][j]
            if not math.isnan(v) and n_rows * n_cols <= 120:
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if abs(v) > 0.6 * vmax else "black")
    metric = patch.get("metric", "metric")
    label = f"{metric} (normalised)" if patch.get("normalised") else str(metric)
    fig.colorbar(im, ax=ax, label=label)
    cf = patch.get("counterfactual")
    hooks = patch.get("hook_names") or []
    hook = hooks if isinstance(hooks, str) else (hooks[0] if len(hooks) == 1 else f"{len(hooks)} hooks")
    ax.set_title(title or f"{hook}: {cf or 'patching'}", fontsize=9)
    return fig


def plot_ablation(ablation: dict[str, Any]):
    """Bars of held-out accuracy (in [0, 1]) after each ablation check, with the unablated baseline line."""
    checks = ablation.get("checks") or []
    if not checks:
        raise ValueError("plot_ablation: the ablation dict has no 'checks'")
    names = [c["name"] for c in checks]
    accs = [c["accuracy"] for c in checks]
    fig = _figure(max(4.0, 1.3 * len(names) + 1.5), 3.0)
    ax = fig.add_subplot()
    colours = ["#4c72b0" if c.get("passed", True) else "#c44e52" for c in checks]
    ax.bar(range(len(names)), accs, color=colours)
    for i, a in enumerate(accs):
        ax.text(i, a + 0.02, f"{a:.2f}", ha="center", fontsize=8)
    base = (ablation.get("baseline") or {}).get("accuracy")
    if base is not None:
        ax.axhline(base, color="black", linestyle="--", linewidth=1, label=f"no ablation ({base:.2f})")
        ax.legend(fontsize=8, loc="upper right")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, fontsize=8, rotation=15, ha="right")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("held-out accuracy")
    ax.set_title(f"{ablation.get('method', '')} ablation (red: check failed)", fontsize=9)
    return fig


# "held-out accuracy" means the unmasked groups (anchor_interp.training.history)
_HISTORY_LABELS = {"test_acc": "test_acc: held-out (seen groups)", "test_acc_masked": "test_acc_masked: held-out (masked groups)"}


def plot_history(history: list[dict[str, Any]], title: str = ""):
    """Training curves against the epoch (or step): loss columns (name contains "loss", nats) on the
    left axis, log scale; accuracy columns (name contains "acc", in [0, 1]) dashed on the right axis.
    Per-group columns (``test_acc/<group>``) are drawn only when there are 2 to 4 groups; other
    columns (lr, time) are left out. ``title`` defaults to "training history". The one drawing of a
    training history: the report's figure and the trainer's ``history.png``
    (:func:`anchor_interp.training.history.plot_history_png`). Raises ValueError if the history is
    empty or the rows have neither epoch nor step.
    """
    if not history:
        raise ValueError("plot_history: the history is empty")
    xkey = next((k for k in ("epoch", "step") if all(k in r for r in history)), None)
    if xkey is None:
        raise ValueError("plot_history: history rows need an 'epoch' or 'step' column")
    keys = list(dict.fromkeys(k for r in history for k in r))

    def numeric(k):
        vals = [r.get(k) for r in history]
        return any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals) and all(
            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in vals)

    per_group = [k for k in keys if "/" in k]
    losses = [k for k in keys if "loss" in k and "/" not in k and numeric(k)]
    accs = [k for k in keys if "acc" in k and "/" not in k and numeric(k)]
    if 1 < len(per_group) <= 4:  # one group: the same curve as test_acc
        accs += [k for k in per_group if "acc" in k and numeric(k)]
    xs = [r[xkey] for r in history]
    fig = _figure(6.0, 3.0)
    ax = fig.add_subplot()
    ax2 = ax.twinx()
    lines = []
    for k in losses + accs:
        ys = [math.nan if r.get(k) is None else float(r[k]) for r in history]
        if all(math.isnan(y) for y in ys):
            continue
        acc = k in accs
        lines += (ax2 if acc else ax).plot(xs, ys, label=_HISTORY_LABELS.get(k, k), linestyle="--" if acc else "-")
    ax.set_xlabel(xkey)
    ax.set_ylabel("loss (nats)")
    if losses:
        ax.set_yscale("log")
    ax2.set_ylabel("accuracy")
    ax2.set_ylim(-0.02, 1.02)
    if lines:
        ax.legend(lines, [ln.get_label() for ln in lines], fontsize=7, loc="center right")
    ax.set_title(title or "training history", fontsize=9)
    return fig


def plot_head_patterns(examples: list[dict[str, Any]], heads: list[dict[str, Any]], example: int = 0):
    """Attention patterns (dest_pos x src_pos, in [0, 1]) of the labelled heads on one example.

    Shows the heads whose label is not "neither"; if there are none, every head. Raises ValueError if
    there is no such example or it carries no patterns.
    """
    if not examples or not 0 <= example < len(examples):
        raise ValueError(f"plot_head_patterns: example={example} but the result has {len(examples)} examples")
    ex = examples[example]
    patterns = ex.get("patterns") or {}
    if not patterns:
        raise ValueError("plot_head_patterns: the example carries no attention patterns")
    chosen = [h for h in heads if h.get("label") not in (None, "neither")] or list(heads)
    labels = ex.get("token_labels") or [str(t) for t in ex["tokens"]]
    n = len(chosen)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    size = 1.6 + 0.22 * len(labels)
    fig = _figure(size * cols + 0.8, size * rows + 0.4)
    grid = fig.subplots(rows, cols, squeeze=False)
    im = None
    for i, h in enumerate(chosen):
        ax = grid[i // cols][i % cols]
        pat = patterns.get(hook_name("pattern", h["layer"]))
        if pat is None:
            ax.set_axis_off()
            continue
        im = ax.imshow(_as_matrix(pat[h["head"]]), cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=90, fontsize=6)
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels, fontsize=6)
        ax.set_xlabel("src_pos", fontsize=7)
        ax.set_ylabel("dest_pos", fontsize=7)
        ax.set_title(_head_title(h), fontsize=8)
    for j in range(n, rows * cols):
        grid[j // cols][j % cols].set_axis_off()
    if im is not None:
        fig.colorbar(im, ax=grid.ravel().tolist(), label="attention", shrink=0.8)
    return fig


def _head_title(h: dict[str, Any]) -> str:
    label = h.get("label") or "?"
    if label == "shift" and h.get("offset") is not None:
        label = f"shift({h['offset']:+d})"
    elif label == "neither" and h.get("kind"):
        label = f"neither: {h['kind']}"
    return f"{h.get('name', '?')} {label}"


def _figure_plan(result: dict[str, Any]) -> list[tuple[str, Any]]:
    """(name, draw) for every figure ``result`` supports, in report order; draw() builds the Figure."""
    plan: list[tuple[str, Any]] = []
    examples, heads = result.get("examples") or [], result.get("heads") or []
    if examples and heads and examples[0].get("patterns"):
        plan.append(("head_patterns", lambda: plot_head_patterns(examples, heads)))
    for name, patch in (result.get("patching") or {}).items():
        if len(patch.get("axes", ())) == 2:
            plan.append(("patching_" + _slug(name), lambda p=patch, n=name: plot_patching(p, title=n)))
    ablation = result.get("ablation") or {}
    if ablation.get("checks"):
        plan.append(("ablation", lambda: plot_ablation(ablation)))
    hist = result.get("history") or []
    if hist and all(("step" in r or "epoch" in r) for r in hist):
        plan.append(("history", lambda: plot_history(hist)))
    ma = result.get("mean_attention") or {}
    if ma.get("values") and ma.get("offsets"):
        plan.append(("mean_attention", lambda: plot_mean_attention(ma, heads)))
    return plan


def figure_names(result: dict[str, Any]) -> list[str]:
    """File-name stems of the figures `result_figures` would draw for ``result`` (nothing is drawn)."""
    return [name for name, _ in _figure_plan(result)]


def result_figures(result: dict[str, Any]) -> dict[str, Any]:
    """Every figure ``result`` (a FindHeadsResult dict) supports, by file-name stem, in report order.

    Names: ``head_patterns``, ``patching_<name>`` for each 2-D patching result, ``ablation``,
    ``history``, ``mean_attention``. Parts the result lacks are left out; nothing raises for a partial result.
    """
    return {name: draw() for name, draw in _figure_plan(result)}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name).strip("_") or "x"
