"""The report's model card and per-head evidence cards, as HTML built from a result dict alone.

- `model_card`: preset and architecture (``model``), training recipe and steps (``training``, from the
  checkpoint), held-out accuracy per group with the trained (unmasked) and masked groups in separate
  tables (``accuracy``), and the data the analysis used (split, rows, seed, counterfactual rows).
- `head_cards`: one card per head: every role tested (effect with its 95% interval against the
  threshold, the margin, pass/fail, the counterfactual), its route numbers against the route threshold,
  batch stability, and its anchor-aligned mean attention (``mean_attention``) as a small inline SVG
  heatmap ("not computed" for results without it).

Every number shown carries ``data-json-path`` (the dotted path of the value in the result JSON; a key
that itself contains a dot, such as the route target ``L1.k``, is one component: see
:func:`json_path_value`).
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

__all__ = ["head_cards", "json_path_value", "mean_attention_svg", "model_card"]


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:.{digits}f}" if math.isfinite(v) else "–"
    return str(v)


def _num(v: Any, path: str, digits: int = 3) -> str:
    """A number in a span carrying its JSON path ('–' without a path when the value is missing)."""
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
        return _e(_fmt(v, digits))
    return f'<span class="n" data-json-path="{_e(path)}">{_e(_fmt(v, digits))}</span>'


def json_path_value(d: Any, path: str) -> Any:
    """The value at dotted ``path`` in ``d`` (list indices as integers). A dict key that itself contains
    dots (``routes.L1.k``) is matched whole: the longest run of components naming a key wins.
    Raises KeyError if the path does not resolve."""
    parts = path.split(".")
    i, value = 0, d
    while i < len(parts):
        if isinstance(value, list):
            value, i = value[int(parts[i])], i + 1
            continue
        if not isinstance(value, dict):
            raise KeyError(path)
        for j in range(len(parts), i, -1):
            key = ".".join(parts[i:j])
            if key in value:
                value, i = value[key], j
                break
        else:
            raise KeyError(path)
    return value


# ----------------------------------------------------------------------------------------------------
# Model card

_MODEL_KEYS = ("n_layers", "n_heads", "d_model", "d_head", "d_mlp", "n_ctx", "d_vocab", "n_params")
_MODEL_FLAGS = ("attn_only", "causal", "normalization_type")
_RECIPE_KEYS = ("name", "epochs", "batch_size", "lr", "weight_decay", "n_train", "n_test", "data")


def _dl(rows: list[tuple[str, str]], element_id: str = "") -> str:
    items = "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in rows)
    return f'<dl class="meta"{f" id={chr(34)}{element_id}{chr(34)}" if element_id else ""}>{items}</dl>'


def _acc_table(groups: list[tuple[int, dict[str, Any]]], element_id: str, caption: str) -> str:
    if not groups:
        return ""
    body = "".join(
        f"<tr><td>{_e(g.get('name'))}</td><td class=\"num\">{_num(g.get('n'), f'accuracy.groups.{i}.n')}</td>"
        f"<td class=\"num\">{_num(g.get('accuracy'), f'accuracy.groups.{i}.accuracy')}</td></tr>"
        for i, g in groups)
    return (f'<table id="{element_id}"><caption>{_e(caption)}</caption><thead><tr><th>group</th><th>rows</th>'
            f"<th>accuracy</th></tr></thead><tbody>{body}</tbody></table>")


def _recipe_value(v: Any, k: str) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return _e(v)
    return _num(v, f"training.recipe.{k}", 6 if isinstance(v, float) else 3)


def _pct(v: Any, path: str) -> str:
    """A share in [0, 1] shown as a percentage (e.g. 100%), carrying its JSON path."""
    if v is None or not isinstance(v, (int, float)):
        return "–"
    return f'<span class="n" data-json-path="{_e(path)}">{v:.0%}</span>'


def model_card(d: dict[str, Any]) -> str:
    """The model card section (``section#model-card``)."""
    m, t, acc = d.get("model") or {}, d.get("task") or {}, d.get("accuracy") or {}
    tr = d.get("training") or {}
    arch = ", ".join(f"{k} {_num(m[k], f'model.{k}')}" for k in _MODEL_KEYS if m.get(k) is not None)
    flags = ", ".join(f"{k}={_e(m[k])}" for k in _MODEL_FLAGS if k in m)
    model_rows = [
        ("preset", _e(m.get("preset") or "–")),
        ("architecture", arch or "–"),
        ("attention", flags or "–"),
        ("source", _e(m.get("source") or "–")),
        ("task", f"{_e(t.get('name', '?'))} <code>{_e(json.dumps(t.get('params', {}), sort_keys=True))}</code>"),
    ]
    recipe = tr.get("recipe") or {}
    if tr:
        rec = ", ".join(f"{k} {_recipe_value(recipe[k], k)}" for k in _RECIPE_KEYS if recipe.get(k) is not None)
        steps = ", ".join(f"{k} {_num(tr[k], f'training.{k}', 1)}" for k in ("step", "epoch", "seed", "n_train", "train_seconds")
                          if tr.get(k) is not None)
        train_rows = [("recipe", rec or "–"), ("trained for", steps or "–")]
    else:
        train_rows = [("training", "not recorded (the model did not come from a checkpoint with training metadata)")]
    groups = list(enumerate(acc.get("groups") or []))
    unmasked = [(i, g) for i, g in groups if not g.get("masked")]
    masked = [(i, g) for i, g in groups if g.get("masked")]
    overall = (f"{_num(acc.get('overall'), 'accuracy.overall')} on {_num(acc.get('n'), 'accuracy.n')} "
               f"{_e(acc.get('split', 'test'))} rows of the trained (unmasked) groups")
    if acc.get("n_masked"):
        overall += (f"; {_num(acc.get('masked_accuracy'), 'accuracy.masked_accuracy')} on "
                    f"{_num(acc.get('n_masked'), 'accuracy.n_masked')} rows of the masked groups (never trained)")
    cfs = ((d.get("labelling") or {}).get("counterfactuals") or {})
    cf_text = ", ".join(f"{_e(k)} {_num(v.get('rows'), f'labelling.counterfactuals.{k}.rows')} rows"
                        for k, v in cfs.items() if isinstance(v, dict)) or "–"
    ma = d.get("mean_attention") or {}
    data_rows = [
        ("rows", f"held-out <code>{_e(acc.get('split', 'test'))}</code> split, drawn with seed "
                 f"{_num(d.get('seed'), 'seed')}: {_num(acc.get('n'), 'accuracy.n')} unmasked"
                 + (f" + {_num(acc.get('n_masked'), 'accuracy.n_masked')} masked" if acc.get("n_masked") else "")),
        ("counterfactual rows", cf_text),
        ("mean attention", f"{_num(ma.get('rows'), 'mean_attention.rows')} anchored rows" if ma.get("rows") else "not computed"),
        ("examples", f"{len(d.get('examples') or [])} sequences with every layer's pattern"),
    ]
    return "\n".join([
        '<section id="model-card"><h2>Model card</h2>',
        '<div class="card-cols"><div><h3>Model</h3>', _dl(model_rows, "header"),
        "<h3>Training</h3>", _dl(train_rows, "training"), "</div>",
        '<div><h3>Held-out accuracy</h3>', f'<p id="accuracy">{overall}</p>',
        _acc_table(unmasked, "accuracy-table", "trained (unmasked) groups"),
        _acc_table(masked, "masked-accuracy-table", "masked groups (never trained)"),
        "<h3>Data used for the analysis</h3>", _dl(data_rows, "analysis-data"), "</div></div>",
        _dl([("seed", _num(d.get("seed"), "seed")), ("command", f"<code>{_e(d.get('command') or '–')}</code>"),
             ("package version", f"anchor_interp {_e(d.get('package_version'))} (result schema "
                                 f"{_e(d.get('schema_version'))})")], "provenance"),
        "</section>",
    ])


# ----------------------------------------------------------------------------------------------------
# Per-head evidence cards

def _route_name(target: str) -> str:
    """``L1.k`` -> ``L1 k`` (layer 1's keys; q = queries, v = values), ``logits`` unchanged."""
    return target.replace(".", " ")


def _roles_table(d: dict[str, Any], i: int, h: dict[str, Any]) -> str:
    roles = h.get("roles") or []
    if not roles:
        return '<p class="note">No role recorded for this head (without a task no role is measured).</p>'
    rows = []
    for j, r in enumerate(roles):
        p = f"heads.{i}.roles.{j}"
        rt = r.get("route_threshold")
        routes = []
        for target, v in (r.get("routes") or {}).items():
            strong = isinstance(v, (int, float)) and rt is not None and v >= rt
            routes.append(f"<span class=\"nw\">{'<strong>' if strong else ''}{_e(_route_name(target))} "
                          f"{_num(v, f'{p}.routes.{target}', 2)}{'</strong>' if strong else ''}</span>")
        passed = r.get("passes")
        away = "" if r.get("away") is None else (  # a shift passes only with the threshold away from the last row
            f'<br><span class="note">away from the last row {_num(r.get("away"), f"{p}.away", 2)}</span>')
        rt_text = f"<br><span class=note>threshold {_num(rt, p + '.route_threshold', 2)}</span>"
        rows.append(
            f'<tr data-role="{_e(r.get("name") or r.get("role"))}"><td>{_e(r.get("name") or r.get("role"))}'
            f"{' ~' if r.get('borderline') else ''}</td><td>{_e(r.get('counterfactual') or '–')}</td>"
            f'<td class="nw">{_num(r.get("effect"), f"{p}.effect", 2)} [{_num(r.get("ci_low"), f"{p}.ci_low", 2)}, '
            f'{_num(r.get("ci_high"), f"{p}.ci_high", 2)}]<br><span class="note">threshold '
            f'{_num(r.get("threshold"), f"{p}.threshold", 2)}, margin {_num(r.get("margin"), f"{p}.margin", 2)}</span>{away}</td>'
            f"<td class=\"{'pass' if passed else 'fail'}\">{'pass' if passed else 'fail'}</td>"
            f"<td class=\"routes\">{', '.join(routes) or '–'}{rt_text if rt is not None and routes else ''}</td></tr>")
    return ('<div class="table-wrap"><table class="roles"><thead><tr><th>test</th><th>counterfactual</th>'
            "<th>effect [95% CI]</th><th>result</th><th>routes</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def mean_attention_svg(values: list[list[Any]], offsets: list[int], *, cell: int = 9, title: str = "") -> str:
    """A small heatmap (white 0 -> dark blue 1; grey: no row reaches the cell) of one head's anchor-aligned
    mean attention: rows = query offset from the anchor, columns = key offset, ``offsets = [lo, hi]``.
    The anchor's row and column (offset 0) are outlined. Tick labels at 12 px."""
    lo, hi = offsets
    n = hi - lo + 1
    pad_l, pad_t = 30, 6
    size = n * cell
    w, h = pad_l + size + 6, pad_t + size + 34
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="mean-attn" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
           f'font-size="12" font-family="system-ui,Helvetica,Arial,sans-serif">']
    if title:
        out.append(f"<title>{_e(title)}</title>")
    for qi, row in enumerate(values):
        for ki, v in enumerate(row):
            if v is None:
                fill = "#e5e7eb"
            else:
                x = max(0.0, min(1.0, float(v)))
                r, g, b = (int(255 - x * (255 - c)) for c in (30, 64, 175))
                fill = f"#{r:02x}{g:02x}{b:02x}"
            out.append(f'<rect x="{pad_l + ki * cell}" y="{pad_t + qi * cell}" width="{cell}" height="{cell}" fill="{fill}"/>')
    z = -lo  # index of offset 0
    out.append(f'<rect x="{pad_l + z * cell}" y="{pad_t}" width="{cell}" height="{size}" fill="none" stroke="#f59e0b" stroke-opacity="0.5"/>'
               f'<rect x="{pad_l}" y="{pad_t + z * cell}" width="{size}" height="{cell}" fill="none" stroke="#f59e0b" stroke-opacity="0.5"/>')
    for off in sorted({lo, 0, hi}):
        k = off - lo
        out.append(f'<text x="{pad_l + k * cell + cell / 2}" y="{pad_t + size + 14}" text-anchor="middle">{off:+d}</text>'
                   f'<text x="{pad_l - 3}" y="{pad_t + k * cell + cell / 2 + 4}" text-anchor="end">{off:+d}</text>')
    out.append(f'<text x="{pad_l + size / 2}" y="{pad_t + size + 30}" text-anchor="middle" fill="#555">key offset</text>')
    out.append("</svg>")
    return "".join(out)


def _mean_attention_block(d: dict[str, Any], h: dict[str, Any]) -> str:
    ma = d.get("mean_attention") or {}
    values, offsets = ma.get("values"), ma.get("offsets")
    try:
        grid = values[int(h["layer"])][int(h["head"])]
    except (TypeError, IndexError, KeyError, ValueError):
        grid = None
    if grid is None or not offsets:
        return '<div class="mean-attn-box"><p class="note mean-attn-missing">mean attention: not computed</p></div>'
    svg = mean_attention_svg(grid, offsets, title=f"{h.get('name')}: anchor-aligned mean attention")
    return (f'<figure class="mean-attn-box">{svg}<figcaption>mean attention, rows: query offset from the anchor'
            "</figcaption></figure>")


def _reads_fact(h: dict[str, Any], i: int) -> str:
    """Multi-anchor tasks: which anchors the head reads, each anchor slot's effect, and whether that reading
    is borderline (an anchor's effect within its margin of the threshold)."""
    effects = h.get("reads_effects") or {}
    each = ", ".join(f"{_e(s)} {_num(v, f'heads.{i}.reads_effects.{s}', 2)}" for s, v in effects.items())
    read = "no anchor" if h.get("reads") == "-" else _e(h.get("reads"))
    return (f"reads {read}" + (f" (slot effects {each})" if each else "")
            + ("; <strong>which anchors it reads is borderline</strong>" if h.get("reads_borderline") else ""))


def head_cards(d: dict[str, Any]) -> str:
    """The evidence cards section (``section#cards``): one ``div.card[data-head]`` per head, in JSON order."""
    heads = d.get("heads") or []
    if not heads:
        return ""
    ma = d.get("mean_attention") or {}
    cards = []
    for i, h in enumerate(heads):
        label = h.get("label") or "?"
        title = label + (f"({h['offset']:+d})" if label == "shift" and h.get("offset") is not None else "")
        if label == "neither" and h.get("kind"):
            title += f": {h['kind']}"
        stab = h.get("stability")
        facts = [f"stable on {_pct(stab, f'heads.{i}.stability')} of batches" if stab is not None else "stability not measured",
                 f"confidence {_num(h.get('confidence'), f'heads.{i}.confidence', 2)}"]
        if h.get("borderline"):
            facts.append("<strong>borderline</strong>")
        if h.get("reads") is not None:
            facts.append(_reads_fact(h, i))
        sc = h.get("scores") or {}
        pats = ", ".join(f"{k.removesuffix('_pattern')} pattern {_num(sc[k], f'heads.{i}.scores.{k}', 2)}"
                         for k in ("shift_pattern", "broadcast_pattern") if sc.get(k) is not None)
        cards.append(
            f'<div class="card{" borderline" if h.get("borderline") else ""}" id="card-{_e(h.get("name"))}" '
            f'data-head="{_e(h.get("name"))}"><div class="card-body"><div class="card-main"><h3>{_e(h.get("name"))} '
            f'<span class="tag {_e(label)}">{_e(title)}</span></h3><p class="facts">{"; ".join(facts)}'
            f'{"; " + pats if pats else ""}</p></div>{_mean_attention_block(d, h)}</div>{_roles_table(d, i, h)}</div>')
    if ma.get("offsets"):
        lo, hi = ma["offsets"]
        intro = (f"Mean attention: every head's attention averaged over {_num(ma.get('rows'), 'mean_attention.rows')} rows "
                 f"with positions re-indexed relative to the anchor (offsets {_num(lo, 'mean_attention.offsets.0')} to "
                 f"{_num(hi, 'mean_attention.offsets.1')}; the anchor's row and column outlined): a shift is one bright "
                 "off-diagonal, a broadcast one bright column.")
    else:
        intro = "Mean attention: not computed (a result of an older version, or no row has an anchor)."
    return ('<section id="cards"><h2>Evidence per head</h2><p class="note">Each test is one role: its effect '
            "(normalised patching effect of the part of the head that carries it, 1 = restores the clean answer) "
            "with its 95% bootstrap interval, against the threshold; margin = how far inside the threshold a score "
            "must be to be safe (a label within it is borderline). Routes: where the role's information goes "
            f"(L1 q / k / v = layer 1's queries / keys / values; bold: at or above the route threshold; these are the diagram's edges). {intro}</p>"
            f'<div class="cards">{"".join(cards)}</div></section>')
