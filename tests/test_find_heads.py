"""find_heads and FindHeadsResult: schema, JSON round trip, evidence on the shipped default model, bad input."""

from __future__ import annotations

import json
import math
import os

import pytest
from fixtures_findheads import synthetic_result

from anchor_interp.find_heads import SCHEMA_VERSION, FindHeadsResult, find_heads
from anchor_interp.names import parse_head_name


def test_result_round_trips_through_json(tmp_path):
    res = synthetic_result()
    d = res.to_dict()
    assert list(d)[0] == "schema_version" and d["schema_version"] == SCHEMA_VERSION == 1
    for key in ("package_version", "command", "seed", "model", "task", "accuracy", "heads", "groups", "patching",
                "ablation", "examples", "history"):
        assert key in d
    path = res.save_json(tmp_path / "r.json")
    assert FindHeadsResult.load_json(path) == res
    assert not [p for p in os.listdir(tmp_path) if p != "r.json"]  # no temp file left behind


def test_non_finite_numbers_become_null_and_overwrite_is_refused(tmp_path):
    res = synthetic_result()
    res.accuracy["overall"] = math.nan
    res.heads[0]["scores"]["shift"] = math.inf
    path = res.save_json(tmp_path / "r.json")
    d = json.loads(path.read_text())  # strict JSON: no NaN / Infinity tokens
    assert d["accuracy"]["overall"] is None and d["heads"][0]["scores"]["shift"] is None
    with pytest.raises(FileExistsError, match="overwrite"):
        res.save_json(path)
    res.save_json(path, overwrite=True)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda d: d.update(schema_version=2), "schema_version"),
        (lambda d: d.pop("schema_version"), "schema_version"),
        (lambda d: d.pop("heads"), "heads"),
    ],
)
def test_from_dict_rejects_other_versions_and_missing_keys(change, match, no_shape_checks):
    d = synthetic_result().to_dict()
    change(d)
    with pytest.raises(ValueError, match=match):
        FindHeadsResult.from_dict(d)
    with pytest.raises(ValueError, match="dict"):
        FindHeadsResult.from_dict([d])


@pytest.fixture(scope="module")
def default_result(default_model):  # default_model: (model, task) from tests/conftest.py
    model, task = default_model
    return find_heads(model, task, seed=0, n_samples=256, source="zoo:default", preset="small", command="test")


def test_find_heads_on_the_default_model(default_result, default_model):
    model, task = default_model
    res = default_result
    d = json.loads(res.to_json())  # the whole result is strict JSON
    L, H, T = model.cfg.n_layers, model.cfg.n_heads, task.seq_len
    assert [(h["layer"], h["head"]) for h in d["heads"]] == [(la, he) for la in range(L) for he in range(H)]
    assert {h["label"] for h in d["heads"]} <= {"shift", "broadcast", "neither"}
    assert d["model"]["n_params"] == sum(p.numel() for p in model.parameters())
    assert d["model"]["causal"] is True and d["model"]["source"] == "zoo:default"
    assert d["task"] == task.to_dict()
    acc = d["accuracy"]
    assert acc["n"] == 256 and acc["overall"] >= 0.95  # the shipped model solves its held-out split
    assert sum(g["n"] for g in acc["groups"]) == 256
    # examples: one pattern per layer, [head][dest_pos][src_pos], rows sum to 1, causal mask respected
    assert len(d["examples"]) == 3
    assert len({ex["anchor_pos"] for ex in d["examples"]}) == 3  # different anchor positions
    for ex in d["examples"]:
        assert len(ex["token_labels"]) == T and ex["token_labels"][ex["anchor_pos"]].startswith("A:")
        assert sorted(ex["patterns"]) == [f"blocks.{la}.attn.hook_pattern" for la in range(L)]
        for pat in ex["patterns"].values():
            assert len(pat) == H
            for head in pat:
                for r, row in enumerate(head):
                    assert abs(sum(row) - 1) < 1e-2 and all(v == 0 for v in row[r + 1:])


def test_patching_heatmaps_show_where_the_key_lives(default_result):
    p = default_result.patching
    assert set(p) == {"resid_pre/key_value", "head_out/key_value", "head_out/anchor_position"}
    assert p["head_out/key_value"]["axes"] == ["layer", "head"]
    # the heatmaps are the labels' own whole-head effects: one number per head, never two
    for kind in ("key_value", "anchor_position"):
        values = p[f"head_out/{kind}"]["values"]
        for h in default_result.heads:
            assert values[h["layer"]][h["head"]] == pytest.approx(h["scores"][f"patch_{kind}"], abs=1e-6) or (
                h["scores"][f"patch_{kind}"] in (0.0, 1.0))  # scores are clipped to [0, 1]
    resid = p["resid_pre/key_value"]
    assert resid["axes"] == ["layer", "pos"] and resid["normalised"]
    # all rows share one anchor position, so patching the clean key into layer 0 at the key's position
    # restores the clean answer, and patching any other position at layer 0 does (almost) nothing
    labels = resid["extra"]["pos_labels"]
    key = next(i for i, s in enumerate(labels) if s.endswith(":K"))
    row0 = resid["values"][0]
    assert row0[key] > 0.9
    assert max(abs(v) for i, v in enumerate(row0) if i != key) < 0.1


