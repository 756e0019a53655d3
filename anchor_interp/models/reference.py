"""The authors' model, written out: a plain-PyTorch post-LayerNorm transformer for comparisons only.

The paper's model (spec section 4) differs from a HookedTransformer in ways a HookedTransformerConfig
cannot all express: LayerNorm **after** each residual addition (post-LN), no final LayerNorm, no
biases in attention and MLP (only the output layer has one), and PyTorch's default initialisation
(embeddings and positions drawn from N(0, 1); every linear layer uniform in +-1/sqrt(fan_in), the
output bias too). :class:`ReferenceTransformer` is that model, so the gap between the two
architectures can be measured under one trainer (``train_many`` trains it like a HookedTransformer:
its parameters use HookedTransformer's names and layouts, and :func:`reference_stacked_forward` is its
batched forward). It is not a HookedTransformer: the analyses (find_heads, patching) do not take it.

    x = W_E[tokens] + W_pos[:T]                                  (B, T, d)
    per layer:  x = LN1(x + Attn(x));  x = LN2(x + MLP(x))       post-LN, no biases
    logits = x[:, -1] @ W_U + b_U                                (B, V)

With the paper's sizes (vocabulary 201, 20 positions) it has 5,653,801 parameters, the count the
authors report (tests/models/test_reference.py checks it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor, nn

from anchor_interp.models.blocks import ACTIVATIONS, masked_softmax, stacked_embed

__all__ = ["ReferenceConfig", "ReferenceTransformer", "make_reference_model", "reference_config",
           "reference_stacked_forward"]


@dataclass
class ReferenceConfig:
    """Sizes of a :class:`ReferenceTransformer`; the defaults are the paper's (spec section 4) but for
    ``d_vocab`` / ``n_ctx``, which come from the task. ``arch`` names the architecture in checkpoints."""

    d_vocab: int
    n_ctx: int
    n_layers: int = 4
    n_heads: int = 4
    d_model: int = 400
    d_head: int = 64
    d_mlp: int | None = 1200  # None = attention only
    act_fn: str = "relu"
    attention_dir: str = "causal"  # "causal" | "bidirectional"
    eps: float = 1e-5
    arch: str = "reference"

    def __post_init__(self):
        if self.attention_dir not in ("causal", "bidirectional"):
            raise ValueError(f"attention_dir={self.attention_dir!r}; use 'causal' or 'bidirectional'")
        if self.act_fn not in ACTIVATIONS:
            raise ValueError(f"act_fn={self.act_fn!r}; use one of {sorted(ACTIVATIONS)}")
        for name in ("d_vocab", "n_ctx", "n_layers", "n_heads", "d_model", "d_head"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")

    @property
    def d_vocab_out(self) -> int:
        return self.d_vocab

    @property
    def attn_only(self) -> bool:
        return self.d_mlp is None

    def to_dict(self) -> dict:
        return asdict(self)


def _shapes(cfg: ReferenceConfig) -> dict[str, tuple[tuple[int, ...], str, int]]:
    """name -> (shape, init, fan_in) of every parameter; init "normal" (N(0, 1)), "uniform"
    (+-1/sqrt(fan_in)), "one" or "zero" (LayerNorm weight and bias)."""
    d, nh, hs, V = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_vocab
    out: dict[str, tuple[tuple[int, ...], str, int]] = {
        "embed.W_E": ((V, d), "normal", 0), "pos_embed.W_pos": ((cfg.n_ctx, d), "normal", 0)}
    for layer in range(cfg.n_layers):
        p = f"blocks.{layer}."
        for w in ("W_Q", "W_K", "W_V"):
            out[p + "attn." + w] = ((nh, d, hs), "uniform", d)
        out[p + "attn.W_O"] = ((nh, hs, d), "uniform", nh * hs)
        out[p + "ln1.w"], out[p + "ln1.b"] = ((d,), "one", 0), ((d,), "zero", 0)
        if cfg.d_mlp is not None:
            out[p + "mlp.W_in"] = ((d, cfg.d_mlp), "uniform", d)
            out[p + "mlp.W_out"] = ((cfg.d_mlp, d), "uniform", cfg.d_mlp)
            out[p + "ln2.w"], out[p + "ln2.b"] = ((d,), "one", 0), ((d,), "zero", 0)
    out["unembed.W_U"] = ((d, V), "uniform", d)
    out["unembed.b_U"] = ((V,), "uniform", d)
    return out


class _Params(nn.Module):
    """A node of the parameter tree: children by name, so ``named_parameters()`` yields dotted names."""


class ReferenceTransformer(nn.Module):
    """The authors' post-LN transformer (module docstring). ``forward(tokens)`` returns the logits of
    every position, (B, T, V), like a HookedTransformer; training uses :func:`reference_stacked_forward`."""

    def __init__(self, cfg: ReferenceConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        gen = torch.Generator().manual_seed(seed)
        for name, (shape, init, fan_in) in _shapes(cfg).items():
            if init == "normal":
                t = torch.randn(shape, generator=gen)
            elif init == "uniform":
                bound = 1 / math.sqrt(fan_in)
                t = (torch.rand(shape, generator=gen) * 2 - 1) * bound
            else:
                t = torch.ones(shape) if init == "one" else torch.zeros(shape)
            *path, leaf = name.split(".")
            node = self
            for part in path:
                if part not in node._modules:
                    node.add_module(part, _Params())
                node = node._modules[part]
            node.register_parameter(leaf, nn.Parameter(t))

    def forward(self, tokens: Int[Tensor, "batch seq"]) -> Float[Tensor, "batch seq d_vocab"]:
        params = {n: p[None] for n, p in self.named_parameters()}  # (1, *shape)
        return reference_stacked_forward(params, self.cfg, tokens[None], last_only=False)[0]


def reference_config(preset: str, task, **overrides) -> ReferenceConfig:
    """The ReferenceConfig with the sizes of a model preset (``anchor_interp.models.PRESETS``), the task's
    vocabulary and length, and ``overrides`` (ReferenceConfig fields, e.g. ``attention_dir``). Raises
    ValueError for an unknown preset or field."""
    from anchor_interp.models.presets import PRESETS

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    p = PRESETS[preset]
    sizes = dict(n_layers=p.n_layers, n_heads=p.n_heads, d_model=p.d_model, d_head=p.d_head, d_mlp=p.d_mlp,
                 act_fn=p.act_fn or "relu", attention_dir=p.attention_dir)
    try:
        return ReferenceConfig(d_vocab=task.vocab_size, n_ctx=task.seq_len, **{**sizes, **overrides})
    except TypeError as e:
        raise ValueError(f"reference model overrides {sorted(overrides)}: {e}") from None


def make_reference_model(task, *, seed: int, device: str | torch.device = "cpu", **sizes) -> ReferenceTransformer:
    """A freshly initialised ReferenceTransformer for ``task`` (vocabulary and length from the task;
    ``sizes`` override the paper's, e.g. ``n_layers=2``). Raises ValueError for bad sizes."""
    cfg = ReferenceConfig(d_vocab=task.vocab_size, n_ctx=task.seq_len, **sizes)
    return ReferenceTransformer(cfg, seed=seed).to(device)


def _layer_norm(x: Tensor, w: Tensor, b: Tensor, eps: float) -> Tensor:
    """LayerNorm over the last axis with per-model weight and bias w, b (k, d); x (k, ..., d)."""
    shape = (w.shape[0],) + (1,) * (x.ndim - 2) + (w.shape[-1],)
    return nn.functional.layer_norm(x, x.shape[-1:], eps=eps) * w.view(shape) + b.view(shape)


def reference_stacked_forward(
    params: dict[str, Tensor], cfg: ReferenceConfig, tokens: Int[Tensor, "k batch seq"], last_only: bool = True,
) -> Float[Tensor, "k batch ..."]:
    """Logits of k stacked reference models: (k, B, V) at the last position (``last_only``, what the
    trainer scores), else (k, B, T, V). ``params[name]`` has shape (k, *shape of parameter ``name``)."""
    k, B, T = tokens.shape
    nh, d = cfg.n_heads, cfg.d_model
    x = stacked_embed(params["embed.W_E"], tokens) + params["pos_embed.W_pos"][:, None, :T, :]  # (k, B, T, d)
    for layer in range(cfg.n_layers):
        p = f"blocks.{layer}."
        cut = last_only and layer == cfg.n_layers - 1  # the last layer: only the scored position
        hq = x[:, :, -1:] if cut else x  # (k, B, Tq, d)
        Tq = hq.shape[2]
        # every matmul is one bmm over the model axis, (k, rows, d) @ (k, d, out): a weight broadcast over
        # the batch axis instead would be copied once per batch row (measured: 40% of a GPU step)
        W_Q = rearrange(params[p + "attn.W_Q"], "k nh d hs -> k d (nh hs)")
        W_KV = rearrange(torch.cat([params[p + "attn.W_K"], params[p + "attn.W_V"]], 1), "k nkv d hs -> k d (nkv hs)")
        q = rearrange(hq.reshape(k, B * Tq, d) @ W_Q, "k (B Tq) (nh hs) -> k B nh Tq hs", B=B, nh=nh)  # (k, B, nh, Tq, hs)
        kv = rearrange(x.reshape(k, B * T, d) @ W_KV, "k (B T) (two nh hs) -> two k B nh T hs", B=B, two=2, nh=nh)
        att = masked_softmax(q @ kv[0].transpose(-1, -2) / math.sqrt(cfg.d_head), cfg.attention_dir == "causal")
        z = rearrange(att @ kv[1], "k B nh Tq hs -> k (B Tq) (nh hs)")  # (k, B*Tq, nh*hs)
        attn_out = (z @ rearrange(params[p + "attn.W_O"], "k nh hs d -> k (nh hs) d")).view(k, B, Tq, d)
        x = _layer_norm(hq + attn_out, params[p + "ln1.w"], params[p + "ln1.b"], cfg.eps)  # post-LN
        if cfg.d_mlp is not None:
            pre = x.reshape(k, B * Tq, d) @ params[p + "mlp.W_in"]  # (k, B*Tq, d_mlp)
            out = (ACTIVATIONS[cfg.act_fn](pre) @ params[p + "mlp.W_out"]).view(k, B, Tq, d)
            x = _layer_norm(x + out, params[p + "ln2.w"], params[p + "ln2.b"], cfg.eps)  # (k, B, Tq, d)
    if last_only:
        x = x[:, :, -1]  # (k, B, d)
        return x @ params["unembed.W_U"] + params["unembed.b_U"][:, None, :]  # (k, B, V)
    logits = x.reshape(k, B * T, d) @ params["unembed.W_U"] + params["unembed.b_U"][:, None, :]  # (k, B*T, V)
    return logits.view(k, B, T, -1)  # (k, B, T, V)
