"""Shared session-scoped fixtures (owner: the models/training engineer; others add theirs in
tests/fixtures_<name>.py and import them in their test files).

- ``identity_task``: ``make_task("identity")``.
- ``default_model`` / ``mechanism_model``: ``(model, task)`` from ``anchor_interp.models.zoo.load``; loaded
  once per session, in eval mode. Do not train or modify them in place (use ``copy.deepcopy``).
- ``no_shape_checks``: jaxtyping's runtime checks off for one test. The suite runs with jaxtyping's pytest
  hook (pyproject.toml addopts), which rejects a wrong shape or dtype with ``jaxtyping.TypeCheckError``
  before the function runs; a test of the ``ValueError`` that callers without the hook get uses this.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    # the CI machine has 2 cores shared by `pytest -n 2`: one torch thread per worker
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def identity_task():
    from anchor_interp.tasks import make_task

    return make_task("identity")


@pytest.fixture(scope="session")
def default_model():
    from anchor_interp.models import zoo

    return zoo.load("default")


@pytest.fixture(scope="session")
def mechanism_model():
    from anchor_interp.models import zoo

    return zoo.load("mechanism")


@pytest.fixture
def no_shape_checks():
    from jaxtyping import config

    before = config.jaxtyping_disable
    config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        config.update("jaxtyping_disable", before)