def test_ablation_checks_are_consistent_with_the_labels(default_result):
    a = default_result.ablation
    labelled = [h["name"] for h in default_result.heads if h["label"] in ("shift", "broadcast")]
    assert a["method"] == "mean" and 0.95 <= a["baseline"]["accuracy"] <= 1
    if not labelled:
        assert a["checks"] == [] and "no head" in a["note"]
        return
    circuit, rest = a["checks"]
    # the circuit: the labelled heads plus the copy heads whose group the model needs
    needed_copies = [name for g in default_result.groups if g["name"].startswith("copy") and g["joint_effect"] >= 0.1
                     for name in g["heads"]]
    assert circuit["heads"] == a["circuit"] == sorted(labelled + needed_copies, key=parse_head_name)
    assert sorted(circuit["heads"] + rest["heads"]) == sorted(h["name"] for h in default_result.heads)
    assert circuit["passed"] == (circuit["accuracy"] <= 0.1)
    assert rest["passed"] == (rest["accuracy"] / a["baseline"]["accuracy"] >= 0.95)


def test_same_seed_same_result(default_model):
    model, task = default_model
    runs = [find_heads(model, task, seed=3, n_samples=64, n_examples=1).to_dict() for _ in range(2)]
    for r in runs:
        r.pop("timings")
    assert runs[0] == runs[1]
    other = find_heads(model, task, seed=4, n_samples=64, n_examples=1, patching=False, ablation=False).to_dict()
    assert other["examples"][0]["tokens"] != runs[0]["examples"][0]["tokens"]
    assert other["patching"] == {} and other["ablation"] == {}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_samples=3), "n_samples"),
        (dict(n_samples=64.0), "n_samples"),
        (dict(seed=-1), "seed"),
        (dict(n_examples=99), "n_examples"),
        (dict(ablation_method="bogus"), "ablation_method"),
    ],
)
def test_bad_options_raise_value_error(default_model, kwargs, match, no_shape_checks):
    model, task = default_model
    with pytest.raises(ValueError, match=match):
        find_heads(model, task, **{"n_samples": 64, **kwargs})


def test_model_that_does_not_fit_the_task_is_refused(default_model):
    from anchor_interp.tasks import make_task

    model, _ = default_model
    task = make_task("working_memory")  # sequence length 20 > the model's n_ctx 9
    assert task.seq_len > model.cfg.n_ctx
    with pytest.raises(ValueError, match="does not fit task"):
        find_heads(model, task, n_samples=64)


def test_report_numbers_equal_the_json(default_result):
    """Every number in the report that names its JSON path shows that JSON value (rounded as shown)."""
    import re

    from fixtures_report import shown_equals

    from anchor_interp.report.cards import json_path_value
    from anchor_interp.report.html import render_html

    page = render_html(default_result)
    d = json.loads(default_result.to_json())
    found = re.findall(r'data-json-path="([^"]+)">([^<]*)<', page)
    assert len(found) >= 3 * len(d["heads"])
    assert any(".routes.L1." in p for p, _ in found)  # route numbers (keys with a dot) are checked too
    for path, shown in found:
        assert shown_equals(shown, json_path_value(d, path)), (path, shown)



def test_unsolved_model_gets_no_labels_and_a_banner(default_model):
    """Below the competence floor (a freshly initialised model): no shift / broadcast label, a note, a banner;
    with allow_unsolved the labels are given."""
    from anchor_interp.models import make_model
    from anchor_interp.report.html import render_html

    _, task = default_model
    model = make_model("small", task, seed=5)
    res = find_heads(model, task, seed=1, n_samples=64, n_examples=0, patching=False, ablation=False)
    assert res.competence["solved"] is False and res.competence["floor"] == pytest.approx(0.9)
    assert all(h["label"] == "neither" for h in res.heads)
    assert any("does not solve the task" in n for n in res.heads[0]["notes"])
    assert 'id="unsolved-banner"' in render_html(res)
    allowed = find_heads(model, task, seed=1, n_samples=64, n_examples=0, patching=False, ablation=False,
                         allow_unsolved=True)
    assert allowed.competence["allow_unsolved"] is True and 'id="unsolved-banner"' in render_html(allowed)


