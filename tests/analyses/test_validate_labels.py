"""analyses/validate_labels.py: the labeller-vs-oracle bookkeeping (precision, recall, the issue-12 checks)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def vl():
    return load_script("analyses/validate_labels.py", "validate_labels")


def _head(name, key, oracle_key, oracle_effect, *, borderline=False, roles=None, again=None, reads=None,
          oracle_reads=None):
    label = key.split("(")[0].split("/")[0]
    olabel = oracle_key.split("(")[0].split("/")[0]
    return {"head": name, "key": key, "label": label, "kind": key.split("/")[1] if "/" in key else None,
            "borderline": borderline, "again": again or [], "reads": reads, "oracle_reads": oracle_reads,
            "oracle_key": oracle_key, "oracle_label": olabel, "oracle_effect": oracle_effect,
            "oracle_kind": oracle_key.split("/")[1] if "/" in oracle_key else None,
            "oracle_roles": roles if roles is not None else {oracle_key: oracle_effect}}


def test_summary_counts_agreement_and_the_issue_checks(vl):
    heads = [
        _head("L0H0", "neither/copy", "neither/copy", 0.27, again=["neither/copy"] * 7),
        _head("L0H1", "shift(-1)", "shift(-1)", 0.25, again=["shift(-1)"] * 7),
        _head("L0H2", "shift(-1)", "neither/copy", 0.15, roles={"copy": 0.15}),  # a false shift, not borderline
        _head("L0H3", "neither/other", "shift(-1)", 0.12, borderline=True),  # missed, but borderline
        _head("L1H0", "broadcast", "broadcast", 0.30, again=["broadcast"] * 6 + ["neither/other"]),
        _head("L1H1", "broadcast", "broadcast", 0.35, reads="anchor", oracle_reads="anchor+anchor2"),
    ]
    s = vl.summarise([{"name": "m", "heads": heads, "competence": {"solved": True}}])
    assert s["labels"]["shift"]["all"] == {"tp": 1, "fp": 1, "fn": 1, "precision": 0.5, "recall": 0.5}
    assert s["labels"]["shift"]["strong"]["precision"] == 1.0 and s["labels"]["shift"]["strong"]["recall"] == 1.0
    assert s["labels"]["broadcast"]["all"]["precision"] == 1.0
    assert s["role_below_threshold_not_borderline"] == ["m:L0H2"]
    assert s["borderline_fraction"] == pytest.approx(1 / 6)
    assert s["copy"] == {"oracle_copies": 2, "labelled_neither_copy": 1, "labelled_copy_but_oracle_not": 0}
    assert s["reads"]["agree"] == 0 and len(s["reads"]["disagree"]) == 1
    assert s["stability"]["non_borderline_heads"] == 3
    assert s["stability"]["same_label_on_every_batch_and_size"] == 2
    assert len(s["mismatches"]) == 2


def test_stability_counts_confirmations_when_they_were_recorded(vl):
    """Since 2026-12-01 another labelling confirms a shift(k) label when a shift from k passes on it, so a
    head whose largest offset moves between two passing offsets is stable; older rows compare keys."""
    h = _head("L0H0", "shift(-2)", "shift(-2)", 0.3, again=["shift(-1)"] * 7)
    assert vl._stable(h) is False
    assert vl._stable(dict(h, again_confirms=[True] * 7)) is True
    assert vl._stable(dict(h, again_confirms=[True] * 6 + [False])) is False


def test_models_the_oracle_could_not_judge_are_left_out(vl):
    heads = [_head("L0H0", "neither/unsolved", "neither/other", 0.0)]
    s = vl.summarise([{"name": "u", "heads": heads, "oracle_error": "does not solve",
                       "competence": {"solved": False}}])
    assert s["models_compared"] == 0 and s["unsolved_or_oracle_error"] == ["u"]
    assert s["unsolved_models_have_no_role_labels"] is True


def test_disagreements_say_whether_the_oracle_itself_was_at_an_edge(vl, tmp_path):
    """A false shift on a strong copy whose own shift the oracle rejects by less than NEAR is counted, and
    also reported apart: strong-head precision over heads whose oracle label is not at an edge."""
    import json

    heads = [_head("L0H0", "shift(-1)", "neither/copy", 0.25, borderline=True),
             _head("L0H1", "shift(-1)", "shift(-1)", 0.30)]
    (tmp_path / "m.json").write_text(json.dumps({"heads": {
        "L0H0": {"at_edge": ["shift(-1) fails away by < 0.02"]}, "L0H1": {"at_edge": []}}}))
    models = [{"name": "m", "heads": heads, "competence": {"solved": True}}]
    vl.attach_oracle_edges(models, tmp_path)
    s = vl.summarise(models)
    assert s["labels"]["shift"]["strong"]["precision"] == 0.5
    assert s["labels"]["shift"]["strong_oracle_clear"]["precision"] == 1.0
    assert s["disagreements"] == {"heads": 1, "labeller_borderline": 1, "oracle_at_edge": 1,
                                  "neither_borderline_nor_edge": 0}
    assert "oracle at an edge: shift(-1) fails away" in s["mismatches"][0]
    vl.attach_oracle_edges(models, tmp_path / "missing")  # no cache: None, not an edge
    assert heads[0]["oracle_at_edge"] is None


def test_stability_against_sure_labellings_skips_those_unsure_of_the_head(vl):
    """A labelling that is itself unsure of the head (borderline, or its label role at an edge) does not
    count against it in the second stability figure; one that is sure does."""
    from types import SimpleNamespace

    h = dict(_head("L0H0", "shift(-2)", "shift(-2)", 0.3, again=["shift(-1)"] * 3),
             again_confirms=[True, False, True], again_unsure=[False, True, False])
    assert vl._stable(h) is False and vl._stable(h, sure_only=True) is True
    assert vl._stable(dict(h, again_unsure=[False, False, True]), sure_only=True) is False
    main = {"name": "shift(-2)"}
    edge = SimpleNamespace(borderline=False, roles=[{"name": "shift(-2)", "borderline": True}])
    sure = SimpleNamespace(borderline=False, roles=[{"name": "shift(-2)", "borderline": False},
                                                   {"name": "shift(-1)", "borderline": True}])
    assert vl._unsure(edge, main) is True and vl._unsure(sure, main) is False
    assert vl._unsure(SimpleNamespace(borderline=True, roles=[]), None) is True


def test_edge_heads_are_judged_again_by_the_oracle_at_2048_rows(vl, tmp_path):
    """Only heads whose 512-row oracle label is at an edge take the 2048-row oracle's label, and only where
    that oracle was run; the count says which oracle labels changed."""
    import json

    heads = [dict(_head("L0H0", "shift(-1)", "neither/copy", 0.2, borderline=True), oracle_at_edge=["away"]),
             dict(_head("L0H1", "neither/copy", "neither/copy", 0.3), oracle_at_edge=[])]
    (tmp_path / "m.json").write_text(json.dumps({"heads": [  # as oracle_heads.py --json writes it
        {"head": "L0H0", "label": "shift", "offsets": [-1, -2], "effect": 0.13, "kind": None, "at_edge": [],
         "roles": [{"role": "shift", "offset": -1, "effect": 0.13}]},
        {"head": "L0H1", "label": "broadcast", "effect": 0.5, "kind": None, "at_edge": [], "roles": []}]}))
    models = [{"name": "m", "heads": heads, "competence": {"solved": True}},
              {"name": "n", "heads": [dict(heads[0])], "competence": {"solved": True}}]
    out, count = vl.remeasure_edges(models, tmp_path)
    assert count == {"edge_heads": 2, "remeasured": 1, "oracle_label_changed": ["m:L0H0 neither/copy -> shift(-1)"]}
    assert out[0]["heads"][0]["oracle_key"] == "shift(-1)" and out[0]["heads"][0]["oracle_rows"] == 2048
    assert out[0]["heads"][1]["oracle_key"] == "neither/copy"  # not at an edge: kept
    assert out[1]["heads"][0]["oracle_key"] == "neither/copy"  # no 2048-row oracle for this model
    assert heads[0]["oracle_key"] == "neither/copy"  # the input rows are not changed
    assert vl.summarise(out)["labels"]["shift"]["all"]["precision"] == 0.5


def test_read_disagreements_say_whether_either_side_was_unsure(vl):
    """Which anchors a head reads: each disagreement says whether the labeller marked the reading borderline
    and whether the oracle's anchor effects sit within NEAR of its threshold; only the rest count as plain."""
    heads = [
        dict(_head("L0H0", "shift(-1)", "shift(-1)", 0.3, reads="anchor2", oracle_reads="-"), reads_borderline=True,
             oracle_reads_at_edge=True),
        dict(_head("L0H1", "shift(-1)", "shift(-1)", 0.3, reads="anchor", oracle_reads="anchor2"),
             reads_borderline=False, oracle_reads_at_edge=False),
        dict(_head("L0H2", "shift(-1)", "shift(-1)", 0.3, reads="anchor+anchor2", oracle_reads="anchor2+anchor"),
             reads_borderline=True, oracle_reads_at_edge=False),
    ]
    r = vl.summarise([{"name": "m", "heads": heads, "competence": {"solved": True}}])["reads"]
    assert (r["heads"], r["agree"]) == (3, 1)
    assert r["disagree"] == ["m:L0H0 anchor2~ vs - (oracle at an edge)", "m:L0H1 anchor vs anchor2"]
    assert r["disagree_neither_borderline_nor_edge"] == 1
    assert (r["borderline"], r["borderline_where_oracle_clear"]) == (2, 1)


