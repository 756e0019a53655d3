"""The cache stage (anchor_interp.scores.cache): scorers given one clean run's cache return the same numbers,
bit for bit, as when they run the model themselves, and run nothing twice."""

from __future__ import annotations

import pytest
import torch

from anchor_interp.models import make_model, model_config
from anchor_interp.names import layer_hook_names
from anchor_interp.scores import ablation as A
from anchor_interp.scores.cache import FINAL_SCALE_HOOK, clean_run, scorer_hooks
from anchor_interp.scores.patterns import attention_patterns
from anchor_interp.scores.weights import direct_logit_attribution


@pytest.fixture(scope="module")
def run(default_model):
    model, task = default_model
    batch = task.sample(96, split="test", seed=3)
    logits, cache = clean_run(model, batch.tokens)
    return model, batch, logits, cache


class _Counter:
    """Counts the model's forward passes (each one embeds the tokens once)."""

    def __init__(self, model):
        self.n, self.model = 0, model

    def __enter__(self):
        self.handle = self.model.embed.register_forward_hook(lambda *_: setattr(self, "n", self.n + 1))
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_clean_run_caches_exactly_the_scorers_hooks(run, identity_task):
    model, batch, logits, cache = run
    L = model.cfg.n_layers
    expected = layer_hook_names("pattern", L) + layer_hook_names("z", L) + [FINAL_SCALE_HOOK]
    assert sorted(cache.keys()) == sorted(expected) == sorted(scorer_hooks(model))
    with torch.no_grad():
        assert torch.equal(logits, model(batch.tokens))
    bare = make_model(model_config("small", identity_task, normalization_type=None), identity_task, seed=0)
    assert FINAL_SCALE_HOOK not in scorer_hooks(bare)
    assert sorted(clean_run(bare, batch.tokens)[1].keys()) == sorted(scorer_hooks(bare))


def test_attention_patterns_same_with_the_cache(run):
    model, batch, _, cache = run
    with _Counter(model) as c:
        cached = attention_patterns(model, batch.tokens, cache=cache)
    assert c.n == 0
    assert torch.equal(cached, attention_patterns(model, batch.tokens))
    as_dict = {name: cache[name] for name in cache.keys()}
    assert torch.equal(attention_patterns(model, batch.tokens, cache=as_dict), cached)


def test_direct_logit_attribution_same_with_the_cache(run):
    model, batch, _, cache = run
    wrong = (batch.targets + 1) % model.cfg.d_vocab_out
    for w in (None, wrong):
        with _Counter(model) as c:
            cached = direct_logit_attribution(model, batch.tokens, batch.targets, w, cache=cache)
        assert c.n == 0
        assert torch.equal(cached, direct_logit_attribution(model, batch.tokens, batch.targets, w))


@pytest.mark.parametrize("method", A.ABLATION_METHODS)
def test_per_head_ablation_same_with_the_cache(run, method):
    model, batch, logits, cache = run
    with _Counter(model) as c:
        cached = A.per_head_ablation(model, batch.tokens, targets=batch.targets, method=method, cache=cache,
                                     clean_logits=logits)
    assert c.n == model.cfg.n_layers * model.cfg.n_heads  # the ablated runs only
    plain = A.per_head_ablation(model, batch.tokens, targets=batch.targets, method=method)
    assert cached.keys() == plain.keys()
    for key in plain:
        assert torch.equal(cached[key], plain[key]), key


@pytest.mark.parametrize("method", ["mean", "resample"])
def test_ablate_and_circuit_check_same_with_the_cache(run, method):
    model, batch, logits, cache = run
    heads = [(0, 0), (1, 2)]
    with _Counter(model) as c:
        cached = A.ablate(model, batch.tokens, heads, targets=batch.targets, method=method, cache=cache,
                          clean_logits=logits, positions="all")
    assert c.n == 1
    assert cached == A.ablate(model, batch.tokens, heads, targets=batch.targets, method=method, positions="all")
    # the cache alone (clean logits recomputed) is used for the reference z only
    assert cached == A.ablate(model, batch.tokens, heads, targets=batch.targets, method=method, cache=cache,
                              positions="all")
    check = A.circuit_check(model, batch.tokens, batch.targets, heads, method=method, cache=cache, clean_logits=logits)
    assert check.to_dict() == A.circuit_check(model, batch.tokens, batch.targets, heads, method=method).to_dict()


def test_an_explicit_reference_is_not_read_from_the_cache(run):
    model, batch, logits, cache = run
    ref = batch.tokens[:16]
    kw = dict(targets=batch.targets, method="mean", reference=ref)
    assert A.ablate(model, batch.tokens, [(0, 1)], cache=cache, clean_logits=logits, **kw) == \
        A.ablate(model, batch.tokens, [(0, 1)], **kw)


def test_a_cache_that_does_not_fit_is_refused(run, no_shape_checks):
    model, batch, logits, cache = run
    z_only = {name: cache[name] for name in layer_hook_names("z", model.cfg.n_layers)}
    with pytest.raises(ValueError, match="hook_pattern.*clean_run"):
        attention_patterns(model, batch.tokens, cache=z_only)
    with pytest.raises(ValueError, match="ln_final.hook_scale"):
        direct_logit_attribution(model, batch.tokens, batch.targets, cache=z_only)
    with pytest.raises(ValueError, match="not a run of tokens"):
        attention_patterns(model, batch.tokens[:10], cache=cache)
    with pytest.raises(ValueError, match="clean_logits"):
        A.per_head_ablation(model, batch.tokens, cache=cache, clean_logits=logits[:, -1])


def test_row_chunks_cover_every_row_once(monkeypatch):
    from anchor_interp.scores import cache

    monkeypatch.setattr(cache, "CHUNK_ROWS", 4)
    assert list(cache.row_chunks(10)) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert list(cache.row_chunks(3)) == [slice(0, 3)]
    with cache.progress(False):  # the --quiet switch: no bar even over many chunks
        assert len(list(cache.row_chunks(40, desc="x"))) == 10
