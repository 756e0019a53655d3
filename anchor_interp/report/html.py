"""One self-contained HTML report per find_heads analysis, rendered from a FindHeadsResult alone.

The page works offline: the circuitsvis JavaScript bundle (``circuitsvis/dist/cdn/iife.js``, the
bundle that ``RenderedHTML.local_src`` inlines) goes into the page ONCE, and every attention plot is
drawn into its own element by ``CircuitsVis.render(elementId, CircuitsVis.AttentionHeads, props)``.
Props travel as JSON in ``<script type="application/json">`` blocks with ``<``, ``>`` and ``&``
written as ``\\u003c`` / ``\\u003e`` / ``\\u0026``, so no data string (a token named ``</script>``,
say) can end a script; every string shown as HTML goes through ``html.escape``. Matplotlib figures
are embedded as PNG data and saved as PNG files next to the report. The file set is written all-or-nothing
(:func:`anchor_interp.atomic.write_file_set`).

Reading the report: docs/report.md.
"""

from __future__ import annotations

import base64
import html
import importlib.util
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from anchor_interp.atomic import write_file_set
from anchor_interp.names import head_name
from anchor_interp.report.cards import head_cards, model_card
from anchor_interp.report.diagram import circuit_layout, circuit_svg
from anchor_interp.result import (
    PATCHING_SWEEPS,
    FindHeadsResult,
    json_safe,
    key_scores,
    label_role,
    label_role_index,
)

BUNDLE_MARKER = "anchor-interp-circuitsvis-bundle"


@lru_cache(maxsize=1)
def circuitsvis_bundle() -> str:
    """The circuitsvis browser bundle (defines the global ``CircuitsVis``), safe to inline in <script>.

    Found without importing circuitsvis (which imports torch). ``</script`` inside its string
    literals is written ``<\\/script`` (the same string in JavaScript) and the source-map comment is
    dropped, so the page requests nothing. Raises RuntimeError if circuitsvis is not installed.
    """
    spec = importlib.util.find_spec("circuitsvis")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("circuitsvis is not installed; pip install circuitsvis==1.43.3")
    path = Path(list(spec.submodule_search_locations)[0]) / "dist" / "cdn" / "iife.js"
    if not path.is_file():
        raise RuntimeError(f"circuitsvis bundle not found at {path}; reinstall circuitsvis==1.43.3")
    js = path.read_text(encoding="utf-8")
    js = re.sub(r"</(script)", r"<\\/\1", js, flags=re.IGNORECASE)
    js = re.sub(r"^//# sourceMappingURL=.*$", "", js, flags=re.MULTILINE)
    js = js.replace("<!--", "<\\!--")
    return js