def test_the_oracle_reads_edge_is_recomputed_for_cached_results(vl):
    oracle = vl._oracle_module()
    assert oracle.reads_at_edge({"anchor": 0.0975, "anchor2": 0.5}) is True
    assert oracle.reads_at_edge({"anchor": 0.13, "anchor2": 0.05}) is False


def test_the_done_when_is_read_literally_and_with_the_oracles_edge_heads_set_apart(vl):
    """A strong copy that the labeller calls a borderline shift while the oracle's own label is at an edge
    fails the literal checks and is set apart in the second reading; a plain error fails both."""
    edge = dict(_head("L0H0", "shift(-1)", "neither/copy", 0.25, borderline=True),
                oracle_at_edge=["shift(-1) fails away by < 0.02"])
    sure = [_head(f"L1H{i}", "broadcast", "broadcast", 0.3, again=["broadcast"] * 7) for i in range(10)]
    s = vl.summarise([{"name": "m", "heads": [edge, *sure], "competence": {"solved": True}}])["done_when"]
    lit, dec = s["literal"], s["oracle_decisive"]
    assert lit["strong_shift_broadcast_precision_recall_1"][0] is False
    assert lit["strong_heads_not_borderline"] == [False, "10/11"]
    assert lit["oracle_copies_labelled_copy"] == [False, "0/1"]
    assert dec["heads"] == 10 and dec["strong_shift_broadcast_precision_recall_1"][0] is True
    assert dec["strong_heads_not_borderline"] == [True, "10/10"] and dec["oracle_copies_labelled_copy"] == [True, "0/0"]
    assert lit["borderline_at_most_10_percent"] == [True, round(1 / 11, 3)]
    wrong = _head("L0H1", "shift(-1)", "neither/copy", 0.25)  # no edge anywhere: fails both readings
    s = vl.summarise([{"name": "m", "heads": [wrong, *sure], "competence": {"solved": True}}])["done_when"]
    assert s["literal"]["oracle_copies_labelled_copy"][0] is False
    assert s["oracle_decisive"]["oracle_copies_labelled_copy"][0] is False
    assert s["oracle_decisive"]["strong_shift_broadcast_precision_recall_1"][0] is False


