"""Exports beside the report (issue 15 item 5), the diagram's own rules, and results without the new fields."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from fixtures_findheads import synthetic_result
from fixtures_report import planted_4x4_result  # noqa: F401

from anchor_interp import report
from anchor_interp.report.cards import json_path_value
from anchor_interp.report.diagram import circuit_layout, circuit_svg
from anchor_interp.report.html import render_html
from anchor_interp.result import FindHeadsResult

SVG = "{http://www.w3.org/2000/svg}"


def test_diagram_heatmaps_and_mean_attention_are_saved_as_svg_and_png(planted_4x4_result, tmp_path):  # noqa: F811
    path = report.write_report(planted_4x4_result, tmp_path / "r.html")
    names = {p.name for p in tmp_path.iterdir()}
    for stem in ("circuit", "mean_attention", "patching_head_out_key_value", "patching_head_out_anchor_position",
                 "patching_resid_pre_key_value"):
        png, svg = tmp_path / f"r_{stem}.png", tmp_path / f"r_{stem}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", stem
        assert ET.fromstring(svg.read_bytes()).tag == SVG + "svg", stem  # well-formed SVG
    assert set(report.report_paths(path, planted_4x4_result).values()) == {tmp_path / n for n in names}
    # the exported diagram is the inlined one: same head nodes and route edges
    root = ET.fromstring((tmp_path / "r_circuit.svg").read_bytes())
    heads = [g.get("data-head") for g in root.iter(SVG + "g") if g.get("data-node") == "head"]
    routes = [(g.get("data-head"), g.get("data-route")) for g in root.iter(SVG + "g") if g.get("data-edge") == "route"]
    assert heads == ["L0H0", "L2H0"] and sorted(routes) == [("L0H0", "L2.k"), ("L2H0", "logits")]
    page = path.read_text(encoding="utf-8")
    assert page.count('data-node="head"') == 2 and page.count("<svg") >= 1 + 16  # diagram + a heatmap per card
    # the HTML stays one file: the exported images are not linked, the PNG figures are inline data
    assert 'src="r_' not in page and "href=\"r_" not in page


def test_route_numbers_in_the_svg_carry_their_json_path():
    d = json.loads(synthetic_result().to_json())
    h = d["heads"][1]  # L0H1, shift(-1)
    h["roles"] = [{"role": "shift", "name": "shift(-1)", "counterfactual": "anchor_position", "slot": None,
                   "effect": 0.4, "passes": True, "borderline": True, "route_threshold": 0.05,
                   "routes": {"L1.q": 0.01, "L1.k": 0.3, "L1.v": 0.06, "logits": 0.0}}]
    h["borderline"] = True
    svg = circuit_svg(circuit_layout(d))
    root = ET.fromstring(svg)
    edges = [g for g in root.iter(SVG + "g") if g.get("data-edge") == "route"]
    assert sorted(g.get("data-route") for g in edges) == ["L1.k", "L1.v"]  # 0.01 and 0.0 are below 0.05
    for g in edges:
        text = g.find(SVG + "text")
        assert float(text.text) == round(json_path_value(d, text.get("data-json-path")), 2)
        assert g.find(SVG + "path").get("stroke-dasharray")  # a borderline head's edges are dashed
    node = next(g for g in root.iter(SVG + "g") if g.get("data-head") == "L0H1" and g.get("data-node") == "head")
    assert node.find(SVG + "rect").get("stroke-dasharray")


def test_no_task_diagram_has_heads_and_pattern_roles_only():
    d = json.loads(synthetic_result().to_json())
    for h in d["heads"]:
        h["notes"] = ["no task: labels come from attention patterns, weights and ablation (KL share)"]
    lay = circuit_layout(d)
    assert [n.lines for n in lay.nodes if n.kind == "head"] == [["L0H1", "shift(-1) pattern"], ["L1H2", "broadcast pattern"]]
    assert lay.edges == [] and not [n for n in lay.nodes if n.kind in ("input", "logits")]
    assert "No task" in lay.note


def test_two_anchor_roles_read_from_both_anchors():
    d = json.loads(synthetic_result().to_json())
    d["heads"][1]["roles"] = [
        {"role": "shift", "name": "shift(-2)", "counterfactual": "anchor_identity", "effect": 0.3, "passes": True,
         "route_threshold": 0.05, "routes": {"L1.k": 0.2}},
        {"role": "shift", "name": "shift(-1)", "counterfactual": "anchor_identity_2", "effect": 0.2, "passes": True,
         "route_threshold": 0.05, "routes": {"L1.k": 0.1}}]
    lay = circuit_layout(d)
    inputs = [n.lines[0] for n in lay.nodes if n.kind == "input"]
    assert inputs[:2] == ["anchor", "anchor 2"]
    froms = sorted(e.attrs["data-from"] for e in lay.edges if e.kind == "input" and e.attrs["data-head"] == "L0H1")
    assert froms == ["anchor", "anchor 2"]


def test_a_result_without_the_new_fields_loads_and_renders_not_computed(tmp_path):
    d = synthetic_result().to_dict()
    d.pop("mean_attention")
    d.pop("training")
    res = FindHeadsResult.from_dict(d)  # an older result JSON
    page = render_html(res)
    assert page.count("mean attention: not computed") == len(d["heads"])
    assert "Mean attention: not computed" in page and "not recorded" in page
    assert 'id="model-card"' in page and page.count('id="card-') == len(d["heads"])
