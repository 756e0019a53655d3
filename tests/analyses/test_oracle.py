"""analyses/oracle_heads.py: the head-role oracle stays independent of the labeller, its patching is
exact, and on the shipped default model it finds the roles of shared/spec/head_roles.md."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from tests.scripts import load_script

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "analyses" / "oracle_heads.py"
ALLOWED = {"anchor_interp.tasks", "anchor_interp.models.checkpoint", "anchor_interp.models.zoo"}


@pytest.fixture(scope="module")
def oracle():
    return load_script("analyses/oracle_heads.py", "oracle_heads_under_test")


def _anchor_imports(tree) -> list[str]:
    """Every anchor_interp module the script imports (anywhere, also inside functions)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "anchor_interp"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "anchor_interp":
            if node.module in ("anchor_interp", "anchor_interp.models"):  # from pkg import submodule
                found += [f"{node.module}.{a.name}" for a in node.names]
            else:
                found.append(node.module)
    return found


def test_oracle_imports_only_tasks_and_model_loading():
    tree = ast.parse(SCRIPT.read_text())
    imports = _anchor_imports(tree)
    assert imports, "the extraction found no anchor_interp import at all"
    bad = [m for m in imports if m not in ALLOWED]
    assert not bad, f"oracle_heads.py imports {bad}; only {sorted(ALLOWED)} are allowed"
    # no import by string, which the ast check would not see
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert not names & {"import_module", "__import__"}


def test_import_check_catches_a_labeller_import():
    tree = ast.parse("def f():\n    from anchor_interp.labels import rule\n    import anchor_interp.patching\n"
                     "from anchor_interp.models import zoo\nfrom anchor_interp import heads\n")
    assert sorted(_anchor_imports(tree)) == ["anchor_interp.heads", "anchor_interp.labels", "anchor_interp.models.zoo",
                                             "anchor_interp.patching"]


def _pair_run(oracle, model, task, kind="key_value", n=48):
    pair = oracle.make_pair(model, task, kind, n, 0, "test", 0)
    return oracle.PairRun(model, pair)


def test_term_decomposition_and_patches_are_exact(oracle, default_model):
    model, task = default_model
    run = _pair_run(oracle, model, task)
    masks = run.source_masks()
    with torch.no_grad():
        # all terms: z_clean - z_corrupt; offsets partition the terms
        mc, mx = masks["all"]
        full = run.dz(0, 1, mc, mx)
        z_c = run.cc["blocks.0.attn.hook_z"][:, :, 1]
        z_x = run.cx["blocks.0.attn.hook_z"][:, :, 1]
        assert torch.allclose(full, z_c - z_x, atol=1e-5)
        parts = sum(run.dz(0, 1, *masks[f"offset{k:+d}"]) for k in range(-8, 9))
        assert torch.allclose(parts, full, atol=1e-5)
        # slots partition the terms too (each run's own slot positions)
        slots = sum(run.dz(0, 1, *masks[f"{s}@all"]) for s in ("anchor", "key", "other"))
        assert torch.allclose(slots, full, atol=1e-5)
        # the engine's batched patch of one head's z == a plain TransformerLens run on the corrupt tokens
        patches = [oracle.Patch(start=0, hooks=[]),
                   oracle.Patch(start=0, hooks=[("blocks.0.attn.hook_z", oracle._add_head(1, full))])]
        out = run.run(patches)

        def put_clean(act, hook):
            act = act.clone()
            act[:, :, 1] = z_c
            return act

        logits = model.run_with_hooks(run.pair.corrupt.tokens, fwd_hooks=[("blocks.0.attn.hook_z", put_clean)])
    assert torch.allclose(out[0], run.m_corrupt, atol=1e-4)
    assert torch.allclose(out[1], run.metric(logits[:, -1]), atol=1e-4)