def test_default_report_is_one_offline_file_under_3_mb(default_result, tmp_path):
    """The default model's report (diagram, cards, model card, figures inline) stays one offline file < 3 MB."""
    import re

    from anchor_interp.report import write_report

    path = write_report(default_result, tmp_path / "report.html")
    page = path.read_text(encoding="utf-8")
    assert path.stat().st_size < 3_000_000
    assert not re.search(r'<(script|img|link)[^>]+(src|href)="(?!data:)', page)  # nothing loaded from elsewhere
    assert 'id="circuit"' in page and 'id="model-card"' in page and len(re.findall(r'<div class="card( borderline)?" id="card-', page)) == 8


def test_streamed_in_chunks_gives_the_same_result(default_model, monkeypatch):
    """Rows streamed in chunks smaller than n (accuracy, DLA, every ablation, the competence gate) give the
    unchunked labels, effects and checks, up to float summation order."""
    from anchor_interp.scores import cache

    model, task = default_model
    kw = dict(seed=1, n_samples=96, n_examples=0, patching=False)
    said: list[str] = []
    whole = find_heads(model, task, log=said.append, **kw).to_dict()
    # progress lines say what is running; the facts (accuracy, labels) are the caller's table, printed once
    assert said and not [m for m in said if "accuracy" in m or m.startswith("labels:")], said
    monkeypatch.setattr(cache, "CHUNK_ROWS", 40)  # 3 chunks, the last one short
    chunked = find_heads(model, task, **kw).to_dict()
    assert [(h["label"], h["offset"], h["kind"]) for h in chunked["heads"]] == \
        [(h["label"], h["offset"], h["kind"]) for h in whole["heads"]]
    for a, b in zip(chunked["heads"], whole["heads"], strict=True):
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-5)  # DLA share, ablation drops, pattern scores
        assert [r["effect"] for r in a["roles"]] == [r["effect"] for r in b["roles"]]
    loss = chunked["accuracy"].pop("loss")
    assert loss == pytest.approx(whole["accuracy"].pop("loss"), rel=1e-5)
    assert chunked["accuracy"] == whole["accuracy"]
    assert chunked["competence"] == whole["competence"]
    assert [g["joint_effect"] for g in chunked["groups"]] == pytest.approx([g["joint_effect"] for g in whole["groups"]])
    for a, b in zip(chunked["ablation"]["checks"], whole["ablation"]["checks"], strict=True):
        assert (a["accuracy"], a["passed"]) == pytest.approx((b["accuracy"], b["passed"]))
        assert a["kl"] == pytest.approx(b["kl"], rel=1e-4)


def test_ablate_all_other_heads_is_not_a_pass_when_there_are_none(default_model):
    """Every head in the circuit: the second check has nothing to ablate, so it is n/a (None), not passed."""
    from types import SimpleNamespace

    from anchor_interp.find_heads import _ablation_checks

    model, task = default_model
    every = [f"L{la}H{h}" for la in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    out = _ablation_checks(model, task.sample(32, split="test", seed=0), SimpleNamespace(circuit=every),
                           method="mean", seed=0)
    rest = out["checks"][1]
    assert rest["name"] == "ablate all other heads" and rest["heads"] == []
    assert rest["passed"] is None and "no other head" in rest["note"]


def test_which_anchors_each_head_reads_is_in_the_table_and_the_report(default_result):
    """Multi-anchor tasks: the console table gets a ``reads`` column (``~``: borderline) and each evidence card
    says which anchors the head reads with the slot effects, tied to their JSON paths; one-anchor tasks
    (the default model) show no such column."""
    import re

    from fixtures_report import shown_equals

    from anchor_interp.cli.find_heads import format_head_table
    from anchor_interp.report.cards import json_path_value
    from anchor_interp.report.html import render_html

    d = json.loads(default_result.to_json())
    assert "reads" not in format_head_table(d).splitlines()[1]
    d["heads"][0].update(reads="anchor2+anchor", reads_effects={"anchor": 0.16, "anchor2": 0.31}, reads_borderline=False)
    d["heads"][1].update(reads="anchor", reads_effects={"anchor": 0.2, "anchor2": 0.09}, reads_borderline=True)
    lines = format_head_table(d).splitlines()
    assert "reads" in lines[1]
    row = {line.split()[0]: line for line in lines[2:]}
    assert " anchor2+anchor " in row["L0H0"] and " anchor~ " in row["L0H1"]
    page = render_html(FindHeadsResult.from_dict(d))
    assert "reads anchor2+anchor (slot effects anchor" in page
    assert page.count("which anchors it reads is borderline") == 1
    found = dict(re.findall(r'data-json-path="(heads\.\d\.reads_effects\.[^"]+)">([^<]*)<', page))
    assert set(found) == {f"heads.{i}.reads_effects.{s}" for i in (0, 1) for s in ("anchor", "anchor2")}
    for path, shown in found.items():
        assert shown_equals(shown, json_path_value(d, path)), (path, shown)
