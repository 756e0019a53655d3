"""Fixtures for the find_heads pipeline, CLI and report tests (owner: the find_heads/report engineer).

`synthetic_result` hand-builds a schema-1 FindHeadsResult (no model, no torch): the report and CLI
tests render from it. Its heads are known by construction, so a test can say which row must appear.
"""

from __future__ import annotations

import random

import pytest

from anchor_interp.result import FindHeadsResult

EVIL_TOKEN = "</script><b>x</b>"


def _row_pattern(rng: random.Random, dest: int, seq: int, focus: int | None, causal: bool) -> list[float]:
    width = dest + 1 if causal else seq
    weights = [rng.random() * 0.2 for _ in range(width)]
    if focus is not None and 0 <= focus < width:
        weights[focus] += 3.0
    total = sum(weights)
    return [round(w / total, 3) for w in weights] + [0.0] * (seq - width)


def synthetic_result(
    n_layers: int = 2, n_heads: int = 4, seq: int = 9, n_examples: int = 2, seed: int = 0, evil_token: bool = True
) -> FindHeadsResult:
    """A FindHeadsResult shaped like the default model's: L0H1 is a shift(-1) head, L1H2 a broadcast head.

    With ``evil_token`` the first example's first token is labelled ``</script><b>x</b>``.
    """
    rng = random.Random(seed)
    heads = []
    for layer in range(n_layers):
        for head in range(n_heads):
            name = f"L{layer}H{head}"
            if (layer, head) == (0, 1):
                rec = dict(label="shift", offset=-1, kind=None, causal_effect=0.81, counterfactual="anchor_move",
                           confidence=0.9, scores={"shift": 0.74, "broadcast": 0.05, "sink": 0.02})
            elif (layer, head) == (1, 2 % n_heads):
                rec = dict(label="broadcast", offset=None, kind=None, causal_effect=0.93, counterfactual="key_swap",
                           confidence=0.95, scores={"shift": 0.01, "broadcast": 0.88, "sink": 0.03})
            else:
                rec = dict(label="neither", offset=None, kind="uniform", causal_effect=0.01,
                           counterfactual="key_swap", confidence=0.6, scores={"shift": 0.1, "uniform": 0.7})
            heads.append(dict(layer=layer, head=head, name=name, group=None, notes=[], **rec))
    heads[0]["notes"] = ["pattern <looks> like shift(-1) & ablation changes nothing"]
    examples = []
    for i in range(n_examples):
        anchor = 1 + i
        labels = [str(20 + rng.randrange(80)) for _ in range(seq)]
        labels[anchor] = "[A:3]"
        labels[anchor + 1] = f"<K:{labels[anchor + 1]}>"
        if evil_token and i == 0:
            labels[0] = EVIL_TOKEN
        patterns = {}
        for layer in range(n_layers):
            per_head = []
            for head in range(n_heads):
                rows = []
                for dest in range(seq):
                    focus = dest - 1 if (layer, head) == (0, 1) else anchor + 1 if layer == 1 and head == 2 else None
                    rows.append(_row_pattern(rng, dest, seq, focus, causal=True))
                per_head.append(rows)
            patterns[f"blocks.{layer}.attn.hook_pattern"] = per_head
        examples.append(dict(tokens=[20 + j for j in range(seq)], token_labels=labels, anchor_pos=anchor,
                             key_pos=anchor + 1, target=77, prediction=77, group="all", patterns=patterns))
    patching = {
        "head_out/key_swap": dict(
            values=[[round(rng.uniform(-0.1, 1.0), 3) for _ in range(n_heads)] for _ in range(n_layers)],
            axes=["layer", "head"], hook_names=[f"blocks.{L}.attn.hook_z" for L in range(n_layers)],
            metric="logit_diff", counterfactual="key_swap", normalised=True),
        "resid_pre/key_swap": dict(
            values=[[round(rng.uniform(0, 1.0), 3) for _ in range(seq)] for _ in range(n_layers)],
            axes=["layer", "pos"], hook_names=[f"blocks.{L}.hook_resid_pre" for L in range(n_layers)],
            metric="logit_diff", counterfactual="key_swap", normalised=True),
    }
    ablation = dict(
        method="mean", baseline=dict(accuracy=0.99, loss=0.05),
        checks=[
            dict(name="labelled heads", heads=["L0H1", "L1H2"], accuracy=0.04, loss=4.1, expected="<= 0.1", passed=True),
            dict(name="all other heads", heads=[h["name"] for h in heads if h["label"] == "neither"],
                 accuracy=0.97, loss=0.1, expected=">= 0.95 x baseline", passed=True),
        ],
    )
    history = [dict(epoch=e, step=10 * e, train_loss=4.0 / (e + 1), test_acc=min(1.0, e / 20)) for e in range(0, 30, 3)]
    return FindHeadsResult(
        seed=seed,
        model=dict(preset="small", n_layers=n_layers, n_heads=n_heads, d_model=128, n_params=123_456, causal=True,
                   attn_only=True, source="synthetic <test>"),
        task=dict(name="identity", params={"offset": 1}),
        accuracy=dict(split="test", n=512, overall=0.99,
                      groups=[dict(name="all", masked=False, n=512, accuracy=0.99)]),
        heads=heads,
        groups=[dict(name="shift group", label="shift", heads=["L0H1"], joint_effect=0.8, metric="accuracy drop")],
        patching=patching,
        ablation=ablation,
        examples=examples,
        history=history,
        command="anchor-find-heads --seed 0",
    )


@pytest.fixture(scope="session")
def synthetic_find_heads_result() -> FindHeadsResult:
    return synthetic_result()
