"""Model presets: HookedTransformer configs sized for an anchor task, and seeded construction.

Presets (parameter counts for the identity task, vocabulary 201, 9 inputs; see docs/models.md):

- ``small``: 2 layers x 4 heads, attention only, d_model 128, causal (the default small preset).
- ``paper``: 4 layers x 4 heads, d_model 400, d_head 64, d_mlp 1200, ReLU, causal, learned positions.
  Pre-LN with biases (HookedTransformer), where the paper's model is post-LN without biases.
  Initialised with std = d_in ** -0.75 by default (``init_gamma=None`` gives TransformerLens' init).
- ``paper_lnpre``: ``paper``'s sizes with LayerNorm without weights (LNPre) and PyTorch's default init:
  the HookedTransformer closest to the authors' model in the inductive-bias study (docs/reproduction.md).
- ``mechanism``: 2 layers x 1 head, attention only, bidirectional, d_model 201 (the paper's
  mechanism study).

Building a model imports TransformerLens (via ``anchor_interp.models.adapter``, ~4 s) on first use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from anchor_interp.models.adapter import HookedTransformer, HookedTransformerConfig


@dataclass(frozen=True)
class Preset:
    """Architecture fields of a preset; ``d_vocab`` and ``n_ctx`` come from the task."""

    name: str
    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_mlp: int | None  # None = attention only
    attention_dir: str  # "causal" | "bidirectional"
    act_fn: str | None = "relu"
    normalization_type: str | None = "LN"
    init_gamma: float | str | None = None  # std = d_in ** -init_gamma; None = TransformerLens init; "torch" = PyTorch's
    description: str = ""

    def config_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = dict(
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            d_model=self.d_model,
            d_head=self.d_head,
            attention_dir=self.attention_dir,
            normalization_type=self.normalization_type,
            positional_embedding_type="standard",
        )
        if self.d_mlp is None:
            fields.update(attn_only=True, act_fn=None)
        else:
            fields.update(attn_only=False, d_mlp=self.d_mlp, act_fn=self.act_fn)
        return fields


PRESETS: dict[str, Preset] = {
    "small": Preset(
        "small", n_layers=2, n_heads=4, d_model=128, d_head=32, d_mlp=None, attention_dir="causal",
        description="default small preset: 2L x 4H attention-only, causal, d_model 128",
    ),
    # init_gamma 0.75: with TransformerLens' default init this pre-LN model memorises identity learning
    # under the authors' recipe (held-out 0.13 at epoch 30, N = 1000); with std = d_in^-0.75 it reaches
    # 1.00 by epoch 20, as the authors' post-LN model does by epoch 25 (docs/reproduction.md).
    "paper": Preset(
        "paper", n_layers=4, n_heads=4, d_model=400, d_head=64, d_mlp=1200, attention_dir="causal",
        act_fn="relu", init_gamma=0.75,
        description="the authors' 4L x 4H model (pre-LN here, post-LN in the paper), init std d_in^-0.75",
    ),
    # The HookedTransformer closest to the authors' post-LN model in the inductive-bias study
    # (docs/reproduction.md): PyTorch's init and LayerNorm without weights. Measured with attention/MLP
    # biases frozen at zero (Recipe.freeze = ["blocks.*.b_*"]); freezing them changed nothing measurable.
    "paper_lnpre": Preset(
        "paper_lnpre", n_layers=4, n_heads=4, d_model=400, d_head=64, d_mlp=1200, attention_dir="causal",
        act_fn="relu", normalization_type="LNPre", init_gamma="torch",
        description="the paper's sizes, LNPre, PyTorch's init: the closest HookedTransformer to the authors' model",
    ),
    "mechanism": Preset(
        "mechanism", n_layers=2, n_heads=1, d_model=201, d_head=201, d_mlp=None,
        attention_dir="bidirectional",
        description="the paper's mechanism model: 2L x 1H attention-only, bidirectional, d_model 201",
    ),
}

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")  # the one device vocabulary (cli.args parses it)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The runtime device of a device name: the one resolver of the package's device vocabulary.

    ``"auto"`` (or None) -> cuda if available, else cpu; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` and ``"mps"``
    (or a ``torch.device`` of those types) pass through. Raises ValueError for other names, for cuda when
    no GPU is visible or ``N`` is not a visible GPU, and for mps when MPS is not available.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device={device!r} is not a device; use one of {DEVICE_CHOICES}") from e
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device={device!r}: only {DEVICE_CHOICES} are supported")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but no CUDA GPU is visible; use device='cpu' or 'auto'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r} but only {torch.cuda.device_count()} CUDA device(s) are "
                             f"visible; use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device={device!r} but MPS is not available on this machine; use device='cpu'")
    return dev


def check_config_for_task(cfg: HookedTransformerConfig, task) -> None:
    """Raise ValueError if ``cfg`` cannot run ``task`` (:func:`anchor_interp.models.validate.check_model_fits_task`)."""
    from anchor_interp.models.validate import check_model_fits_task

    check_model_fits_task(cfg, task)


def model_config(preset: str, task, **overrides: Any) -> HookedTransformerConfig:
    """The HookedTransformerConfig of ``preset`` sized for ``task`` (``d_vocab``, ``n_ctx``), with
    ``overrides`` (any HookedTransformerConfig field) applied last.

    Raises ValueError for an unknown preset or an override that makes the config unable to run the task.
    """
    from anchor_interp.models.adapter import HookedTransformerConfig

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known presets: {sorted(PRESETS)}")
    fields = PRESETS[preset].config_fields()
    fields.update(d_vocab=task.vocab_size, d_vocab_out=task.vocab_size, n_ctx=task.seq_len,
                  model_name=f"anchor-{preset}", default_prepend_bos=False)
    if overrides.get("attn_only") and "act_fn" not in overrides:
        fields["act_fn"] = None
    fields.update(overrides)
    try:
        cfg = HookedTransformerConfig(**fields)
    except TypeError as e:
        raise ValueError(f"model_config({preset!r}, overrides={sorted(overrides)}): {e}") from e
    check_config_for_task(cfg, task)
    return cfg


def _fan_in(name: str, cfg: HookedTransformerConfig) -> int | None:
    """Input width d_in of a weight matrix, by its state_dict name (None for biases and norms)."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("W_E", "W_pos", "W_Q", "W_K", "W_V", "W_in", "W_U"):
        return cfg.d_model
    if leaf == "W_O":
        return cfg.n_heads * cfg.d_head
    if leaf == "W_out":
        return cfg.d_mlp
    return None