def json_for_script(value: Any) -> str:
    """JSON text that is safe inside any <script> element: no ``<``, ``>`` or ``&`` characters."""
    text = json.dumps(json_safe(value), allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _svg_export(name: str) -> bool:
    """Figures also exported as SVG: the circuit diagram, the patching heatmaps and the mean attention."""
    return name == "circuit" or name == "mean_attention" or name.startswith("patching_")


def report_paths(path: str | os.PathLike, result: FindHeadsResult | dict | None = None) -> dict[str, Path]:
    """Every file `write_report` would write: ``{"html": path, "<figure>": png path, "<figure>.svg": svg
    path, ...}``.

    Figures go next to the HTML as ``<stem>_<figure>.png`` (and ``<stem>_<figure>.svg`` for the circuit
    diagram, the patching heatmaps and the mean attention). With ``result=None``: every file a find_heads
    result can lead to (so a caller can refuse to overwrite before computing anything).
    """
    from anchor_interp.report.plots import _slug, figure_names

    path = Path(path)
    if result is None:
        names = ["head_patterns", *("patching_" + _slug(n) for n, _, _ in PATCHING_SWEEPS), "ablation", "history",
                 "mean_attention"]
    else:
        names = figure_names(result.to_dict() if isinstance(result, FindHeadsResult) else result)
    out = {"html": path}
    for name in ["circuit", *names]:
        out[name] = path.with_name(f"{path.stem}_{name}.png")
        if _svg_export(name):
            out[f"{name}.svg"] = path.with_name(f"{path.stem}_{name}.svg")
    return out


def write_report(
    result: FindHeadsResult | dict, path: str | os.PathLike, *, overwrite: bool = False, figures: bool = True,
    extra_files: dict | None = None,
) -> Path:
    """Render ``result`` to a self-contained HTML file at ``path`` (and its PNG figures beside it).

    All-or-nothing: everything is rendered in memory, written into a temporary sibling folder and only
    then renamed into place (with ``overwrite``, the old report's files, including figures the new one
    does not have, are renamed aside first and deleted after); see :func:`anchor_interp.atomic.write_file_set`.
    ``extra_files`` (``{path: bytes}``, e.g. the result JSON) join the same set.
    Raises FileExistsError if the HTML or a PNG it would write exists and ``overwrite`` is False;
    ValueError if ``result`` is not a valid schema-1 result. Returns the HTML path.
    """
    res = result if isinstance(result, FindHeadsResult) else FindHeadsResult.from_dict(result)
    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"report path {path} must end in .html")
    from anchor_interp.report.diagram import circuit_figure, circuit_layout, circuit_svg
    from anchor_interp.report.plots import figure_png, figure_svg, result_figures

    d = res.to_dict()
    planned = report_paths(path, d) if figures else {"html": path}
    targets = list(planned.values()) + [Path(p) for p in extra_files or {}]
    if not overwrite:  # check before drawing anything
        existing = [str(p) for p in targets if p.exists()]
        if existing:
            raise FileExistsError(f"would overwrite {', '.join(existing)}; pass overwrite=True (CLI: --force)")
    pngs: dict[str, bytes] = {}
    files: dict[Path, bytes] = {}
    if figures:
        layout = circuit_layout(d)
        drawn = {"circuit": circuit_figure(layout), **result_figures(d)}
        for name, fig in drawn.items():
            pngs[name] = figure_png(fig)
            files[planned[name]] = pngs[name]
            if f"{name}.svg" in planned:
                fig.set_layout_engine("none")  # keep the layout the PNG draw computed: same picture, ~40% faster
                files[planned[f"{name}.svg"]] = (circuit_svg(layout).encode("utf-8") if name == "circuit"
                                                 else figure_svg(fig))
    files[path] = render_html(res, pngs).encode("utf-8")
    files.update({Path(p): data for p, data in (extra_files or {}).items()})
    stale = [p for p in report_paths(path).values() if p not in files] if overwrite else []
    write_file_set(files, overwrite=overwrite, remove=stale)
    return path


# ----------------------------------------------------------------------------------------------------
# HTML

