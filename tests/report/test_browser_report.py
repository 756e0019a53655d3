"""The report of a planted 4-layer x 4-head model, read in headless Chromium at 1400 px (issue 15).

One page load per report (module fixture): a probe script appended to a copy of the page collects, after
the page has drawn, the verdict, the diagram's nodes and edges, the cards, every number that carries a
JSON path, and the layout facts (horizontal scroll, head-button boxes, computed font sizes); the tests
check them against the result JSON. A second load: the same result marked unsolved (banner, no labels).
"""

from __future__ import annotations

import copy
import html
import json
import re

import pytest
from fixtures_report import planted_4x4_result, shown_equals  # noqa: F401
from test_report import _browser_or_fail

from anchor_interp import report
from anchor_interp.report.cards import json_path_value
from anchor_interp.report.html import verdict

WIDTH = 1400

# Appended to a COPY of the report by the test only; writes its findings as JSON into <pre id="probe">.
PROBE = """<script>
setTimeout(function(){
  var out = {};
  var de = document.documentElement;
  out.scrollWidth = de.scrollWidth; out.clientWidth = de.clientWidth; out.innerWidth = window.innerWidth;
  out.verdict = (document.getElementById('verdict') || {}).textContent || null;
  out.banner = (document.getElementById('unsolved-banner') || {}).textContent || null;
  out.nodes = Array.from(document.querySelectorAll('#circuit [data-node="head"]')).map(function(n){ return n.dataset.head; });
  out.routes = Array.from(document.querySelectorAll('#circuit [data-edge="route"]')).map(function(e){
    return [e.dataset.head, e.dataset.route]; });
  out.cards = Array.from(document.querySelectorAll('#cards div.card[data-head]')).map(function(c){ return c.dataset.head; });
  out.cardHeatmaps = document.querySelectorAll('#cards div.card svg.mean-attn').length;
  out.modelCard = (document.getElementById('model-card') || {}).textContent || null;
  out.numbers = Array.from(document.querySelectorAll('[data-json-path]')).map(function(e){
    return [e.getAttribute('data-json-path'), e.textContent]; });
  // head buttons: each circuitsvis head thumbnail (the cell holding its <h4> title), per panel
  out.buttons = Array.from(document.querySelectorAll('div.cv')).map(function(cv){
    return Array.from(cv.querySelectorAll('h4')).map(function(h){
      var r = h.parentElement.parentElement.parentElement.getBoundingClientRect();
      return [h.textContent, r.left, r.top, r.right, r.bottom]; }); });
  // every visible element with its own text: computed font size
  var small = [], checked = 0;
  var all = document.body.querySelectorAll('*');
  for (var i = 0; i < all.length; i++) {
    var el = all[i], tag = el.tagName.toLowerCase();
    if (tag === 'script' || tag === 'style' || tag === 'title' || el.closest('#probe')) continue;
    var own = Array.from(el.childNodes).some(function(n){ return n.nodeType === 3 && n.textContent.trim(); });
    if (!own || el.getClientRects().length === 0) continue;
    var cs = getComputedStyle(el);
    if (cs.visibility === 'hidden' || cs.display === 'none') continue;
    checked += 1;
    var px = parseFloat(cs.fontSize);
    if (px < 12) small.push([tag, (el.className && el.className.baseVal !== undefined ? el.className.baseVal : el.className) || '', px, el.textContent.trim().slice(0, 40)]);
  }
  out.small = small; out.textChecked = checked;
  var pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}, 2500);
</script>"""


