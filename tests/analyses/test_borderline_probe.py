"""analyses/borderline_probe.py: the rule variants re-applied to stored role evidence (pure functions)."""

from __future__ import annotations

import pytest

from tests.scripts import load_script


@pytest.fixture(scope="module")
def bp():
    return load_script("analyses/borderline_probe.py", "borderline_probe")


def _role(role, effect, margin=0.03, offset=None, passes=None, route=None):
    return {"role": role, "offset": offset if role != "copy" else 0, "effect": effect, "margin": margin,
            "passes": effect >= 0.1 if passes is None else passes, "routes": {"L1.v": effect if route is None else route}}


def test_argmax_marks_near_equal_roles_and_order_prefers_the_shift(bp):
    roles = [_role("copy", 0.21), _role("shift", 0.20, offset=-1)]
    assert bp.decide(roles, "argmax") == ("neither/copy", True)
    assert bp.decide(roles, "stat") == ("shift(-1)", False)  # tied within the margin: the order decides
    assert bp.decide(roles, "order") == ("shift(-1)", False)
    far = [_role("copy", 0.40), _role("shift", 0.20, offset=-1)]
    assert bp.decide(far, "stat") == ("neither/copy", False)  # not tied: the larger effect decides
    assert bp.decide(far, "fixed:0.1")[0] == "neither/copy"
    assert bp.decide(far, "fixed:0.21") == ("shift(-1)", True)  # the difference (0.20) is within a margin of the tie


def test_a_fold_rejects_a_label_only_beyond_its_margins(bp):
    assert bp.consistent("shift(-1)", [_role("shift", 0.09, margin=0.05, offset=-1)], "argmax")
    assert not bp.consistent("shift(-1)", [_role("shift", 0.03, margin=0.05, offset=-1)], "argmax")
    assert not bp.consistent("shift(-1)", [_role("copy", 0.15)], "argmax")  # the role is missing
    beaten = [_role("copy", 0.40, margin=0.05), _role("shift", 0.15, margin=0.05, offset=-1)]
    assert not bp.consistent("shift(-1)", beaten, "argmax")
    assert bp.consistent("shift(-1)", beaten, "order")
    assert bp.consistent("neither/other", [_role("copy", 0.12, margin=0.05)], "argmax")
    assert not bp.consistent("neither/other", [_role("copy", 0.30, margin=0.05)], "argmax")


def test_simulate_without_dumps_is_one_line_and_exit_2(bp, tmp_path, capsys):
    assert bp.main(["simulate", "--out", str(tmp_path), "--seeds", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no dumps") and err.count("\n") == 1