_CSS = """
.banner { background: #b00020; color: #fff; padding: 0.8em 1em; font-weight: bold; margin: 1em 0; }
tr.borderline td.label { font-style: italic; }
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1240px;
 padding:16px 24px;color:#222}
h1{font-size:1.5em;margin-bottom:4px} h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f4f4f4;cursor:pointer;user-select:none} th[aria-sort]::after{content:" \\2195";color:#999}
tr.shift td.label{background:#dbeafe} tr.broadcast td.label{background:#fde68a}
tr.neither td.label{color:#777} td.num{text-align:right;font-variant-numeric:tabular-nums}
dl.meta{display:grid;grid-template-columns:max-content auto;gap:2px 14px;font-size:14px}
dl.meta dt{font-weight:600} dl.meta dd{margin:0}
code,.tokens{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px}
.tokens span{display:inline-block;padding:1px 4px;margin:1px;border:1px solid #ddd;border-radius:3px}
.tokens span.anchor{background:#fde68a} .tokens span.key{background:#dbeafe}
.note{color:#555;font-size:13px} .fail{color:#b91c1c;font-weight:600} .pass{color:#15803d}
figure{margin:12px 0} figure img{max-width:100%} figcaption{font-size:13px;color:#555}
.cv{min-height:40px}
.verdict{font-size:16px;line-height:1.45;background:#f0f7ff;border-left:4px solid #2563eb;padding:8px 12px;margin:12px 0}
#common-notes{margin:4px 0 8px;padding-left:20px}
.table-wrap{overflow-x:auto;max-width:100%} #head-table td.note{min-width:180px}
.cv div:has(> div > div > h4){flex:0 0 104px!important;max-width:104px!important;width:104px!important}
.cv h4{position:static!important;font-size:12px!important;line-height:1.2;white-space:normal;overflow-wrap:anywhere}
.layers{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:8px 20px}
.diagram{overflow-x:auto;max-width:100%} .diagram svg{display:block}
.card-cols{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:0 28px}
table caption{text-align:left;font-size:13px;color:#555;padding:2px 0}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:12px}
.card{border:1px solid #ddd;border-radius:6px;padding:6px 12px;min-width:0}
.card.borderline{border-style:dashed} .card h3{margin:4px 0;font-size:16px}
.card-body{display:flex;gap:12px;align-items:flex-start} .card-main{flex:1 1 auto;min-width:0}
.card .facts{font-size:13px;margin:4px 0} td.nw,span.nw{white-space:nowrap} td.routes{min-width:150px} .card table{font-size:13px} .mean-attn-box{flex:0 0 auto;margin:0}
.mean-attn-box figcaption{font-size:12px;max-width:190px}
.tag{font-size:13px;font-weight:normal;padding:1px 6px;border-radius:3px;background:#eee}
.tag.shift{background:#dbeafe} .tag.broadcast{background:#fde68a}
"""

