"""Tests of analyses/head_study.py: the per-seed study on a hand-set circuit, and one toy seed end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]


def _load_study():
    return load_script("analyses/head_study.py", "head_study")


@pytest.fixture(scope="module")
def study():
    return _load_study()


@pytest.fixture(scope="module")
def circuit_row(study, identity_task):
    from anchor_interp.models.planted import make_identity_circuit_model

    model = make_identity_circuit_model(identity_task)
    return study.study_one(model, identity_task, seed=3, n_samples=128)


def test_hand_set_circuit_passes_every_criterion(circuit_row):
    r = circuit_row
    assert r["shift_heads"] == "L0H0"
    assert r["broadcast_heads"] == "L1H0"
    assert r["found_shift"] and r["found_broadcast"]
    assert r["acc_without_labelled"] <= 0.1
    assert r["kept_fraction"] >= 0.95
    assert r["passes"] is True
    assert r["best_shift_head"] == "L0H0" and r["best_shift_offset"] == -1
    # each of the two real heads is necessary alone; nothing labelled is idle, nothing necessary is missed
    assert r["necessary_heads"] == "L0H0 L1H0"
    assert r["necessary_missed"] == ""
    # where each head acts agrees with the labels; the self head writes where nothing reads: no key copy
    assert r["shift_carriers"] == "L0H0" and r["broadcast_carriers"] == "L1H0"
    assert r["shift_labels_match"] is True and r["broadcast_labels_match"] is True
    assert r["key_copy_heads"] == ""
    assert r["alt_circuit"] == "L0H0 L1H0" and r["alt_passes"] is True


def test_raw_masses_read_the_hand_set_patterns(circuit_row):
    m = circuit_row["raw_masses"]
    # L0H0 is a previous-token head: the key's row sits on the anchor; L0H2 attends to itself
    assert m["key_row_to_anchor"][0][0] > 0.9
    assert m["self"][0][2] > 0.9
    assert m["key_row_to_anchor"][0][2] < 0.1
    # L1H0 reads the key from every later row, the last row included
    assert m["last_row_to_key"][1][0] > 0.9
    assert 0.0 < m["key_row_to_anchor_uniform"] < 0.5
    for table in (m["key_row_to_anchor"], m["rows_to_key"], m["other_rows_to_anchor"]):
        assert all(0.0 <= v <= 1.0 for row in table for v in row)


def test_role_patching_finds_where_each_head_acts(circuit_row):
    rp = circuit_row["role_patching"]
    # the shift head's flag lives at the key's position; the broadcast head's key at the last position.
    # (The corrupt run keeps its own flag at the moved key, so layer 1 splits between two flags: ~0.4-0.5.)
    assert rp["anchor_move@key"][0][0] > 0.3
    assert rp["anchor_move@key"][0][0] > 2 * max(abs(rp["anchor_move@anchor"][0][0]), abs(rp["anchor_move@last"][0][0]))
    assert rp["key_swap@last"][1][0] > 0.5
    # the decoy (W_O = 0) and the self head restore nothing anywhere
    for cf_role, table in rp.items():
        assert abs(table[0][1]) < 0.05, cf_role
    assert circuit_row["shift_anchor_move_at_key"] == rp["anchor_move@key"][0][0]


def test_decoy_is_not_in_the_circuit(circuit_row):
    labels = dict(item.split(":", 1) for item in circuit_row["labels"].split())
    assert labels["L0H1"] == "inert"  # previous-token pattern, W_O = 0
    assert labels["L0H0"] == "shift(-1)"


def test_one_toy_seed_end_to_end(study, tmp_path):
    out = tmp_path / "hs"
    args = ["--spec", "default", "--seeds", "0", "--epochs", "2", "--n-train", "200", "--n-samples", "64",
            "--out", str(out), "--no-progress"]
    assert study.main(args) == 0
    rows = list(csv.DictReader((out / "default" / "seeds.csv").open()))
    assert [r["seed"] for r in rows] == ["0"]
    data = json.loads((out / "default" / "seeds.json").read_text())
    assert len(data) == 1
    row = data[0]
    cfg_heads = len(row["heads"])
    assert cfg_heads == len(row["raw_masses"]["self"]) * len(row["raw_masses"]["self"][0])
    # the verdict is consistent with its parts
    ok = (row["found_shift"] and row["found_broadcast"] and row["acc_without_labelled"] is not None
          and row["acc_without_labelled"] <= 0.1 and row["kept_fraction"] >= 0.95)
    assert row["passes"] == bool(ok)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["specs"]["default"]["n_seeds"] == 1
    assert summary["specs"]["default"]["passes"] == int(row["passes"])
    # existing results are not overwritten without --force
    with pytest.raises(SystemExit) as e:
        study.main(args)
    assert e.value.code == 2


@pytest.mark.parametrize("bad", [["--seeds", "1", "1"], ["--epochs", "0"], ["--n-samples", "3"], ["--spec", "nope"]])
def test_bad_arguments_exit_2(study, tmp_path, bad, capsys):
    with pytest.raises(SystemExit) as e:
        study.parse_args(bad + ["--out", str(tmp_path / "x")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert bad[0] in err


def test_study_thresholds_are_the_circuit_checks(study):
    from anchor_interp.scores.ablation import MAX_CIRCUIT_ABLATED_ACCURACY, MIN_KEPT_FRACTION

    assert (study.MAX_CIRCUIT_ACC, study.MIN_KEPT) == (MAX_CIRCUIT_ABLATED_ACCURACY, MIN_KEPT_FRACTION)
