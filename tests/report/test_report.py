"""The HTML report: written from a FindHeadsResult alone, self-contained, escaped, and drawn by a real browser."""

from __future__ import annotations

import json
import os
import re
from html.parser import HTMLParser

import pytest
from fixtures_findheads import EVIL_TOKEN, synthetic_result

from anchor_interp import report
from anchor_interp.result import FindHeadsResult

# Counts painted canvases once the page has settled; appended to a COPY of the report by the test only.
PAINT_PROBE = """<script>
setTimeout(function(){
  var painted = 0, total = 0;
  document.querySelectorAll('div.cv canvas').forEach(function(c){
    total += 1;
    var d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    for (var i = 3; i < d.length; i += 4) { if (d[i] !== 0) { painted += 1; break; } }
  });
  document.body.dataset.canvasTotal = String(total);
  document.body.dataset.canvasPainted = String(painted);
}, 3000);
</script>"""


class _Dom(HTMLParser):
    """Collects what the tests check from a dumped DOM: cv containers with their canvases, table rows, tags."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, dict]] = []
        self.cv: dict[str, dict] = {}
        self.body_attrs: dict = {}
        self.head_rows: list[str] = []
        self.tags: dict[str, int] = {}
        self.text: list[str] = []
        self._cv_current: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if tag == "body":
            self.body_attrs = a
        if tag == "div" and "cv" in (a.get("class") or "").split():
            self.cv[a["id"]] = {"canvases": 0, "n_heads": int(a["data-n-heads"])}
            self._cv_current.append(a["id"])
            self.stack.append((tag, {"cv": a["id"]}))
            return
        if tag == "canvas":
            for cv in self._cv_current:
                self.cv[cv]["canvases"] += 1
        if tag == "tr" and "data-head" in a:
            self.head_rows.append(a["data-head"])
        if tag == "script":
            self._in_script = True
        if tag not in ("br", "img", "meta", "link", "input", "hr"):
            self.stack.append((tag, {}))

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False
        while self.stack:
            t, info = self.stack.pop()
            if "cv" in info:
                self._cv_current.remove(info["cv"])
            if t == tag:
                break

    def handle_data(self, data):
        if not self._in_script:
            self.text.append(data)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    res = synthetic_result()
    path = tmp_path_factory.mktemp("report") / "report.html"
    report.write_report(res, path)
    return res, path


def test_report_is_self_contained_small_and_has_bundle_once(written):
    res, path = written
    text = path.read_text(encoding="utf-8")
    assert path.stat().st_size < 3_000_000
    assert text.count(f'id="{report.BUNDLE_MARKER}"') == 1
    assert text.count("var CircuitsVis=") == 1  # the 1.3 MB bundle, inlined once for all plots
    assert len(re.findall(r'<div class="cv"', text)) == 2 * res.model["n_layers"]  # 2 examples x layers
    # nothing is fetched at view time: no external script/style/image sources, no source map
    assert not re.search(r'<(script|img|link)[^>]+(src|href)="(https?:)?//', text)
    assert "sourceMappingURL" not in text
    for name in ("head_patterns", "ablation", "history", "patching_head_out_key_swap", "patching_resid_pre_key_swap"):
        png = path.with_name(f"report_{name}.png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f'id="fig-{name}"' in text


def test_data_strings_cannot_break_out_of_scripts_or_markup(written):
    _, path = written
    text = path.read_text(encoding="utf-8")
    assert EVIL_TOKEN not in text  # neither raw in HTML nor raw in embedded JSON
    assert "&lt;/script&gt;&lt;b&gt;x&lt;/b&gt;" in text  # escaped in the token line
    assert "\\u003c/script\\u003e\\u003cb\\u003ex\\u003c/b\\u003e" in text  # escaped in the JSON props
    assert "pattern &lt;looks&gt; like shift(-1) &amp; ablation" in text
    # the embedded result JSON reads back to the same result
    m = re.search(r'<script type="application/json" id="find-heads-result">(.*?)</script>', text, re.S)
    assert FindHeadsResult.from_dict(json.loads(m.group(1))) == synthetic_result()


def test_json_for_script_escapes_every_markup_character():
    out = report.json_for_script({"a": "</script><!-- & -->", "n": float("nan")})
    assert "<" not in out and ">" not in out and "&" not in out
    assert json.loads(out) == {"a": "</script><!-- & -->", "n": None}


def test_existing_report_is_not_overwritten(tmp_path):
    path = tmp_path / "r.html"
    path.write_text("keep me")
    with pytest.raises(FileExistsError, match="overwrite"):
        report.write_report(synthetic_result(), path)
    assert path.read_text() == "keep me"
    # a PNG that would be overwritten also blocks the write, and nothing is half-written
    path.unlink()
    (tmp_path / "r_ablation.png").write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="r_ablation.png"):
        report.write_report(synthetic_result(), path)
    assert not path.exists() and (tmp_path / "r_ablation.png").read_bytes() == b"mine"
    report.write_report(synthetic_result(), path, overwrite=True)
    assert path.stat().st_size > 1_000_000
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_bad_report_inputs_raise_value_error(tmp_path):
    with pytest.raises(ValueError, match=r"\.html"):
        report.write_report(synthetic_result(), tmp_path / "r.txt")
    bad = synthetic_result().to_dict()
    bad["schema_version"] = 99
    with pytest.raises(ValueError, match="schema_version"):
        report.write_report(bad, tmp_path / "r.html")


def test_report_of_a_partial_result_renders(tmp_path):
    """No examples, patching, ablation or history: the page still renders the header and head table."""
    d = synthetic_result().to_dict()
    for key, empty in (("examples", []), ("patching", {}), ("ablation", {}), ("history", []), ("groups", [])):
        d[key] = empty
    path = report.write_report(d, tmp_path / "partial.html")
    text = path.read_text()
    assert len(re.findall(r'<tr[^>]*data-head="L\dH\d"', text)) == 8  # the head table
    assert len(re.findall(r'<div class="card[^"]*"[^>]*data-head="L\dH\d"', text)) == 8  # the evidence cards
    # the circuit diagram is drawn from the heads alone; no other figure
    assert sorted(os.listdir(tmp_path)) == ["partial.html", "partial_circuit.png", "partial_circuit.svg"]


def _browser_or_fail() -> str:
    """A headless Chromium; without one the test is skipped (the reason names the install command),
    except with ANCHOR_INTERP_REQUIRE_BROWSER=1 (as .ci/run sets), where a missing browser fails."""
    browser = report.find_browser()
    if browser is None:
        if os.environ.get("ANCHOR_INTERP_REQUIRE_BROWSER") == "1":
            pytest.fail("ANCHOR_INTERP_REQUIRE_BROWSER=1 but no Chromium: " + report.CHROMIUM_INSTALL_HINT,
                        pytrace=False)
        pytest.skip("no Chromium: " + report.CHROMIUM_INSTALL_HINT)
    return browser


@pytest.mark.browser
def test_report_draws_in_headless_chromium_offline(written, tmp_path):
    browser = _browser_or_fail()
    res, path = written
    probe = tmp_path / "probe.html"  # same folder rules do not matter: the page loads nothing
    probe.write_text(path.read_text(encoding="utf-8").replace("</body>", PAINT_PROBE + "</body>"), encoding="utf-8")
    dom_text = report.dump_dom(probe, browser=browser, budget_ms=8000)
    dom = _Dom()
    dom.feed(dom_text)
    n_layers, n_heads = res.model["n_layers"], res.model["n_heads"]
    # every attention plot was drawn by circuitsvis: one thumbnail canvas per head plus the zoomed head
    assert dom.body_attrs.get("data-cv-rendered") == str(2 * n_layers)
    assert len(dom.cv) == 2 * n_layers
    for cv_id, info in dom.cv.items():
        assert info["n_heads"] == n_heads
        assert info["canvases"] == n_heads + 1, (cv_id, info)
    total = int(dom.body_attrs["data-canvas-total"])
    assert total == 2 * n_layers * (n_heads + 1)
    assert int(dom.body_attrs["data-canvas-painted"]) == total  # each canvas has ink, not just exists
    # the label table: one row per head, ordered by layer and head
    assert dom.head_rows == [f"L{layer}H{head}" for layer in range(n_layers) for head in range(n_heads)]
    # the evil token is text on the page, and no <b> element was created from it
    assert EVIL_TOKEN in "".join(dom.text)
    assert dom.tags.get("b", 0) == 0
    # the bundle is in the page once
    assert dom_text.count("var CircuitsVis=") == 1
    # labelled heads are named in the circuitsvis head titles
    assert "L0H1 shift(-1)" in dom_text and "L1H2 broadcast" in dom_text


def test_a_missing_browser_skips_naming_the_install_command_unless_required(monkeypatch):
    monkeypatch.setenv("ANCHOR_INTERP_CHROMIUM", "/nonexistent/chromium")
    monkeypatch.delenv("ANCHOR_INTERP_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium"):
        _browser_or_fail()
    monkeypatch.setenv("ANCHOR_INTERP_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="ANCHOR_INTERP_REQUIRE_BROWSER=1 but no Chromium"):
        _browser_or_fail()
