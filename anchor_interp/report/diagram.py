"""The circuit diagram of a FindHeadsResult: input positions -> labelled heads -> later layers / logits.

`circuit_layout` reads a result dict (nothing else) and places the diagram once; `circuit_svg` writes it
as SVG text (inlined in the report, saved as ``<stem>_circuit.svg``) and `circuit_figure` draws the same
layout with matplotlib (saved as ``<stem>_circuit.png``). What is drawn (docs/report.md, "Circuit diagram"):

- **inputs** (left): the task positions the heads' roles read: ``anchor`` (``anchor 2`` in two-anchor
  tasks), ``key``, ``last`` (the position the answer is read at);
- **heads**: one node per *labelled* head (label ``shift`` or ``broadcast``, or kind ``copy``), in its
  layer's column, titled with its passing roles (``shift(-1)``, ``broadcast(key)``, ``copy``);
  a borderline head (``heads[i].borderline``) is dashed, with its edges;
- **input edges** (grey): from the position a passing role's information comes from (its ``slot``, else
  its counterfactual: ``anchor_position`` / ``anchor_identity`` -> anchor, ``anchor_identity_2`` ->
  anchor 2, ``key_value`` -> key), and from ``last`` for a broadcast (the row that reads); width ~ the
  role's effect;
- **route edges** (coloured, numbered): one per route of a passing role whose path effect is at least
  the route threshold (``roles[j].route_threshold``, else ``labelling.thresholds.route``), from the head
  to the port it feeds: ``L<m> q|k|v`` (a later layer's queries, keys or values: "flag via keys, value
  via values") or ``logits`` (direct); width ~ the effect, labelled with it (``data-json-path`` =
  ``heads.<i>.roles.<j>.routes.<target>``).

No-task results (labels from patterns and ablation only) have no roles and no routes: the diagram shows
the labelled heads with their pattern label and no edges. Every element carries data attributes
(``data-node``, ``data-head``, ``data-route``, ``data-edge``) so a test can count them against the JSON.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CircuitLayout", "circuit_figure", "circuit_layout", "circuit_svg", "diagram_heads"]

# a layer column: 8 px, its ports (30 px), 14 px, head nodes (120 px), room for the route numbers (46 px)
_COL_W, _SIDE_W, _NODE_W, _NODE_H, _ROW_H, _TOP = 218, 110, 120, 40, 54, 60
_PORT_R = 15
_ROUTE_COLOURS = {"q": "#7c3aed", "k": "#2563eb", "v": "#059669", "logits": "#dc2626"}
_INPUT_FROM_CF = {"anchor_position": "anchor", "anchor_identity": "anchor", "anchor_identity_2": "anchor 2",
                  "key_value": "key"}
_SLOT_INPUT = {"anchor": "anchor", "anchor2": "anchor 2", "key": "key", "key2": "key 2"}


@dataclass
class Node:
    id: str
    kind: str  # "input" | "head" | "port" | "logits" | "layer"
    x: float
    y: float
    w: float
    h: float
    lines: list[str]
    dashed: bool = False
    attrs: dict[str, str] = field(default_factory=dict)


@dataclass
class Edge:
    kind: str  # "input" | "route"
    x1: float
    y1: float
    x2: float
    y2: float
    width: float
    colour: str
    dashed: bool = False
    label: str = ""
    label_path: str = ""
    label_xy: tuple[float, float] = (0.0, 0.0)
    attrs: dict[str, str] = field(default_factory=dict)


@dataclass
class CircuitLayout:
    """Placed nodes and edges of one diagram, in pixels (``width`` x ``height``); ``note`` is a caption line."""

    nodes: list[Node]
    edges: list[Edge]
    width: float
    height: float
    note: str = ""


def diagram_heads(d: dict[str, Any]) -> list[int]:
    """Indices into ``d["heads"]`` of the heads the diagram draws: label shift or broadcast, or kind copy."""
    return [i for i, h in enumerate(d.get("heads") or [])
            if h.get("label") in ("shift", "broadcast") or h.get("kind") == "copy"]


def _no_task(d: dict[str, Any]) -> bool:
    heads = d.get("heads") or []
    return not (d.get("task") or {}).get("name") or any(
        str(n).startswith("no task") for h in heads for n in h.get("notes") or [])


def _passing_roles(h: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    return [(j, r) for j, r in enumerate(h.get("roles") or []) if r.get("passes")]


def _route_threshold(d: dict[str, Any], role: dict[str, Any]) -> float:
    t = role.get("route_threshold")
    if t is None:
        t = ((d.get("labelling") or {}).get("thresholds") or {}).get("route", 0.05)
    return float(t)


def _routes(d: dict[str, Any], role: dict[str, Any]) -> list[tuple[str, float]]:
    """(target, effect) of the role's routes at or above the route threshold, in the role's order."""
    t = _route_threshold(d, role)
    out = []
    for target, v in (role.get("routes") or {}).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= t:
            out.append((str(target), float(v)))
    return out


def _role_input(role: dict[str, Any]) -> str | None:
    slot = role.get("slot")
    if slot:
        return _SLOT_INPUT.get(str(slot), str(slot))
    return _INPUT_FROM_CF.get(str(role.get("counterfactual")))


def _head_caption(h: dict[str, Any], roles: list[tuple[int, dict[str, Any]]]) -> str:
    if roles:
        return " + ".join(dict.fromkeys(str(r.get("name") or r.get("role")) for _, r in roles))
    if h.get("label") == "shift" and h.get("offset") is not None:
        return f"shift({h['offset']:+d}) pattern"
    return f"{h.get('label') if h.get('label') != 'neither' else h.get('kind')} pattern"


_Plan = list[tuple[int, list[tuple[int, dict[str, Any]]], list[tuple[int, dict[str, Any], list[tuple[str, float]]]]]]


def _inputs(plan: _Plan, no_task: bool) -> list[str]:
    """The input positions the passing roles read, in a fixed order (anchor, anchor 2, key, key 2, last)."""
    wanted = {_role_input(r) for _, roles, _ in plan for _, r in roles} - {None}
    if any(r.get("role") == "broadcast" for _, roles, _ in plan for _, r in roles):
        wanted.add("last")
    order = ["anchor", "anchor 2", "key", "key 2", "last"]
    inputs = [n for n in order if n in wanted] + sorted(wanted - set(order))
    return inputs if inputs or no_task else ["anchor", "key", "last"]


def _ports(plan: _Plan) -> dict[int, list[str]]:
    """layer -> the parts (q, k, v) that some drawn route feeds, in q, k, v order."""
    ports: dict[int, list[str]] = {}
    for _, _, routed in plan:
        for _, _, rts in routed:
            for target, _ in rts:
                layer, _, part = target[1:].partition(".")
                if target.startswith("L") and part and layer.isdigit() and part not in ports.get(int(layer), []):
                    ports.setdefault(int(layer), []).append(part)
    return {layer: sorted(parts, key=lambda p: "qkv".find(p) if p in "qkv" else 9) for layer, parts in ports.items()}


def _head_edges(d: dict[str, Any], plan: _Plan, by_id: dict[str, Node]) -> list[Edge]:
    """Input edges (where each passing role's information comes from) and route edges (>= threshold)."""
    heads, edges = d.get("heads") or [], []
    for i, roles, routed in plan:
        h = heads[i]
        node = by_id[f"head:{h['name']}"]
        for _, r in roles:
            src = _role_input(r)
            sources = ([src] if src else []) + (["last"] if r.get("role") == "broadcast" and src != "last" else [])
            for s in (s for s in sources if f"in:{s}" in by_id):
                a = by_id[f"in:{s}"]
                eff = r.get("effect") if isinstance(r.get("effect"), (int, float)) else 0.0
                edges.append(Edge("input", a.x + a.w, a.y + a.h / 2, node.x, node.y + node.h / 2,
                                  1 + 2 * max(0.0, min(1.0, eff)), "#cbd5e1",
                                  bool(h.get("borderline")) or bool(r.get("borderline")),
                                  attrs={"data-edge": "input", "data-head": str(h["name"]), "data-from": s,
                                         "data-role": str(r.get("name") or r.get("role"))}))
        for j, r, rts in routed:
            for target, v in rts:
                dest = by_id.get("logits") if target == "logits" else by_id.get(f"port:{target}")
                if dest is None:
                    continue
                part = "logits" if target == "logits" else target.split(".", 1)[1]
                edges.append(Edge("route", node.x + node.w, node.y + node.h / 2, dest.x, dest.y + dest.h / 2,
                                  1 + 8 * min(1.0, v), _ROUTE_COLOURS.get(part, "#374151"),
                                  bool(h.get("borderline")) or bool(r.get("borderline")),
                                  label=f"{v:.2f}", label_path=f"heads.{i}.roles.{j}.routes.{target}",
                                  attrs={"data-edge": "route", "data-head": str(h["name"]), "data-route": target,
                                         "data-role": str(r.get("name") or r.get("role"))}))
    return edges


def circuit_layout(d: dict[str, Any]) -> CircuitLayout:
    """Place the diagram of result dict ``d`` (see the module docstring). Never raises for a partial result."""
    heads = d.get("heads") or []
    n_layers = int((d.get("model") or {}).get("n_layers") or 1 + max([h.get("layer", 0) for h in heads] or [0]))
    chosen, no_task = diagram_heads(d), _no_task(d)
    plan: _Plan = []  # (head index, passing roles, [(role index, role, [(target, effect) >= threshold])])
    for i in chosen:
        roles = [] if no_task else _passing_roles(heads[i])
        plan.append((i, roles, [(j, r, _routes(d, r)) for j, r in roles]))
    inputs, ports = _inputs(plan, no_task), _ports(plan)
    per_layer: dict[int, list[int]] = {}
    for i in chosen:
        per_layer.setdefault(int(heads[i].get("layer", 0)), []).append(i)
    rows = max([len(v) for v in per_layer.values()] + [len(p) for p in ports.values()] + [len(inputs), 1])
    height = _TOP + rows * _ROW_H + 30
    x0 = _SIDE_W if inputs else 0
    nodes = [Node(f"in:{name}", "input", 6, _TOP + k * _ROW_H, _SIDE_W - 24, _NODE_H, [name],
                  attrs={"data-node": "input", "data-input": name}) for k, name in enumerate(inputs)]
    for layer in range(n_layers):
        x = x0 + layer * _COL_W
        nodes.append(Node(f"layer:{layer}", "layer", x + 4, 34, _COL_W - 8, height - 44, [f"layer {layer}"],
                          attrs={"data-node": "layer", "data-layer": str(layer)}))
        for k, part in enumerate(ports.get(layer, [])):  # a later layer's inputs, on its left edge
            nodes.append(Node(f"port:L{layer}.{part}", "port", x + 8, _TOP + k * _ROW_H + _NODE_H / 2 - _PORT_R,
                              2 * _PORT_R, 2 * _PORT_R, [part],
                              attrs={"data-node": "port", "data-port": f"L{layer}.{part}"}))
        for k, i in enumerate(sorted(per_layer.get(layer, []), key=lambda i: heads[i].get("head", 0))):
            h = heads[i]
            nodes.append(Node(f"head:{h['name']}", "head", x + 52, _TOP + k * _ROW_H, _NODE_W, _NODE_H,
                              [str(h["name"]), _head_caption(h, plan[chosen.index(i)][1])],
                              dashed=bool(h.get("borderline")),
                              attrs={"data-node": "head", "data-head": str(h["name"]), "data-head-index": str(i)}))
    if not no_task:
        nodes.append(Node("logits", "logits", x0 + n_layers * _COL_W + 10, _TOP, _SIDE_W - 20, _NODE_H, ["logits"],
                          attrs={"data-node": "logits"}))
    edges = _head_edges(d, plan, {n.id: n for n in nodes})
    _place_labels(edges)
    note = ("No task: heads placed by their pattern label only (no counterfactual, so no routes)." if no_task
            else "" if chosen else "No head is labelled shift, broadcast or copy.")
    width = x0 + n_layers * _COL_W + (10 if no_task else _SIDE_W)
    return CircuitLayout(nodes, edges, max(width, 400), height, note)


def _place_labels(edges: list[Edge]) -> None:
    """Route numbers sit just right of their head, stacked when a head has several routes."""
    by_source: dict[tuple[float, float], list[Edge]] = {}
    for e in edges:
        if e.label:
            by_source.setdefault((e.x1, e.y1), []).append(e)
    for (x, y), group in by_source.items():
        for k, e in enumerate(group):
            e.label_xy = (x + 4, y - 5 + (k - (len(group) - 1) / 2) * 14)  # above the edge's start


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _attrs(a: dict[str, str]) -> str:
    return "".join(f' {k}="{_e(v)}"' for k, v in a.items())


def _curve(e: Edge) -> str:
    dx = max(40.0, (e.x2 - e.x1) / 2)
    return f"M{e.x1:.1f},{e.y1:.1f} C{e.x1 + dx:.1f},{e.y1:.1f} {e.x2 - dx:.1f},{e.y2:.1f} {e.x2:.1f},{e.y2:.1f}"


def circuit_svg(layout: CircuitLayout, *, element_id: str = "circuit") -> str:
    """The layout as a standalone SVG document string (no external references); text at 12-13 px."""
    w, h = layout.width, layout.height + (24 if layout.note else 0)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" id="{_e(element_id)}" width="{w:.0f}" height="{h:.0f}" '
           f'viewBox="0 0 {w:.0f} {h:.0f}" font-family="system-ui,Helvetica,Arial,sans-serif" font-size="13">',
           "<title>Circuit diagram</title>",
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerUnits="userSpaceOnUse" markerWidth="9" markerHeight="9" '
           'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#374151"/></marker></defs>']
    for n in layout.nodes:
        if n.kind == "layer":
            out.append(f'<g{_attrs(n.attrs)}><rect x="{n.x:.1f}" y="{n.y:.1f}" width="{n.w:.1f}" height="{n.h:.1f}" '
                       f'rx="8" fill="#f8fafc" stroke="#e2e8f0"/><text x="{n.x + n.w / 2:.1f}" y="{n.y - 8:.1f}" '
                       f'text-anchor="middle" fill="#475569" font-weight="600">{_e(n.lines[0])}</text></g>')
    for e in layout.edges:
        dash = ' stroke-dasharray="6 4"' if e.dashed else ""
        marker = ' marker-end="url(#arrow)"' if e.kind == "route" else ""
        out.append(f'<g class="edge {e.kind}"{_attrs(e.attrs)}><path d="{_curve(e)}" fill="none" stroke="{e.colour}" '
                   f'stroke-width="{e.width:.1f}" stroke-opacity="0.8"{dash}{marker}/>')
        if e.label:
            lx, ly = e.label_xy
            out.append(f'<text x="{lx:.1f}" y="{ly:.1f}" font-size="12" font-weight="600" fill="{e.colour}" '
                       f'paint-order="stroke" stroke="#fff" stroke-width="3" '
                       f'data-json-path="{_e(e.label_path)}">{_e(e.label)}</text>')
        out.append("</g>")
    for n in layout.nodes:
        if n.kind == "layer":
            continue
        dash = ' stroke-dasharray="5 3"' if n.dashed else ""
        if n.kind == "port":
            cx, cy = n.x + n.w / 2, n.y + n.h / 2
            out.append(f'<g{_attrs(n.attrs)}><circle cx="{cx:.1f}" cy="{cy:.1f}" r="{_PORT_R}" fill="#fff" '
                       f'stroke="{_ROUTE_COLOURS.get(n.lines[0], "#374151")}" stroke-width="2"/>'
                       f'<text x="{cx:.1f}" y="{cy + 4:.1f}" text-anchor="middle" font-weight="600">{_e(n.lines[0])}</text></g>')
            continue
        fill = {"input": "#fef3c7", "head": "#dbeafe", "logits": "#fee2e2"}.get(n.kind, "#fff")
        bold = ' font-weight="600"'
        text = "".join(f'<text x="{n.x + n.w / 2:.1f}" y="{n.y + 16 + k * 16:.1f}" text-anchor="middle"'
                       f'{bold if k == 0 else ""}>{_e(line)}</text>' for k, line in enumerate(n.lines))
        if len(n.lines) == 1:
            text = (f'<text x="{n.x + n.w / 2:.1f}" y="{n.y + n.h / 2 + 5:.1f}" text-anchor="middle" '
                    f'font-weight="600">{_e(n.lines[0])}</text>')
        out.append(f'<g{_attrs(n.attrs)}><rect x="{n.x:.1f}" y="{n.y:.1f}" width="{n.w:.1f}" height="{n.h:.1f}" rx="6" '
                   f'fill="{fill}" stroke="#334155" stroke-width="1.5"{dash}/>{text}</g>')
    if layout.note:
        out.append(f'<text x="10" y="{layout.height + 14:.0f}" fill="#555">{_e(layout.note)}</text>')
    out.append("</svg>")
    return "".join(out)