def test_receiver_recompute_matches_the_model(oracle, default_model):
    """A zero change into any receiver leaves the corrupt run unchanged: the script's own q/k/v
    recomputation equals TransformerLens'. And for a last-layer head the logits route is the whole
    effect (its only path)."""
    model, task = default_model
    run = _pair_run(oracle, model, task)
    zero = torch.zeros(run.n, run.T, model.cfg.d_model)
    with torch.no_grad():
        patches = [oracle.route_patch(model, run, rec, zero) for rec in oracle.receivers(model, 0)]
        out = run.run(patches)
    assert torch.allclose(out, run.m_corrupt.expand_as(out), atol=1e-4)
    res = oracle.analyse_pair(model, run)
    for h in range(4):
        assert res[(1, h)]["all"]["logits"] == pytest.approx(res[(1, h)]["all"]["total"], abs=1e-4)


def test_default_model_roles(oracle, default_model):
    """head_roles.md: layer 0 has flag-carrying shift(-1) heads routed into L1 keys, the others are key
    copies used through L1 values; every layer-1 head broadcasts the key to the last row."""
    model, task = default_model
    result = oracle.run_oracle(model, task, n_samples=128, seed=0)
    assert result["settings"]["kinds"] == ["key_value", "anchor_position"]
    heads = {h["head"]: h for h in result["heads"]}
    l0 = [heads[f"L0H{i}"] for i in range(4)]
    shifts = [h for h in l0 if h["label"] == "shift"]
    copies = [h for h in l0 if h["label"] == "neither" and h["kind"] == "copy"]
    assert 1 <= len(shifts) <= 2 and len(shifts) + len(copies) == 4
    for h in shifts:
        top = next(r for r in h["roles"] if r["role"] == "shift")
        assert (top["role"], top["offset"], top["counterfactual"]) == ("shift", -1, "anchor_position")
        assert top["best_route"][0] == "L1.k" and top["route"]["L1 keys"] >= oracle.ROUTE_MIN
    for h in copies:
        top = h["roles"][0]
        assert top["counterfactual"] == "key_value" and top["best_route"][0] == "L1.v"
        # a key copy carries no position information: ~0 under the single-factor anchor move
        assert h["full_head"]["anchor_position"]["total"] < oracle.EFFECT_MIN
    for i in range(4):
        h = heads[f"L1H{i}"]
        assert h["label"] == "broadcast" and h["roles"][0]["slot"] == "key"
        assert h["roles"][0]["best_route"][0] == "logits"
    text = oracle.format_table(result)
    assert "shift(-1)" in text and "L1 keys" in text and "broadcast(key)" in text


def test_label_is_the_largest_operation_and_a_copy_only_without_one(oracle):
    """The oracle's label rule (docs/validation.md): shift / broadcast before copy, largest effect within."""
    copy = {"role": "copy", "offset": 0, "effect": 0.30, "counterfactual": "key_value"}
    s1 = {"role": "shift", "offset": -1, "effect": 0.15, "counterfactual": "anchor_position"}
    s2 = {"role": "shift", "offset": -2, "effect": 0.20, "counterfactual": "anchor_identity"}
    bc = {"role": "broadcast", "slot": "key", "effect": 0.25, "counterfactual": "key_value"}
    got = oracle.label_of([copy, s2, s1])
    assert (got["label"], got["kind"], got["effect"], got["offsets"]) == ("shift", None, 0.20, [-2, -1])
    assert oracle.label_of([copy, bc, s2])["label"] == "broadcast"
    assert (oracle.label_of([copy])["label"], oracle.label_of([copy])["kind"]) == ("neither", "copy")
    assert oracle.label_of([]) == {"label": "neither", "kind": None, "effect": 0.0, "counterfactual": None,
                                   "offsets": []}


