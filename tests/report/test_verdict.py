"""The verdict sentence at the top of the report, and notes shown once (issue 15, items 1 and 6)."""

from __future__ import annotations

import copy
import json
import re

import pytest
from fixtures_findheads import synthetic_result

from anchor_interp.report.html import _common_notes, render_html, verdict
from anchor_interp.result import FindHeadsResult


def _synthetic() -> dict:
    d = synthetic_result().to_dict()
    d["accuracy"].update(overall=1.0, n_masked=0)
    d["competence"] = {"accuracy": 1.0, "floor": 0.9, "solved": True, "allow_unsolved": False}
    for h in d["heads"]:
        h["stability"] = 1.0
    return d


def _verdict_numbers(page: str, d: dict) -> list[tuple[str, str]]:
    block = re.search(r'<p id="verdict"[^>]*>(.*?)</p>', page, re.S).group(1)
    found = re.findall(r'data-json-path="([^"]+)">([^<]*)<', block)
    for path, shown in found:
        value = d
        for part in path.split("."):
            value = value[int(part)] if isinstance(value, list) else value[part]
        if path.endswith("stability"):
            assert shown == f"{value:.0%}", path
        else:
            assert float(shown) == pytest.approx(value, abs=5e-4), path
    return found


@pytest.fixture(scope="module")
def default_dict(default_model):
    from anchor_interp.find_heads import find_heads

    model, task = default_model
    res = find_heads(model, task, seed=0, n_samples=256, source="zoo:default", preset="small", command="test")
    return json.loads(res.to_json())


def test_verdict_on_the_default_model(default_dict):
    text = verdict(default_dict)
    assert text.startswith("Layer 0: 2 heads shift the anchor's position one place right (L0H1, L0H3) into layer 1's keys")
    assert "2 heads copy the key (L0H0, L0H2)" in text
    assert "Layer 1: 4 heads broadcast the key to the last position (L1H0, L1H1, L1H2, L1H3)" in text
    assert "Held-out accuracy 1.000 (unmasked)" in text
    page = render_html(FindHeadsResult.from_dict(default_dict))
    paths = dict(_verdict_numbers(page, default_dict))
    assert "accuracy.overall" in paths and any(p.endswith("stability") for p in paths)
    assert page.index('id="verdict"') < page.index('id="header"')


def test_verdict_unsolved_names_no_labels():
    d = _synthetic()
    d["competence"] = {"accuracy": 0.31, "floor": 0.9, "solved": False, "allow_unsolved": False}
    for h in d["heads"]:
        h.update(label="neither", offset=None)
    text = verdict(d)
    assert text == ("The model does not solve the task: held-out accuracy 0.310 (unmasked) is below the floor 0.900. "
                    "No head is labelled.")
    page = render_html(FindHeadsResult.from_dict(d))
    assert 'id="unsolved-banner"' in page
    assert dict(_verdict_numbers(page, d)) == {"competence.accuracy": "0.310", "competence.floor": "0.900"}


def test_verdict_unsolved_with_allow_unsolved_still_names_labels():
    d = _synthetic()
    d["competence"] = {"accuracy": 0.5, "floor": 0.9, "solved": False, "allow_unsolved": True}
    text = verdict(d)
    assert text.startswith("The model does not solve the task")
    assert "Layer 0: 1 head shift the anchor's position one place right (L0H1)" in text


def test_verdict_no_task():
    d = _synthetic()
    for h in d["heads"]:
        h["notes"] = ["no task: labels come from attention patterns, weights and ablation (KL share) on the given tokens"]
    text = verdict(d)
    assert "No task" in text and "Held-out accuracy" not in text
    assert "Layer 1: 1 head broadcast to the last position (L1H2)" in text


def test_verdict_borderline_and_multi_offset_shift():
    d = _synthetic()
    h2 = d["heads"][2]
    h2.update(label="shift", offset=-2, kind=None, borderline=True, stability=0.6)
    d["heads"][3].update(label="shift", offset=1, kind=None)
    text = verdict(d)
    assert ("Layer 0: 1 head shift the anchor's position one place right (L0H1); "
            "1 head shift the anchor's position one place left (L0H3); "
            "1 head shift the anchor's position 2 places right (L0H2 borderline).") in text
    assert "labels stable on at least 60% of batches (least stable: L0H2)." in text
    page = render_html(FindHeadsResult.from_dict(d))
    assert ("heads.2.stability", "60%") in _verdict_numbers(page, d)


def test_common_notes_shown_once():
    d = _synthetic()
    common = "counterfactual rows: anchor_position 256, key_value 256"
    for h in d["heads"]:
        h["notes"] = [common] + list(h["notes"])
    d["heads"][1]["notes"].append("only on L0H1")
    assert _common_notes(d) == [common]
    page = render_html(FindHeadsResult.from_dict(copy.deepcopy(d)))
    visible = page.split('id="find-heads-result"')[0]  # the embedded JSON holds every note, the page once
    assert visible.count(common) == 1
    assert visible.index('id="common-notes"') < visible.index('id="head-table"')
    assert visible.count("only on L0H1") == 1
    assert "pattern &lt;looks&gt; like shift(-1)" in visible  # per-head notes stay in their row
