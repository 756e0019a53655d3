"""The forward computation behind :mod:`anchor_interp.patching`: a HookedTransformer run from a cached
point, many patched runs stacked along the batch dimension.

It recomputes what TransformerLens's blocks compute (pre-LN attention and MLP, standard positional
embeddings) from the model's own weights and LayerNorm/MLP modules, read through
:mod:`anchor_interp.models.adapter`, so that a patched run can start at any layer, the final block can
attend from the last query row only, and a patch at a single position can be taken through the next
attention block by recomputing one query row and one key/value column of the cached scores
(:meth:`Engine.one_position_block`, :meth:`Engine.final_rows`). Only ``check_model``-approved
architectures are accepted; tests/patching/test_patching.py checks every path against
``model.run_with_cache`` and ``transformer_lens.patching`` in float64. The block arithmetic it writes out
(normalisation, causal mask, softmax) is :mod:`anchor_interp.models.blocks`, shared with the trainer.

Importing this module does not import TransformerLens: the adapter is imported when an engine is built.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor

from anchor_interp.models.blocks import layer_norm, masked_softmax, softmax_pattern
from anchor_interp.names import ATTN_HOOKS, BLOCK_HOOKS, hook_name

__all__ = [
    "ATTN_PARTS", "Engine", "Rows", "changed_rows", "check_hooked", "check_model", "engine_for", "fast_path_problems",
    "softmax_pattern",
]

ATTN_PARTS = ("q", "k", "v", "pattern", "z")
# the final block's activations that do not need every query row (its q is then the last row's only)
_ROW_FREE = ("resid_pre", "k", "v", "q")


def check_hooked(model: Any) -> None:
    """Raise ValueError unless ``model`` looks like a TransformerLens HookedTransformer (any configuration)."""
    cfg = getattr(model, "cfg", None)
    if cfg is None or not hasattr(model, "blocks") or not hasattr(model, "run_with_cache"):
        raise ValueError(
            f"model must be a TransformerLens HookedTransformer (with .cfg, .blocks, .run_with_cache), "
            f"got {type(model).__name__}"
        )


def fast_path_problems(model: Any) -> list[str]:
    """The config fields (``"name=value"``) that keep ``model`` off this engine; empty when it applies.

    The engine computes standard (learned absolute) positional embeddings, pre-LayerNorm (LN, LNPre,
    RMS, RMSPre or none), causal or bidirectional attention, with or without MLPs; not: rotary or
    shortformer positions, grouped-query, local attention, parallel attention+MLP, soft-capped scores,
    mixture of experts. Raises ValueError (:func:`check_hooked`) for something that is no HookedTransformer.
    """
    check_hooked(model)
    cfg = model.cfg
    problems = []
    if getattr(cfg, "positional_embedding_type", "standard") != "standard":
        problems.append(f"positional_embedding_type={cfg.positional_embedding_type!r} (need 'standard')")
    for name, bad in [
        ("n_key_value_heads", lambda v: v is not None),
        ("use_local_attn", bool),
        ("parallel_attn_mlp", bool),
        ("use_normalization_before_and_after", bool),
        ("use_attention_sinks", bool),
        ("use_qk_norm", bool),
        ("use_logn_attn", bool),
        ("load_in_4bit", bool),
        ("post_embedding_ln", bool),
        ("clip_qkv", lambda v: v is not None),
        ("num_experts", lambda v: v is not None),
        ("attn_scores_soft_cap", lambda v: v is not None and v > 0),
    ]:
        if hasattr(cfg, name) and bad(getattr(cfg, name)):
            problems.append(f"{name}={getattr(cfg, name)!r}")
    if getattr(cfg, "attention_dir", "causal") not in ("causal", "bidirectional"):
        problems.append(f"attention_dir={cfg.attention_dir!r}")
    return problems


def check_model(model: Any) -> None:
    """Raise ValueError unless ``model`` is a HookedTransformer whose architecture this engine computes
    (:func:`fast_path_problems`). The public patching functions do not need this: for other
    HookedTransformers they take the slower plain-TransformerLens path (:mod:`anchor_interp.patching.slow`)."""
    problems = fast_path_problems(model)
    if problems:
        raise ValueError(
            "model: the patching engine supports standard pre-LN HookedTransformers only; unsupported "
            "config: " + ", ".join(problems)
        )


@dataclass
class Rows:
    """Patched runs, one row each: variant ``var`` on batch row ``b``.

    Either ``pos`` + ``row`` (the start residual differs from the unpatched one only at position
    ``pos``, where it is ``row``), or ``start`` (the whole start residual); ``delta`` is the
    receivers' extra input in path patching.
    """

    var: Tensor  # (N,)
    b: Tensor  # (N,)
    pos: Tensor | None = None  # (N,)
    row: Tensor | None = None  # (N, d_model)
    start: Tensor | None = None  # (N, T, d_model)
    delta: Tensor | None = None  # (N, T, d_model)
    is_clean: Tensor | None = None  # (N,) bool: the patched run is exactly the clean run

    def __len__(self) -> int:
        return self.var.shape[0]

    def take(self, index) -> Rows:
        """The rows ``index`` selects (a slice, a bool mask or indices)."""
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return Rows(
            self.var[index], self.b[index], pick(self.pos), pick(self.row), pick(self.start), pick(self.delta),
            pick(self.is_clean),
        )

    @staticmethod
    def cat(parts: list[Rows]) -> Rows:
        """The rows of ``parts``, in order (all parts fill the same fields)."""
        if len(parts) == 1:
            return parts[0]

        def join(name):
            ts = [getattr(p, name) for p in parts]
            return None if ts[0] is None else torch.cat(ts)

        return Rows(*(join(n) for n in ("var", "b", "pos", "row", "start", "delta", "is_clean")))


def changed_rows(diff: Float[Tensor, "v B ..."], var_offset: int, all_rows: bool) -> tuple[Tensor, Tensor]:
    """(var, b) of the rows to run: those where ``diff`` [v, B, ...] is non-zero (or every row)."""
    v, B = diff.shape[:2]
    if all_rows:
        keep = torch.ones(v, B, dtype=torch.bool, device=diff.device)
    else:
        keep = (diff != 0).reshape(v, B, -1).any(-1)  # (v, B)
    var, b = keep.nonzero(as_tuple=True)
    return var + var_offset, b


@dataclass
class _LayerWeights:
    qkv_weight: Tensor  # (3*H*dh, d_model): rows q, then k, then v (TransformerLens's head-major layout)
    qkv_bias: Tensor  # (3*H*dh,)
    out_weight: Tensor  # (d_model, H*dh)
    params: dict[str, Tensor]  # the layer's own parameters by name (adapter.attn_weights): W_O (H, dh, d), b_O (d,), ...


_WEIGHTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (stamp, laid-out weights)


def engine_for(model: Any) -> Engine:
    """An :class:`Engine` for ``model`` whose weight layout is reused while no parameter has changed
    (a new tensor or storage -- ``model.to(...)`` -- or an in-place update, which bumps the tensor's
    version counter). Raises ValueError as :func:`check_model`."""
    check_model(model)
    stamp = tuple((id(p), p._version, p.data_ptr(), p.dtype, p.device) for p in model.parameters())
    cached = _WEIGHTS.get(model)
    if cached is None or cached[0] != stamp:
        cached = (stamp, _layer_weights(model))
        _WEIGHTS[model] = cached
    return Engine(model, weights=cached[1])


def _layer_weights(model) -> list[_LayerWeights]:
    from anchor_interp.models import adapter

    out = []
    with torch.no_grad():
        for layer in range(model.cfg.n_layers):
            attn = adapter.attn_weights(model, layer)
            Ws = [rearrange(attn[f"W_{c}"], "H d dh -> (H dh) d") for c in "QKV"]  # (H*dh, d) each
            bs = [rearrange(attn[f"b_{c}"], "H dh -> (H dh)") for c in "QKV"]
            W_out = rearrange(attn["W_O"], "H dh d -> d (H dh)").contiguous()  # (d, H*dh)
            out.append(_LayerWeights(torch.cat(Ws), torch.cat(bs), W_out, attn))
    return out


def _written_out_norm(module, spec) -> Callable[[Tensor], Tensor]:
    """``module`` as a function, its maths written out (the same operations in the same order, skipping
    the module's hook-point calls) for the normalisations the adapter describes (``spec``) and
    float32/float64 inputs; any other module or dtype calls the module itself."""
    if spec is None:
        return module
    if spec["kind"] == "identity":
        return lambda x: x
    kind, eps, w, b = spec["kind"], spec["eps"], spec["w"], spec["b"]

    def norm(x: Tensor) -> Tensor:  # x (..., d_model)
        if x.dtype not in (torch.float32, torch.float64):
            return module(x)
        return layer_norm(x, w, b, kind, eps)

    return norm


class Engine:
    """A HookedTransformer's forward pass, restartable from any layer; weights laid out once.

    Raises ValueError (:func:`check_model`) for an unsupported model.
    """

    def __init__(self, model: Any, weights: list[_LayerWeights] | None = None):
        check_model(model)
        from anchor_interp.models import adapter

        self._adapter = adapter
        self.model = model
        cfg = model.cfg
        self.cfg = cfg
        self.n_layers = cfg.n_layers
        self.H, self.dh = cfg.n_heads, cfg.d_head
        self.causal = cfg.attention_dir == "causal"
        self.w = weights if weights is not None else _layer_weights(model)
        layers = range(self.n_layers)
        self._scale = [adapter.attn_scale(model, layer) for layer in layers]
        self.attn_norm = [self._norm_fn(adapter.norm_module(model, layer, "ln1")) for layer in layers]
        self._final_norm = self._norm_fn(adapter.final_norm(model))
        # attention-only blocks have neither an MLP nor its ln2
        self._mlps = [adapter.mlp_module(model, layer) for layer in layers]
        self.mlp_norm = [
            None if mlp is None else self._norm_fn(adapter.norm_module(model, layer, "ln2"))
            for layer, mlp in zip(layers, self._mlps, strict=True)
        ]

    # -------------------------------------------------------------------------------- pieces

    def _norm_fn(self, module) -> Callable[[Tensor], Tensor]:
        return _written_out_norm(module, self._adapter.norm_spec(module))

    def qkv_flat(self, layer: int, x: Float[Tensor, "... d_model"], which: str) -> Float[Tensor, "... k_H_dh"]:
        """x [..., d_model] -> [..., k*H*dh] for ``which`` in q/k/v/kv/qkv (k = len(which))."""
        w = self.w[layer]
        n = self.H * self.dh
        sl = {"q": slice(0, n), "k": slice(n, 2 * n), "v": slice(2 * n, 3 * n), "kv": slice(n, 3 * n), "qkv": slice(0, 3 * n)}[which]
        return F.linear(x, w.qkv_weight[sl], w.qkv_bias[sl])

    def qkv(self, layer: int, x: Float[Tensor, "... d_model"], which: str) -> Tensor:
        """x [..., d_model] -> [..., H, dh] for ``which`` in q/k/v/kv/qkv (stacked on a new dim 0 if >1)."""
        out = self.qkv_flat(layer, x, which)
        if len(which) == 1:
            return out.reshape(*out.shape[:-1], self.H, self.dh)
        return rearrange(out, "... (n H dh) -> n ... H dh", n=len(which), H=self.H)

    def qkv_head(self, layer: int, x: Float[Tensor, "... d_model"], comp: str, head: int) -> Float[Tensor, "... d_head"]:
        """One head's q, k or v: x [..., d_model] -> [..., dh]."""
        params = self.w[layer].params
        return F.linear(x, params[f"W_{comp.upper()}"][head].T, params[f"b_{comp.upper()}"][head])

    def out(self, layer: int, z: Float[Tensor, "... H d_head"]) -> Float[Tensor, "... d_model"]:
        """z [..., H, dh] -> attention output [..., d_model] (with b_O)."""
        w = self.w[layer]
        return F.linear(z.flatten(-2), w.out_weight, w.params["b_O"])

    def attn_scale(self, layer: int) -> float:
        """The divisor of layer ``layer``'s attention scores."""
        return self._scale[layer]

    def head_delta(
        self,
        layer: int,
        dz: Float[Tensor, "B T H d_head"],
        heads: Int[Tensor, " N"],
        b: Int[Tensor, " N"],
        pos: Int[Tensor, " N"] | None,
    ) -> Tensor:
        """Residual-stream change ``dz[b, pos, head] @ W_O[head]`` of each row (all positions if ``pos`` is
        None): [N, d_model] or [N, T, d_model]. Computed per head for the selected rows only, so that no
        [heads, batch, pos, d_model] tensor is ever built."""
        W_O = self.w[layer].params["W_O"]  # (H, dh, d)
        d_model = self.cfg.d_model
        shape = (len(b), d_model) if pos is not None else (len(b), dz.shape[1], d_model)
        out = torch.empty(shape, dtype=dz.dtype, device=dz.device)
        for h in heads.unique().tolist():
            sel = (heads == h).nonzero()[:, 0]
            x = dz[b[sel], pos[sel], h] if pos is not None else dz[b[sel], :, h]  # (n, dh) or (n, T, dh)
            out[sel] = x @ W_O[h]
        return out

    def attn_out(
        self,
        layer: int,
        resid: Float[Tensor, "N T d_model"],
        last_row_only: bool,
        receivers: Sequence[tuple[int, str]] = (),
        receiver_delta: Tensor | None = None,
        parts: dict[str, Tensor] | None = None,
    ) -> Float[Tensor, "N Tq d_model"]:
        """Attention output (before the residual add) for all query rows or only the last one.

        ``receivers`` are (head, "q"|"k"|"v") whose input is ``ln1(resid + receiver_delta)`` instead of
        ``ln1(resid)`` (path patching). If ``parts`` is a dict, q, k, v, pattern and z are stored in it
        (TransformerLens layouts: q/k/v/z [N, pos, H, dh], pattern [N, H, dest_pos, src_pos]).
        """
        ln1 = self.attn_norm[layer]
        N, T, _ = resid.shape
        x = ln1(resid)  # (N, T, d)
        # projections laid out (N, H, pos, dh), contiguous: the attention matmuls are faster that way
        if last_row_only:
            k, v = self._heads_first(self.qkv_flat(layer, x, "kv"), 2)  # (N, H, T, dh) each
            q = self._heads_first(self.qkv_flat(layer, x[:, -1:], "q"), 1)[0]  # (N, H, 1, dh)
        else:
            q, k, v = self._heads_first(self.qkv_flat(layer, x, "qkv"), 3)  # (N, H, T, dh) each
        if receivers:
            x_rec = ln1(resid + receiver_delta)  # (N, T, d)
            q, k, v = q.clone(), k.clone(), v.clone()
            for head, comp in receivers:
                if comp == "q":
                    q[:, head] = self.qkv_head(layer, x_rec[:, -1:] if last_row_only else x_rec, "q", head)
                elif comp == "k":
                    k[:, head] = self.qkv_head(layer, x_rec, "k", head)
                else:
                    v[:, head] = self.qkv_head(layer, x_rec, "v", head)
        scores = q @ k.transpose(-1, -2) / self.attn_scale(layer)  # (N, H, Tq, T)
        pattern = masked_softmax(scores, self.causal, written_out=True)  # (N, H, Tq, T)
        z = (pattern @ v).transpose(1, 2)  # (N, Tq, H, dh)
        if parts is not None:
            parts.update(q=q.transpose(1, 2), k=k.transpose(1, 2), v=v.transpose(1, 2), pattern=pattern, z=z)
        return self.out(layer, z)

    def _heads_first(self, flat: Float[Tensor, "N T n_H_dh"], n: int) -> Float[Tensor, "n N H T d_head"]:
        """[N, T, n*H*dh] -> [n, N, H, T, dh] (contiguous)."""
        return rearrange(flat, "N T (n H dh) -> n N H T dh", n=n, H=self.H).contiguous()

    def mlp(self, layer: int, resid: Float[Tensor, "N Tq d_model"]) -> Float[Tensor, "N Tq d_model"]:
        """resid_mid -> resid_post of ``layer`` (identity for attention-only models)."""
        if self.cfg.attn_only:
            return resid
        return resid + self._mlps[layer](self.mlp_norm[layer](resid))

    def final_norm(self, resid: Float[Tensor, "N Tq d_model"]) -> Float[Tensor, "N Tq d_model"]:
        """``ln_final`` (nothing for a model without normalisation)."""
        if self.cfg.normalization_type is not None:
            resid = self._final_norm(resid)
        return resid

    def logits(self, resid: Float[Tensor, "N Tq d_model"]) -> Float[Tensor, "N Tq d_vocab"]:
        """Final residual stream -> logits: ln_final, unembed, soft cap."""
        logits = self._adapter.unembed_resid(self.model, self.final_norm(resid))
        cap = getattr(self.cfg, "output_logits_soft_cap", -1.0)
        if cap is not None and cap > 0:
            logits = cap * torch.tanh(logits / cap)
        return logits

    def answer_directions(
        self, clean_targets: Int[Tensor, " B"], corrupt_targets: Int[Tensor, " B"]
    ) -> tuple[Float[Tensor, "B d_model"], Float[Tensor, " B"]]:
        """Per batch row, ``W_U[:, clean] - W_U[:, corrupt]`` and ``b_U[clean] - b_U[corrupt]``: the logit
        difference of a normalised final residual ``r`` is ``r . dirs + bias`` (no soft cap)."""
        emb = self._adapter.embed_weights(self.model)
        W_U, b_U = emb["W_U"], emb["b_U"]  # (d, V), (V,)
        ct, xt = clean_targets, corrupt_targets
        return (W_U[:, ct] - W_U[:, xt]).T.contiguous(), b_U[ct] - b_U[xt]  # (B, d), (B,)

    # -------------------------------------------------------------------------------- runs

    def run_cached(
        self, tokens: Int[Tensor, "B T"], names: Sequence[str], *, full_logits: bool
    ) -> tuple[Float[Tensor, "B Tq d_vocab"], dict[str, Tensor]]:
        """Forward pass keeping only the activations ``names`` (TransformerLens hook names and layouts).

        Unless ``full_logits`` or a final-block activation other than ``hook_resid_pre``, ``attn.hook_k``,
        ``attn.hook_v`` or ``attn.hook_q`` is asked for, the final block computes only the last query
        row (its ``hook_q`` is then [B, 1, H, dh]) and the logits are [B, 1, d_vocab]. Raises
        ValueError for a name it cannot provide.
        """
        want = set(names)
        cache: dict[str, Tensor] = {}
        resid = self._adapter.embed_tokens(self.model, tokens)  # (B, T, d)
        for layer in range(self.n_layers):
            name = {s: hook_name(s, layer) for s in ("resid_pre", *ATTN_PARTS, "attn_out", "resid_mid", "resid_post")}
            if name["resid_pre"] in want:
                cache[name["resid_pre"]] = resid
            inside = any(hook_name(s, layer) in want for s in ATTN_HOOKS + BLOCK_HOOKS if s not in _ROW_FREE)
            last_row_only = layer == self.n_layers - 1 and not full_logits and not inside
            parts: dict[str, Tensor] = {}
            attn_out = self.attn_out(layer, resid, last_row_only, parts=parts)
            for part in ATTN_PARTS:
                if name[part] in want:
                    cache[name[part]] = parts[part]
            if name["attn_out"] in want:
                cache[name["attn_out"]] = attn_out
            resid = (resid[:, -1:] if last_row_only else resid) + attn_out  # (B, Tq, d)
            if name["resid_mid"] in want and not self.cfg.attn_only:
                cache[name["resid_mid"]] = resid
            resid = self.mlp(layer, resid)
            if name["resid_post"] in want:
                cache[name["resid_post"]] = resid
        unknown = want - set(cache)
        if unknown:
            raise ValueError(f"run_cached: cannot provide {sorted(unknown)}")
        return self.logits(resid), cache

    def forward_from(
        self,
        layer: int,
        resid: Float[Tensor, "N T d_model"],
        *,
        after_attn: bool,
        last_only: bool,
        receivers: dict[int, list[tuple[int, str]]] | None = None,
        receiver_delta: Tensor | None = None,
        readout: Callable[[Tensor], Tensor] | None = None,
    ) -> Float[Tensor, "N Tq ..."]:
        """Run blocks ``layer..`` from ``resid`` (``resid_pre``, or ``resid_mid`` if ``after_attn``) to logits.

        With ``last_only`` the final block computes only the last query row and logits are [N, 1, d_vocab].
        ``layer == n_layers`` means ``resid`` is the final residual stream (only ln_final + unembed run).
        ``readout`` replaces :meth:`logits` on the final residual stream [N, Tq, d_model] (its output,
        [N, Tq, *out], is returned instead of the logits [N, Tq, d_vocab]).
        """
        receivers = receivers or {}
        if last_only and layer >= self.n_layers:
            resid = resid[:, -1:]
        for i in range(layer, self.n_layers):
            final = last_only and i == self.n_layers - 1
            if not (i == layer and after_attn):
                attn_out = self.attn_out(i, resid, final, receivers.get(i, ()), receiver_delta)
                resid = (resid[:, -1:] if final else resid) + attn_out  # (N, Tq, d)
            elif final:
                resid = resid[:, -1:]
            resid = self.mlp(i, resid)
        return (readout or self.logits)(resid)

    def final_context(self, corrupt: dict[str, Tensor], last_logits: Float[Tensor, "B d_vocab"]) -> dict[str, Tensor]:
        """The corrupted run's final block, laid out for :meth:`final_rows` (needs its ``hook_resid_pre``,
        ``attn.hook_q``, ``attn.hook_k`` and ``attn.hook_v``)."""
        layer = self.n_layers - 1
        k = rearrange(corrupt[hook_name("k", layer)], "B T H dh -> B H T dh")
        q_last = corrupt[hook_name("q", layer)][:, -1]  # (B, H, dh)
        return {
            "k": k.contiguous(),  # (B, H, T, dh)
            "v": rearrange(corrupt[hook_name("v", layer)], "B T H dh -> B H T dh").contiguous(),
            "q_last": q_last,
            "scores_last": (q_last[:, :, None] @ k.transpose(-1, -2))[:, :, 0] / self.attn_scale(layer),  # (B, H, T)
            "resid_last": corrupt[hook_name("resid_pre", layer)][:, -1],  # (B, d)
            "logits_last": last_logits,  # (B, d_vocab)
        }

    def layer_context(self, corrupt: dict[str, Tensor], layer: int) -> dict[str, Tensor]:
        """The corrupted run's block ``layer``, laid out for :meth:`one_position_block` (needs its
        ``hook_resid_pre``, ``attn.hook_q``, ``attn.hook_k`` and ``attn.hook_v``)."""
        q, k, v = (rearrange(corrupt[hook_name(c, layer)], "B T H dh -> B H T dh").contiguous() for c in "qkv")
        return {
            "resid_pre": corrupt[hook_name("resid_pre", layer)],  # (B, T, d)
            "q": q,  # (B, H, T, dh)
            "k": k,
            "v": v,
            "scores": q @ k.transpose(-1, -2) / self.attn_scale(layer),  # (B, H, T, T), unmasked
        }

    def one_position_block(
        self, ctx: dict[str, Tensor], layer: int, b: Int[Tensor, " N"], pos: Int[Tensor, " N"],
        row: Float[Tensor, "N d_model"],
    ) -> Float[Tensor, "N T d_model"]:
        """``resid_post`` of block ``layer`` when its input differs from the corrupted run's only at
        position ``pos`` (where it is ``row``): one query row and one key/value column of the cached
        attention scores are recomputed instead of every projection."""
        N, T, d = b.shape[0], ctx["resid_pre"].shape[1], row.shape[-1]
        H, dh = self.H, self.dh
        scale = self.attn_scale(layer)
        resid = ctx["resid_pre"].index_select(0, b)  # (N, T, d)
        resid.scatter_(1, pos.view(N, 1, 1).expand(N, 1, d), row[:, None])
        x = self.attn_norm[layer](row)  # (N, d)
        q_p, k_p, v_p = self.qkv(layer, x, "qkv")  # (N, H, dh) each
        at = pos.view(N, 1, 1, 1)
        q = ctx["q"].index_select(0, b).scatter_(2, at.expand(N, H, 1, dh), q_p[:, :, None])  # (N, H, T, dh)
        k = ctx["k"].index_select(0, b).scatter_(2, at.expand(N, H, 1, dh), k_p[:, :, None])
        v = ctx["v"].index_select(0, b).scatter_(2, at.expand(N, H, 1, dh), v_p[:, :, None])
        scores = ctx["scores"].index_select(0, b)  # (N, H, T, T)
        scores.scatter_(3, at.expand(N, H, T, 1), (q * k_p[:, :, None]).sum(-1, keepdim=True) / scale)  # column
        scores.scatter_(2, at.expand(N, H, 1, T), (q_p[:, :, None] * k).sum(-1)[:, :, None] / scale)  # row
        z = (masked_softmax(scores, self.causal, written_out=True) @ v).transpose(1, 2)  # (N, T, H, dh)
        return self.mlp(layer, resid + self.out(layer, z))

    def final_rows(
        self, ctx: dict[str, Tensor], rows: Rows, mlp_layer: int | None, readout: Callable[[Tensor], Tensor] | None = None
    ) -> Float[Tensor, "N ..."]:
        """Last-position logits when the final block's input differs from the corrupted run's at one position.

        ``rows.row`` is the residual at ``rows.pos``: ``resid_pre`` of the final block, or ``resid_mid``
        of the block before it (``mlp_layer``: its MLP is applied to that row). Only that position's
        key and value (and the query, if it is the last position) are recomputed, and only the last
        query row attends: O(d_model^2) per row instead of O(seq d_model^2). ``readout`` as in
        :meth:`forward_from` (then its output at the last position, [N, *out], is returned).
        """
        layer = self.n_layers - 1
        row = rows.row[:, None]  # (N, 1, d)
        if mlp_layer is not None:
            row = self.mlp(mlp_layer, row)
        x = self.attn_norm[layer](row)  # (N, 1, d)
        N, T = row.shape[0], ctx["k"].shape[2]
        k_new, v_new = self.qkv(layer, x[:, 0], "kv")  # (N, H, dh)
        scale = self.attn_scale(layer)
        col = rows.pos.view(N, 1, 1).expand(N, self.H, 1)  # (N, H, 1)
        # scores of the last query row: the corrupted ones with column `pos` replaced...
        scores = ctx["scores_last"].index_select(0, rows.b)  # (N, H, T)
        new_col = (ctx["q_last"].index_select(0, rows.b) * k_new).sum(-1, keepdim=True) / scale  # (N, H, 1)
        scores.scatter_(2, col, new_col)
        resid = ctx["resid_last"].index_select(0, rows.b)  # (N, d)
        at_last = (rows.pos == T - 1).nonzero()[:, 0]
        if at_last.numel():  # ...or, where the last position itself changed, a new query row
            q_new = self.qkv(layer, x[at_last, 0], "q")  # (n, H, dh)
            k_rows = ctx["k"][rows.b[at_last]]  # (n, H, T, dh)
            k_rows[:, :, T - 1] = k_new[at_last]
            scores[at_last] = (q_new[:, :, None] @ k_rows.transpose(-1, -2))[:, :, 0] / scale
            resid[at_last] = row[at_last, 0]
        pattern = softmax_pattern(scores)  # (N, H, T)
        v = ctx["v"].index_select(0, rows.b)  # (N, H, T, dh)
        v.scatter_(2, col[..., None].expand(N, self.H, 1, self.dh), v_new[:, :, None])
        z = (pattern[..., None] * v).sum(-2)  # (N, H, dh); faster than N*H tiny matmuls
        resid = self.mlp(layer, (resid + self.out(layer, z))[:, None])  # (N, 1, d)
        return (readout or self.logits)(resid)[:, 0]