def apply_init_gamma(model: HookedTransformer, gamma: float, seed: int) -> None:
    """Re-initialise every weight matrix with std = d_in ** -gamma (arXiv 2405.05409), biases to 0,
    norm weights to 1. d_in is the width a matrix reads: d_model for W_E, W_pos, W_Q/K/V, W_in, W_U;
    n_heads * d_head for W_O; d_mlp for W_out. Larger gamma = smaller initial weights."""
    if not math.isfinite(gamma):
        raise ValueError(f"init_gamma must be a finite number (e.g. 0.5 or 1.0); got {gamma!r}")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            d_in = _fan_in(name, model.cfg)
            if d_in is not None:
                p.copy_(torch.randn(p.shape, generator=gen) * d_in ** (-gamma))
            elif name.endswith((".w", "ln_final.w")):
                p.fill_(1.0)
            else:
                p.zero_()


def apply_torch_init(model: HookedTransformer, seed: int) -> None:
    """Re-initialise as PyTorch's defaults initialise the authors' model (spec section 4): embeddings
    and positions N(0, 1); every weight matrix uniform in +-1/sqrt(d_in) (d_in as in
    :func:`apply_init_gamma`); the unembedding bias uniform in +-1/sqrt(d_model); the other biases 0
    (the authors' attention and MLP have none); norm weights 1."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            d_in = _fan_in(name, model.cfg)
            if name.endswith(("W_E", "W_pos")):
                p.copy_(torch.randn(p.shape, generator=gen))
            elif d_in is not None or name.endswith("b_U"):
                bound = (d_in or model.cfg.d_model) ** -0.5
                p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) * bound)
            elif name.endswith((".w", "ln_final.w")):
                p.fill_(1.0)
            else:
                p.zero_()


def make_model(
    preset_or_config: str | HookedTransformerConfig,
    task,
    *,
    seed: int,
    init_gamma: float | str | None = "preset",
    device: str | torch.device = "cpu",
) -> HookedTransformer:
    """A freshly initialised HookedTransformer for ``task``.

    ``preset_or_config``: a preset name from PRESETS or a HookedTransformerConfig (passed through,
    checked against the task). ``seed`` fixes the initial weights (the global torch RNG is left as it
    was). ``init_gamma``: a number: std = d_in ** -init_gamma for every weight matrix; None:
    TransformerLens' GPT-2 init; "torch": PyTorch's default init of the authors' model
    (:func:`apply_torch_init`); "preset" (default): the preset's own choice (``Preset.init_gamma``:
    0.75 for ``paper``, None for the others; a config made by :func:`model_config` keeps its preset's
    choice through ``cfg.model_name``). ``device``: any name :func:`resolve_device` takes ("auto", "cpu",
    "cuda", "cuda:N", "mps").
    Raises ValueError on an unknown preset, an incompatible config or a bad device.
    """
    from anchor_interp.models.adapter import HookedTransformerConfig, build_model

    if isinstance(preset_or_config, str):
        cfg = model_config(preset_or_config, task)
    elif isinstance(preset_or_config, HookedTransformerConfig):
        cfg = preset_or_config
        check_config_for_task(cfg, task)
    else:
        raise ValueError(
            f"preset_or_config must be a preset name {sorted(PRESETS)} or a HookedTransformerConfig; "
            f"got {type(preset_or_config).__name__}"
        )
    if not isinstance(seed, int):
        raise ValueError(f"seed must be an int; got {seed!r}")
    if init_gamma == "preset":
        name = preset_or_config if isinstance(preset_or_config, str) else cfg.model_name.removeprefix("anchor-")
        init_gamma = PRESETS[name].init_gamma if name in PRESETS else None
    elif isinstance(init_gamma, str) and init_gamma != "torch":
        raise ValueError(f"init_gamma={init_gamma!r}: use a number, None (TransformerLens init), 'torch' "
                         "(PyTorch's default init) or 'preset'")
    dev = resolve_device(device)
    cfg.seed = None  # TransformerLens would reseed every global RNG; we seed locally instead
    cfg.device = "cpu"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(cfg)
    if init_gamma == "torch":
        apply_torch_init(model, seed)
    elif init_gamma is not None:
        apply_init_gamma(model, float(init_gamma), seed)
    model.eval()
    return model.to(dev) if dev.type != "cpu" else model


def count_parameters(model: torch.nn.Module) -> int:
    """Number of trainable parameters (buffers such as the attention mask are not counted)."""
    return sum(p.numel() for p in model.parameters())