def test_the_reference_is_held_to_the_literal_reading_against_its_own_2048_row_labels(vl, tmp_path):
    """The oracle's 512-row labels, with "at an edge" as its borderline, judged by its 2048-row labels on
    every head of the models that have both; the labeller's rows judged by the same labels beside it."""
    import json

    def oracle_file(folder, heads):
        folder.mkdir(exist_ok=True)
        (folder / "m.json").write_text(json.dumps({"heads": heads}))

    copy = {"label": "neither", "kind": "copy", "offsets": [], "effect": 0.25, "roles": []}
    shift = {"label": "shift", "kind": None, "offsets": [-1], "effect": 0.25, "roles": []}
    oracle_file(tmp_path / "o512", {"L0H0": dict(shift, at_edge=["shift(-1) away"]), "L0H1": dict(copy, at_edge=[])})
    oracle_file(tmp_path / "o2048", [dict(copy, head="L0H0", at_edge=["shift(-1) fails away by < 0.02"]),
                                     dict(copy, head="L0H1", at_edge=[])])  # as --json writes it
    heads = [_head("L0H0", "neither/copy", "neither/copy", 0.25), _head("L0H1", "neither/copy", "neither/copy", 0.25)]
    models = [{"name": "m", "heads": heads}, {"name": "n", "heads": heads}]  # n: no oracle files
    ref = vl.reference_against_itself(models, tmp_path / "o512", tmp_path / "o2048")
    assert (ref["models"], ref["heads"]) == (1, 2)
    assert ref["oracle"]["strong_heads_not_borderline"] == [False, "1/2"]  # its own edge head is "borderline"
    assert ref["oracle"]["oracle_copies_labelled_copy"] == [False, "1/2"]
    assert ref["oracle"]["strong_shift_broadcast_precision_recall_1"][0] is False
    assert ref["disagreements"] == ["m:L0H0 512 rows shift(-1)~ 2048 rows neither/copy (0.25)"]
    assert ref["strong_at_an_edge_at_2048_rows"] == ["m:L0H0 neither/copy (0.25): shift(-1) fails away by < 0.02"]
    assert ref["labeller"]["oracle_copies_labelled_copy"] == [True, "2/2"]
    assert ref["labeller"]["strong_heads_not_borderline"] == [True, "2/2"]
    assert vl.reference_against_itself(models, tmp_path / "none", tmp_path / "o2048") is None
    summary = dict(vl.summarise([dict(models[0], competence={"solved": True})]), reference_against_itself=ref)
    vl.write_table(summary, [dict(models[0], competence={"solved": True})], tmp_path / "table.txt")
    assert "strong heads not borderline: no (1/2)" in (tmp_path / "table.txt").read_text()