def test_candidate_tests_and_edges(oracle):
    """A shift needs effect, spread, away and route; one that fails only its away test by less than NEAR is a
    near miss, and a near-miss shift on a copy head puts the oracle's own label at an edge (the three
    composition / multi-anchor copies of docs/validation.md: away 0.091-0.0999)."""
    from types import SimpleNamespace

    run = SimpleNamespace(slots_c={"key": torch.tensor([3, 5, 7])}, T=10)
    src = {"total": 0.12, "share": 0.2, "L1.v": 0.12}
    res = {"offset-1": src, "offset-1@nonlast": {"total": 0.0999}}
    role, extra, tests = oracle._candidate("offset-1", src, res, run, True, 0.12)
    assert role == "shift" and extra["offset"] == -1
    assert [(t[0], t[3]) for t in tests] == [("effect", True), ("spread", True), ("away", False), ("route", True)]
    res["offset-1@nonlast"]["total"] = 0.05  # clearly fails: no near miss
    assert not oracle._candidate("offset-1", src, res, run, True, 0.12)[2][2][3]
    bc = oracle._candidate("key@last", {"total": 0.3, "share": 0.6, "L1.v": 0.3}, res, run, True, 0.3)
    assert bc[0] == "broadcast" and ("spread", 0.6, oracle.CONCENTRATION_MAX, False) in bc[2]
    copy = {"role": "copy", "offset": 0, "effect": 0.20, "counterfactual": "key_value", "edge": []}
    near_shift = {"role": "shift", "offset": -1, "effect": 0.12, "failed": ["away"]}
    assert oracle.at_edge([copy], []) == []
    assert oracle.at_edge([copy], [near_shift]) == [f"shift(-1) fails away by < {oracle.NEAR}"]
    shift = {"role": "shift", "offset": -1, "effect": 0.30, "counterfactual": "anchor_position", "edge": ["route"]}
    assert oracle.at_edge([shift, copy], [dict(near_shift, offset=-2)]) == ["shift(-1) route"]


def test_mechanism_model_same_seed_same_numbers(oracle, mechanism_model):
    model, task = mechanism_model
    a = oracle.run_oracle(model, task, n_samples=64, seed=3, kinds=["key_value"])
    b = oracle.run_oracle(model, task, n_samples=64, seed=3, kinds=["key_value"])
    a.pop("runtime_s"), b.pop("runtime_s")
    assert oracle._json_safe(a) == oracle._json_safe(b)  # NaN (an empty source's share) -> None
    heads = {h["head"]: h for h in a["heads"]}
    # the layer-0 head moves the key into the anchor slot (offset +1), used through layer-1 values
    shift = [r for r in heads["L0H0"]["roles"] if r["role"] == "shift" and r["offset"] == 1]
    assert shift and shift[0]["best_route"][0] == "L1H0.v"


def test_multi_anchor_reports_which_anchor(oracle):
    """Toy size, untrained model: the composition code path (anchor_identity kinds, anchor2 slot)."""
    from anchor_interp.models import make_model
    from anchor_interp.tasks import make_task

    task = make_task("composition")
    model = make_model("small", task, seed=0)
    result = oracle.run_oracle(model, task, n_samples=64, seed=0, all_rows=True,
                               kinds=["key_value", "anchor_identity", "anchor_identity_2"])
    assert set(result["counterfactuals"]) == {"key_value", "anchor_identity", "anchor_identity_2"}
    for h in result["heads"]:
        assert set(h["reads"]) == {"anchor", "anchor2"} and "reads_anchor" in h
    assert "anchor2@last" in result["sources"]["key_value"]["L0H0"]
    assert "[reads" in oracle.format_table(result)


def test_cli_writes_json_and_rejects_bad_input(oracle, tmp_path, capsys):
    out = tmp_path / "oracle.json"
    assert oracle.main(["--zoo", "mechanism", "--n-samples", "48", "--kinds", "key_value", "--json", str(out),
                        "--quiet"]) == 0
    data = json.loads(out.read_text())
    assert [h["head"] for h in data["heads"]] == ["L0H0", "L1H0"] and data["source"] == "zoo:mechanism"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["oracle.json"]  # no temp file left
    capsys.readouterr()
    for argv in (["--zoo", "nope"], ["--checkpoint", str(tmp_path / "missing")], ["--zoo", "default", "--n-samples", "0"],
                 ["--zoo", "default", "--json", str(tmp_path / "no" / "x.json")],
                 ["--zoo", "default", "--kinds", "anchor_identity"]):
        assert oracle.main(argv + ["--quiet"]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, err


def test_model_that_does_not_solve_is_refused(oracle):
    from anchor_interp.models import make_model
    from anchor_interp.tasks import make_task

    task = make_task("identity")
    with pytest.raises(oracle.OracleError, match="does not solve"):
        oracle.run_oracle(make_model("small", task, seed=1), task, n_samples=64)