def _probe(path, tmp_path, name: str) -> dict:
    browser = _browser_or_fail()
    probe = tmp_path / f"{name}_probe.html"
    probe.write_text(path.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = report.dump_dom(probe, browser=browser, budget_ms=8000, width=WIDTH)
    m = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert m, "the probe did not run"
    return json.loads(html.unescape(m.group(1)))


def _unsolved(d: dict) -> dict:
    """What find_heads writes for a model below the competence floor: no label, kind unsolved, a banner."""
    d = copy.deepcopy(d)
    d["competence"].update(accuracy=0.42, solved=False, allow_unsolved=False)
    for h in d["heads"]:
        h.update(label="neither", offset=None, kind="unsolved", group=None)
    return d


@pytest.fixture(scope="module")
def pages(planted_4x4_result, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("browser_report")
    d = json.loads(planted_4x4_result.to_json())
    solved = report.write_report(d, tmp / "planted.html")
    unsolved = report.write_report(_unsolved(d), tmp / "unsolved.html", figures=False)
    return {"d": d, "solved_path": solved, "solved": _probe(solved, tmp, "solved"),
            "unsolved_d": _unsolved(d), "unsolved": _probe(unsolved, tmp, "unsolved")}


def _labelled(d: dict) -> list[dict]:
    return [h for h in d["heads"] if h["label"] in ("shift", "broadcast") or h.get("kind") == "copy"]


@pytest.mark.browser
def test_verdict_follows_the_documented_template(pages):
    d, got = pages["d"], pages["solved"]
    assert d["model"]["n_layers"] == 4 and d["model"]["n_heads"] == 4
    # docs/report.md, "Verdict": per layer, shift and broadcast phrases with their route target
    expected = ("Layer 0: 1 head shift the anchor's position one place right (L0H0) into layer 2's keys. "
                "Layer 2: 1 head broadcast the key to the last position (L2H0) straight to the logits. "
                "Held-out accuracy 1.000 (unmasked); every label stable on 100% of batches.")
    assert " ".join(got["verdict"].split()) == expected == verdict(d)


@pytest.mark.browser
def test_diagram_has_a_node_per_labelled_head_and_an_edge_per_route_above_threshold(pages):
    d, got = pages["d"], pages["solved"]
    assert sorted(got["nodes"]) == sorted(h["name"] for h in _labelled(d)) == ["L0H0", "L2H0"]
    routes = [(h["name"], target) for h in _labelled(d) for r in h["roles"] if r["passes"]
              for target, v in r["routes"].items() if v is not None and v >= r["route_threshold"]]
    assert sorted(map(tuple, got["routes"])) == sorted(routes)
    assert ("L0H0", "L2.k") in routes and ("L2H0", "logits") in routes  # flag via keys, value to the logits


@pytest.mark.browser
def test_a_card_per_head_and_the_model_card(pages):
    d, got = pages["d"], pages["solved"]
    assert got["cards"] == [h["name"] for h in d["heads"]]
    assert got["cardHeatmaps"] == len(d["heads"])  # every card draws its anchor-aligned mean attention
    card = " ".join(got["modelCard"].split())
    for text in ("planted 4x4", "planted (no training)", "trained (unmasked) groups", "Data used for the analysis",
                 "n_layers 4", "n_heads 4"):
        assert text in card, text


@pytest.mark.browser
def test_every_number_with_a_json_path_equals_the_json(pages):
    for d, got in ((pages["d"], pages["solved"]), (pages["unsolved_d"], pages["unsolved"])):
        numbers = got["numbers"]
        assert len(numbers) >= 5 * len(d["heads"])
        for path, shown in numbers:
            assert shown_equals(shown.strip(), json_path_value(d, path)), (path, shown)
    paths = {p for p, _ in pages["solved"]["numbers"]}
    assert any(".routes.L2.k" in p for p in paths) and "mean_attention.rows" in paths


@pytest.mark.browser
def test_layout_at_1400px_no_horizontal_scroll_no_overlap_no_small_text(pages):
    got = pages["solved"]
    assert got["innerWidth"] == WIDTH
    assert got["scrollWidth"] <= got["clientWidth"], (got["scrollWidth"], got["clientWidth"])
    n_panels = len(pages["d"]["examples"]) * 4
    assert len(got["buttons"]) == n_panels
    for panel in got["buttons"]:
        assert len(panel) == 4
        for a in range(len(panel)):
            for b in range(a + 1, len(panel)):
                (_, l1, t1, r1, b1), (_, l2, t2, r2, b2) = panel[a], panel[b]
                overlap = min(r1, r2) - max(l1, l2) > 0.5 and min(b1, b2) - max(t1, t2) > 0.5
                assert not overlap, (panel[a], panel[b])
    assert got["textChecked"] > 200
    assert got["small"] == [], got["small"][:10]


@pytest.mark.browser
def test_unsolved_model_gets_the_banner_and_no_diagram_heads(pages):
    got = pages["unsolved"]
    assert got["banner"] and got["banner"].startswith("This model does not solve the task")
    assert got["verdict"].startswith("The model does not solve the task: held-out accuracy 0.420 (unmasked)")
    assert got["nodes"] == [] and got["routes"] == []
    assert got["cards"] == [h["name"] for h in pages["unsolved_d"]["heads"]]
