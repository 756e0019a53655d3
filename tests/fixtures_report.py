"""Fixtures for the report's browser tests: a planted 4-layer x 4-head model and its find_heads result, and
`shown_equals` (a number shown on the page equals its JSON value after rounding).

`planted_4x4_model` puts the hand-set identity circuit of :func:`anchor_interp.models.planted.make_identity_circuit_model`
(2 layers x 3 heads: a previous-token shift head, decoys, a broadcast head) into a 4 x 4 model: its layer 0
becomes layer 0, its layer 1 becomes layer 2, every other head is zero (uniform attention, writes nothing).
So the shift head's flag reaches layer 2's keys across an empty layer, and the report has 16 heads to lay out.
"""

from __future__ import annotations

import functools

import pytest
import torch

from anchor_interp.models.adapter import (
    ATTN_WEIGHT_NAMES,
    HookedTransformerConfig,
    attn_weights,
    build_model,
    embed_weights,
)
from anchor_interp.models.planted import make_identity_circuit_model

PLACE = {0: 0, 1: 2}


def shown_equals(shown: str, value) -> bool:
    """A number as the page shows it equals the JSON value after rounding: ``100%`` for shares, else as
    many decimals as shown (``–`` for a missing value)."""
    if value is None:
        return shown == "–"
    if shown.endswith("%"):
        return shown == f"{value:.0%}"
    digits = len(shown.split(".")[1]) if "." in shown else 0
    return float(shown) == pytest.approx(round(value, digits), abs=10 ** -digits / 2)  # source layer -> layer of the 4 x 4 model


def planted_4x4_model(task):
    """A 4-layer x 4-head attention-only causal model that solves ``task`` (identity) with a planted circuit."""
    src = make_identity_circuit_model(task)
    c = src.cfg
    cfg = HookedTransformerConfig(
        n_layers=4, n_heads=4, d_model=c.d_model, d_head=c.d_head, n_ctx=c.n_ctx, d_vocab=c.d_vocab, attn_only=True,
        act_fn=None, normalization_type=None, positional_embedding_type="standard", attention_dir="causal",
        device="cpu", seed=0,
    )
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for name, w in embed_weights(src).items():
            if w is not None:
                embed_weights(model)[name].copy_(w)
        for s_layer, d_layer in PLACE.items():
            sw, dw = attn_weights(src, s_layer), attn_weights(model, d_layer)
            for name in ATTN_WEIGHT_NAMES:
                if name == "b_O":
                    dw[name].copy_(sw[name])
                else:
                    dw[name][: c.n_heads].copy_(sw[name])
    model.eval()
    return model


@pytest.fixture(scope="session")
def planted_4x4_result():
    """find_heads on the planted 4 x 4 model (identity task, 96 rows, seed 0, one example); shared: do not modify."""
    return _planted_4x4_result()


@functools.lru_cache(maxsize=1)
def _planted_4x4_result():
    # cached here: each test module that imports the fixture gets its own copy of it, but one analysis
    from anchor_interp.find_heads import find_heads
    from anchor_interp.tasks import make_task

    task = make_task("identity")
    model = planted_4x4_model(task)
    return find_heads(model, task, seed=0, n_samples=96, n_examples=1, preset="planted 4x4",
                      source="tests/fixtures_report.py (planted)",
                      training={"recipe": {"name": "planted (no training)"}, "step": 0, "epoch": 0})
