"""Fixtures for the pattern / weights / ablation / heads tests (owner: the head-labelling engineer).

- ``gt_model`` / ``gt_tokens``: the hand-set 7-head model of ``anchor_interp.models.planted`` and 256
  marker sequences (seed 101: the thresholds were tuned on token seeds 0-2, these tests check others).
- ``gt_bidir_model``: a bidirectional hand-set model with offsets -1, +1 and +2.
- ``default_analysis`` / ``mechanism_analysis``: ``analyse_heads`` on the zoo models (conftest's
  ``default_model`` / ``mechanism_model``) with 512 held-out rows, computed once per session.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def gt_model():
    from anchor_interp.models.planted import make_head_zoo_model

    return make_head_zoo_model()


@pytest.fixture(scope="session")
def gt_tokens():
    from anchor_interp.models.planted import sample_tokens

    return sample_tokens(256, seed=101)


@pytest.fixture(scope="session")
def gt_bidir_heads():
    from anchor_interp.models.planted import GroundTruthHead

    return (
        GroundTruthHead("prev", "shift", -1),
        GroundTruthHead("next", "shift", 1),
        GroundTruthHead("next2", "shift", 2),
        GroundTruthHead("broadcast", "broadcast"),
        GroundTruthHead("sink", "sink"),
        GroundTruthHead("decoy", "decoy", 1),
    )


@pytest.fixture(scope="session")
def gt_bidir_model(gt_bidir_heads):
    from anchor_interp.models.planted import make_head_zoo_model

    return make_head_zoo_model(gt_bidir_heads, attention_dir="bidirectional")


@pytest.fixture(scope="session")
def default_batch(default_model):
    _, task = default_model
    return task.sample(512, split="test", seed=0)


@pytest.fixture(scope="session")
def default_analysis(default_model, default_batch):
    from anchor_interp.labels import analyse_heads

    model, task = default_model
    return analyse_heads(model, default_batch, task, seed=0)


@pytest.fixture(scope="session")
def mechanism_analysis(mechanism_model):
    from anchor_interp.labels import analyse_heads

    model, task = mechanism_model
    return analyse_heads(model, task.sample(512, split="test", seed=0), task, seed=0)