def circuit_figure(layout: CircuitLayout):
    """The same layout drawn with matplotlib (for the PNG export): a Figure in pixel coordinates, y down."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle, FancyBboxPatch, PathPatch
    from matplotlib.path import Path as MPath

    dpi = 100
    h = layout.height + (24 if layout.note else 0)
    fig = Figure(figsize=(layout.width / dpi, h / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, layout.width)
    ax.set_ylim(h, 0)
    ax.set_axis_off()
    fs = 9.5  # points: 13 px at 100 dpi
    for n in layout.nodes:
        if n.kind == "layer":
            ax.add_patch(FancyBboxPatch((n.x, n.y), n.w, n.h, boxstyle="round,pad=0,rounding_size=8",
                                        facecolor="#f8fafc", edgecolor="#e2e8f0"))
            ax.text(n.x + n.w / 2, n.y - 8, n.lines[0], ha="center", va="bottom", fontsize=fs, color="#475569",
                    fontweight="bold")
    for e in layout.edges:
        dx = max(40.0, (e.x2 - e.x1) / 2)
        path = MPath([(e.x1, e.y1), (e.x1 + dx, e.y1), (e.x2 - dx, e.y2), (e.x2, e.y2)],
                     [MPath.MOVETO, MPath.CURVE4, MPath.CURVE4, MPath.CURVE4])
        ax.add_patch(PathPatch(path, facecolor="none", edgecolor=e.colour, linewidth=e.width * 0.72, alpha=0.8,
                               linestyle="--" if e.dashed else "-"))
        if e.label:
            lx, ly = e.label_xy
            ax.text(lx, ly, e.label, ha="left", va="baseline", fontsize=9, color=e.colour, fontweight="bold",
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5, "alpha": 0.8})
    for n in layout.nodes:
        if n.kind == "layer":
            continue
        if n.kind == "port":
            colour = _ROUTE_COLOURS.get(n.lines[0], "#374151")
            ax.add_patch(Circle((n.x + n.w / 2, n.y + n.h / 2), _PORT_R, facecolor="white", edgecolor=colour, linewidth=2))
            ax.text(n.x + n.w / 2, n.y + n.h / 2, n.lines[0], ha="center", va="center", fontsize=fs, fontweight="bold")
            continue
        fill = {"input": "#fef3c7", "head": "#dbeafe", "logits": "#fee2e2"}.get(n.kind, "#fff")
        ax.add_patch(FancyBboxPatch((n.x, n.y), n.w, n.h, boxstyle="round,pad=0,rounding_size=6", facecolor=fill,
                                    edgecolor="#334155", linewidth=1.5, linestyle="--" if n.dashed else "-"))
        for k, line in enumerate(n.lines):
            y = n.y + n.h / 2 if len(n.lines) == 1 else n.y + 12 + k * 16
            ax.text(n.x + n.w / 2, y, line, ha="center", va="center", fontsize=fs,
                    fontweight="bold" if k == 0 else "normal")
    if layout.note:
        ax.text(10, layout.height + 10, layout.note, ha="left", va="center", fontsize=fs, color="#555")
    return fig