# Draw every attention plot from its JSON props, then sort tables on header click.
_RENDER_JS = """
(function(){
  var els = document.querySelectorAll('div.cv[data-props]');
  var drawn = 0;
  els.forEach(function(el){
    try {
      var props = JSON.parse(document.getElementById(el.dataset.props).textContent);
      CircuitsVis.render(el.id, CircuitsVis.AttentionHeads, props);
      drawn += 1;
    } catch (e) { el.textContent = 'attention plot failed: ' + e; }
  });
  document.body.dataset.cvRendered = String(drawn);
  document.querySelectorAll('table.sortable th').forEach(function(th, col){
    th.addEventListener('click', function(){
      var tbody = th.closest('table').tBodies[0];
      var rows = Array.prototype.slice.call(tbody.rows);
      var asc = th.dataset.dir !== 'asc'; th.dataset.dir = asc ? 'asc' : 'desc';
      rows.sort(function(a, b){
        var x = a.cells[col].dataset.v || a.cells[col].textContent;
        var y = b.cells[col].dataset.v || b.cells[col].textContent;
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return asc ? c : -c;
      });
      rows.forEach(function(r){ tbody.appendChild(r); });
    });
  });
})();
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _head_title(h: dict[str, Any]) -> str:
    label = h.get("label") or "?"
    if label == "shift" and h.get("offset") is not None:
        return f"{h['name']} shift({h['offset']:+d})"
    if label == "broadcast":
        return f"{h['name']} broadcast"
    return h["name"]


def render_html(result: FindHeadsResult, pngs: dict[str, bytes] | None = None) -> str:
    """The report page as one string (see the module docstring for what it contains)."""
    d = result.to_dict()
    pngs = pngs or {}
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(_title(d))}</title>",
        f"<style>{_CSS}</style>",
        f'<script id="{BUNDLE_MARKER}">{circuitsvis_bundle()}</script>',
        "</head><body>",
        f"<h1>{_e(_title(d))}</h1>",
        _banner(d),
        _verdict_section(d),
        _circuit_section(d),
        model_card(d),
        _heads_section(d),
        head_cards(d),
        _patterns_section(d),
        _evidence_section(d, pngs),
        _history_section(d, pngs),
        _footer(d),
        f'<script type="application/json" id="find-heads-result">{json_for_script(d)}</script>',
        f"<script>{_RENDER_JS}</script>",
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)


def _circuit_section(d: dict[str, Any]) -> str:
    """The circuit diagram (docs/report.md, "Circuit diagram"), inlined as SVG."""
    if not d.get("heads"):
        return ""
    svg = circuit_svg(circuit_layout(d), element_id="circuit")
    thr = ((d.get("labelling") or {}).get("thresholds") or {}).get("route")
    thr_text = (f' (<span data-json-path="labelling.thresholds.route">{_e(_fmt(thr, 2))}</span>)'
                if isinstance(thr, (int, float)) else "")
    return (
        '<section id="circuit-section"><h2>Circuit</h2>'
        '<p class="note">Input positions (left) feed the labelled heads (one box per head, titled with the roles '
        "that pass; dashed = borderline) through grey edges (the role's counterfactual: where its information "
        "comes from). Coloured edges are the routes at or above the route threshold"
        f"{thr_text}, numbered with their path-patching effect: into a later layer's "
        '<strong style="color:#7c3aed">q</strong>ueries, <strong style="color:#2563eb">k</strong>eys (the flag), '
        '<strong style="color:#059669">v</strong>alues (the value), or straight to the <strong style="color:#dc2626">logits</strong>. '
        f'Also saved as <code>*_circuit.svg</code> / <code>.png</code>.</p><div class="diagram">{svg}</div></section>'
    )


def _banner(d: dict[str, Any]) -> str:
    """A red banner when the model does not solve its task (the competence gate)."""
    comp = d.get("competence") or {}
    if comp.get("solved", True):
        return ""
    what = ("labels are shown anyway (--allow-unsolved)" if comp.get("allow_unsolved")
            else "no head is labelled shift or broadcast")
    return (f'<div class="banner" id="unsolved-banner">This model does not solve the task: held-out accuracy '
            f'<span data-json-path="competence.accuracy">{_e(_fmt(comp.get("accuracy")))}</span> on the unmasked '
            f'groups is below the floor <span data-json-path="competence.floor">{_e(_fmt(comp.get("floor")))}</span>; '
            f"{_e(what)}. Attention patterns of such models look like shifts and broadcasts without doing them.</div>")


def _title(d: dict[str, Any]) -> str:
    m, t = d.get("model") or {}, d.get("task") or {}
    return f"find_heads: {t.get('name', 'task')} on {m.get('preset') or 'model'} ({m.get('source', '')})".replace(
        " ()", ""
    )


def _heads_section(d: dict[str, Any]) -> str:
    heads = sorted(d.get("heads") or [], key=lambda h: (h.get("layer", 0), h.get("head", 0)))
    common = _common_notes(d)
    rows = []
    for i, h in enumerate(heads):
        label = h.get("label") or "?"
        detail = f"offset {h['offset']:+d}" if h.get("offset") is not None else (h.get("kind") or "")
        scores = h.get("scores") or {}
        ks = key_scores(h)
        all_scores = ", ".join(f"{k} {_fmt(v, 2)}" for k, v in scores.items())
        notes = "; ".join(str(n) for n in h.get("notes") or [] if str(n) not in common)
        roles = h.get("roles") or []
        main_i = label_role_index(h)
        main = roles[main_i] if main_i is not None else None
        path = f"heads.{i}.roles.{main_i}" if main is not None else None
        interval = (f'<span data-json-path="{path}.ci_low">{_e(_fmt(main.get("ci_low"), 2))}</span>–'
                    f'<span data-json-path="{path}.ci_high">{_e(_fmt(main.get("ci_high"), 2))}</span>') if main else "–"
        others = ", ".join(f"{r.get('name')} {_fmt(r.get('effect'), 2)}" for r in roles if r.get("passes") and r is not main)
        stab = h.get("stability")
        rows.append(
            f'<tr class="{_e(label)}{" borderline" if h.get("borderline") else ""}" data-head="{_e(h.get("name"))}">'
            f'<td class="num">{_e(h.get("layer"))}</td><td class="num">{_e(h.get("head"))}</td>'
            f"<td>{_e(h.get('name'))}</td><td class=\"label\">{_e(label)}{' ~' if h.get('borderline') else ''}</td>"
            f"<td>{_e(detail)}</td>"
            f'<td class="num" data-json-path="heads.{i}.causal_effect">{_e(_fmt(h.get("causal_effect")))}</td>'
            f"<td class=\"num\">{interval}</td><td>{_e(h.get('counterfactual') or '–')}</td>"
            f"<td>{_e(main.get('route') if main else '–')}</td><td>{_e(others)}</td>"
            f'<td class="num" data-json-path="heads.{i}.stability">{_e("–" if stab is None else f"{stab:.0%}")}</td>'
            f'<td class="num">{_e(_fmt(ks["shift"], 2))}</td><td class="num">{_e(_fmt(ks["broadcast"], 2))}</td>'
            f'<td class="num" data-json-path="heads.{i}.confidence">{_e(_fmt(h.get("confidence"), 2))}</td>'
            f"<td>{_e(h.get('group') or '')}</td><td class=\"note\">{_e(notes)}</td>"
            f'<td class="note"><details><summary>{len(scores)}</summary>{_e(all_scores)}</details></td></tr>'
        )
    head_row = "".join(
        f"<th>{c}</th>"
        for c in ("layer", "head", "name", "label", "offset / kind", "effect", "95% interval", "counterfactual",
                  "route", "other roles", "stable", "shift pattern", "broadcast pattern", "confidence", "group",
                  "notes", "all scores")
    )
    out = [
        '<h2 id="heads">Head labels</h2>',
        '<p class="note">One row per head, ordered by layer and head; click a column header to sort. '
        "The effect is the label role's own normalised patching effect (1 = patching that part of the head "
        "restores the clean answer) under the counterfactual beside it, with its 95% bootstrap interval over "
        "rows; the route says where that information goes (path patching into a later layer's queries, keys, "
        "values, or the logits). A ~ after the label marks a borderline label (a score within its margin of a threshold, "
        "or a label that changes between batches); \"stable\" is the share of 5 batches giving the label. "
        "Pattern scores are in [0, 1]: 0 = what a uniform head gets. See docs/report.md.</p>",
        *([f'<ul id="common-notes" class="note">{"".join(f"<li>{_e(n)}</li>" for n in common)}</ul>'] if common else []),
        f'<div class="table-wrap"><table id="head-table" class="sortable"><thead><tr>{head_row}</tr></thead>'
        f'<tbody>{"".join(rows)}</tbody></table></div>',
    ]
    groups = d.get("groups") or []
    if groups:
        grow = "".join(
            f"<tr><td>{_e(g.get('name'))}</td><td>{_e(g.get('label', ''))}</td>"
            f"<td>{_e(', '.join(g.get('heads') or []))}</td><td class=\"num\">{_e(_fmt(g.get('joint_effect')))}</td>"
            f"<td>{_e(g.get('metric', ''))}</td><td>{_e(_individual(g))}</td></tr>"
            for g in groups
        )
        out.append(
            '<h3>Head groups</h3><p class="note">Heads that carry one operation together, with the effect of '
            "ablating them all at once.</p>"
            '<table id="group-table"><thead><tr><th>group</th><th>label</th><th>heads</th>'
            f"<th>joint effect</th><th>measured as</th><th>each head alone</th></tr></thead><tbody>{grow}</tbody></table>"
        )
    return "\n".join(out)


def _individual(g: dict[str, Any]) -> str:
    ind = g.get("individual_effects") or {}
    return ", ".join(f"{k} {_fmt(v, 2)}" for k, v in ind.items())


def _token_spans(ex: dict[str, Any]) -> str:
    labels = ex.get("token_labels") or [str(t) for t in ex.get("tokens", [])]
    spans = []
    for i, lab in enumerate(labels):
        cls = "anchor" if i == ex.get("anchor_pos") else "key" if i == ex.get("key_pos") else ""
        spans.append(f'<span class="{cls}" title="pos {i}">{_e(lab)}</span>')
    return "".join(spans)


def _patterns_section(d: dict[str, Any]) -> str:
    examples = d.get("examples") or []
    if not examples:
        return ""
    heads = {(h["layer"], h["head"]): h for h in d.get("heads") or []}
    causal = (d.get("model") or {}).get("causal", True)
    out = [
        '<h2 id="patterns">Attention patterns</h2>',
        '<p class="note">Rows are destination positions (dest_pos), columns source positions (src_pos). '
        "Anchor tokens are marked yellow, key tokens blue. Hover a head to enlarge it, click to lock.</p>",
    ]
    for i, ex in enumerate(examples):
        out.append(
            f'<h3>Example {i + 1}</h3><p class="tokens" id="tokens-{i}">{_token_spans(ex)}</p>'
            f'<p class="note">target {_e(ex.get("target"))}, model predicts {_e(ex.get("prediction"))}'
            f'{", group " + _e(ex["group"]) if ex.get("group") is not None else ""}</p>'
        )
        labels = ex.get("token_labels") or [str(t) for t in ex.get("tokens", [])]
        out.append('<div class="layers">')
        for hook, pattern in sorted((ex.get("patterns") or {}).items(), key=lambda kv: _layer_of(kv[0])):
            layer = _layer_of(hook)
            names = [_head_title(heads.get((layer, h), {"name": head_name(layer, h)})) for h in range(len(pattern))]
            props = {"attention": pattern, "tokens": labels, "attentionHeadNames": names, "maskUpperTri": bool(causal)}
            el = f"cv-e{i}-l{layer}"
            out.append(
                f"<div><h4>Layer {layer} <code>{_e(hook)}</code></h4>"
                f'<div class="cv" id="{el}" data-props="{el}-props" data-layer="{layer}" '
                f'data-n-heads="{len(pattern)}"></div>'
                f'<script type="application/json" id="{el}-props">{json_for_script(props)}</script></div>'
            )
        out.append("</div>")
    return "\n".join(out)


def _layer_of(hook: str) -> int:
    m = re.match(r"blocks\.(\d+)\.", hook)
    return int(m.group(1)) if m else -1


def _img(name: str, pngs: dict[str, bytes], caption: str) -> str:
    if name not in pngs:
        return ""
    b64 = base64.b64encode(pngs[name]).decode("ascii")
    return (
        f'<figure id="fig-{_e(name)}"><img alt="{_e(caption)}" src="data:image/png;base64,{b64}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _evidence_section(d: dict[str, Any], pngs: dict[str, bytes]) -> str:
    out = ['<h2 id="evidence">Causal evidence</h2>']
    out.append(_img("head_patterns", pngs, "Attention patterns of the labelled heads on example 1."))
    for name, patch in (d.get("patching") or {}).items():
        from anchor_interp.report.plots import _slug

        cf = patch.get("counterfactual") or "–"
        hooks = patch.get("hook_names") or []
        hooks = [hooks] if isinstance(hooks, str) else hooks
        caption = (
            f"Activation patching '{name}': run the {cf} input, patch in clean activations at "
            f"{' × '.join(patch.get('axes', []))}, measure {patch.get('metric')}"
            f"{' (normalised: 1 = fully restores the clean answer)' if patch.get('normalised') else ''}. "
            f"Hooks: {', '.join(hooks[:3])}{' …' if len(hooks) > 3 else ''}."
        )
        rows = (patch.get("extra") or {}).get("rows")
        if rows:
            caption += f" Rows: {rows}."
        out.append(_img("patching_" + _slug(name), pngs, caption))
    abl = d.get("ablation") or {}
    if abl.get("checks"):
        out.append(_img("ablation", pngs, f"Held-out accuracy after {abl.get('method', '')} ablation."))
        rows = "".join(
            f"<tr><td>{_e(c.get('name'))}</td><td>{_e(', '.join(c.get('heads') or []) or '(none)')}"
            f"{'<br><span class=note>' + _e(c['note']) + '</span>' if c.get('note') else ''}</td>"
            f'<td class="num">{_e(_fmt(c.get("accuracy")))}</td><td class="num">{_e(_fmt(c.get("loss")))}</td>'
            f"<td>{_e(c.get('expected', ''))}</td>"
            f"<td class=\"{'pass' if c.get('passed') else 'fail'}\">{'pass' if c.get('passed') else 'FAIL'}</td></tr>"
            for c in abl["checks"]
        )
        base = abl.get("baseline") or {}
        out.append(
            f'<p class="note">Without ablation: accuracy {_e(_fmt(base.get("accuracy")))}, '
            f'loss {_e(_fmt(base.get("loss")))} (nats).</p>'
            '<table id="ablation-table"><thead><tr><th>check</th><th>heads ablated</th><th>accuracy</th>'
            f"<th>loss</th><th>expected</th><th>result</th></tr></thead><tbody>{rows}</tbody></table>"
        )
    return "\n".join(out) if len(out) > 1 else ""


def _history_section(d: dict[str, Any], pngs: dict[str, bytes]) -> str:
    if "history" not in pngs:
        return ""
    return '<h2 id="training">Training</h2>' + _img("history", pngs, "Training history from the checkpoint.")


def _footer(d: dict[str, Any]) -> str:
    t = d.get("timings") or {}
    timing = ", ".join(f"{k} {v:.2f} s" for k, v in t.items()) if t else ""
    return (
        '<hr><p class="note">How to read this report: docs/report.md in anchor_interp. '
        "The full result is embedded below as JSON (script#find-heads-result) and can be re-rendered with "
        f"<code>anchor-find-heads --from-json RESULT.json --report OUT.html</code>.{' Timings: ' + _e(timing) if timing else ''}</p>"
    )


# ----------------------------------------------------------------------------------------------------
# Verdict: one or two plain sentences at the top (template: docs/report.md, "Verdict").

_ROUTE_RE = re.compile(r"->\s*(L(\d+)\s+(queries|keys|values)|logits)")


def _no_task(d: dict[str, Any]) -> bool:
    heads = d.get("heads") or []
    return not (d.get("task") or {}).get("name") or any(
        str(n).startswith("no task") for h in heads for n in h.get("notes") or [])


def _places(offset: int) -> str:
    n = abs(offset)
    return f"{'one place' if n == 1 else f'{n} places'} {'right' if offset < 0 else 'left'}"


def _route_target(heads: list[dict[str, Any]]) -> str:
    """' into layer 1's keys' / ' to the logits' when every head's label role routes to the same place."""
    targets = set()
    for h in heads:
        role = label_role(h)
        m = _ROUTE_RE.search(str((role or {}).get("route") or ""))
        targets.add(None if m is None else ("logits" if m.group(1) == "logits" else (m.group(2), m.group(3))))
    if len(targets) != 1 or None in targets:
        return ""
    t = targets.pop()
    return " straight to the logits" if t == "logits" else f" into layer {t[0]}'s {t[1]}"


def _names(heads: list[dict[str, Any]]) -> str:
    return ", ".join(h["name"] + (" borderline" if h.get("borderline") else "") for h in heads)


def _verdict_parts(d: dict[str, Any]) -> list[tuple[str, str | None]]:
    """The verdict as ``(text, json_path)`` pieces; a piece with a path is one number from the JSON."""
    heads = sorted(d.get("heads") or [], key=lambda h: (h.get("layer", 0), h.get("head", 0)))
    index = {id(h): i for i, h in enumerate(d.get("heads") or [])}
    comp, acc = d.get("competence") or {}, d.get("accuracy") or {}
    no_task = _no_task(d)
    parts: list[tuple[str, str | None]] = []
    unsolved = not no_task and comp.get("solved") is False
    if unsolved:
        parts += [("The model does not solve the task: held-out accuracy ", None),
                  (_fmt(comp.get("accuracy")), "competence.accuracy"), (" (unmasked) is below the floor ", None),
                  (_fmt(comp.get("floor")), "competence.floor"), (". ", None)]
        if not comp.get("allow_unsolved"):
            return parts + [("No head is labelled.", None)]
        parts.append(("Labels shown anyway (--allow-unsolved): ", None))
    layers: dict[int, list[str]] = {}
    for layer in sorted({h.get("layer", 0) for h in heads}):
        in_layer = [h for h in heads if h.get("layer", 0) == layer]
        phrases = []
        for off in sorted({h["offset"] for h in in_layer if h.get("label") == "shift" and h.get("offset") is not None},
                          key=lambda o: (abs(o), o)):
            hs = [h for h in in_layer if h.get("label") == "shift" and h.get("offset") == off]
            what = "the anchor's position" if not no_task else "attention"
            phrases.append(f"{_count(hs)} shift {what} {_places(off)} ({_names(hs)}){_route_target(hs)}")
        hs = [h for h in in_layer if h.get("label") == "broadcast"]
        if hs:
            phrases.append(f"{_count(hs)} broadcast {'the key ' if not no_task else ''}to the last position "
                           f"({_names(hs)}){_route_target(hs)}")
        hs = [h for h in in_layer if h.get("label") not in ("shift", "broadcast") and h.get("kind") == "copy"]
        if hs:
            phrases.append(f"{_count(hs)} copy the key ({_names(hs)}){_route_target(hs)}")
        if phrases:
            layers[layer] = phrases
    if layers:
        parts.append((" ".join(f"Layer {layer}: {'; '.join(p)}." for layer, p in layers.items()), None))
    else:
        parts.append(("No head is labelled shift, broadcast or copy.", None))
    if no_task:
        parts.append((" No task: labels come from attention patterns and ablation only "
                      "(no accuracy, counterfactual or route evidence).", None))
        return parts
    if acc.get("overall") is not None:
        parts += [(" Held-out accuracy ", None), (_fmt(acc.get("overall")), "accuracy.overall"), (" (unmasked)", None)]
        if acc.get("n_masked") and acc.get("masked_accuracy") is not None:
            parts += [(", ", None), (_fmt(acc.get("masked_accuracy")), "accuracy.masked_accuracy"),
                      (" on the masked groups", None)]
        parts.append((";", None))
    labelled = [h for h in heads if (h.get("label") in ("shift", "broadcast") or h.get("kind") == "copy")
                and h.get("stability") is not None]
    if labelled:
        worst = min(labelled, key=lambda h: h["stability"])
        whole = worst["stability"] >= 1
        parts += [(" every label stable on " if whole else " labels stable on at least ", None),
                  (f"{worst['stability']:.0%}", f"heads.{index[id(worst)]}.stability"),
                  (" of batches." if whole else f" of batches (least stable: {worst['name']}).", None)]
    elif parts[-1][0] == ";":
        parts[-1] = (".", None)
    return parts


def _count(hs: list[dict[str, Any]]) -> str:
    return f"{len(hs)} head{'s' if len(hs) != 1 else ''}"


def verdict(result: dict[str, Any]) -> str:
    """One or two plain sentences saying what the model does, generated from a result dict (docs/report.md)."""
    return "".join(text for text, _ in _verdict_parts(result)).strip()


def _verdict_section(d: dict[str, Any]) -> str:
    body = "".join(f'<span data-json-path="{_e(p)}">{_e(t)}</span>' if p else _e(t) for t, p in _verdict_parts(d))
    return f'<p id="verdict" class="verdict">{body.strip()}</p>'


def _common_notes(d: dict[str, Any]) -> list[str]:
    """Notes that every head carries (shown once above the head table instead of in every row)."""
    heads = d.get("heads") or []
    if len(heads) < 2:
        return []
    first = [str(n) for n in heads[0].get("notes") or []]
    rest = [{str(n) for n in h.get("notes") or []} for h in heads[1:]]
    return [n for n in dict.fromkeys(first) if all(n in s for s in rest)]
