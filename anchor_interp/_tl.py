"""The one module that imports TransformerLens.

Everything TransformerLens-specific that the rest of the package needs goes through here, so that a
move from ``HookedTransformer`` (transformer-lens 3.9.x) to ``TransformerBridge`` touches one file.
Importing this module costs ~4 s (TransformerLens pulls in transformers); import it lazily from
code paths that need a model.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from transformer_lens import HookedTransformer, HookedTransformerConfig

__all__ = [
    "HookedTransformer",
    "HookedTransformerConfig",
    "build_model",
    "config_from_dict",
    "config_to_dict",
    "get_act_name",
]


def get_act_name(name: str, layer: int | None = None) -> str:
    """Full hook name for a short activation name, e.g. ``get_act_name("pattern", 1)`` ->
    ``"blocks.1.attn.hook_pattern"``. Thin wrapper over ``transformer_lens.utils.get_act_name``."""
    from transformer_lens.utils import get_act_name as _get_act_name

    return _get_act_name(name, layer)


def build_model(cfg: HookedTransformerConfig) -> HookedTransformer:
    """A freshly initialised HookedTransformer for ``cfg`` (TransformerLens' deprecation warning silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return HookedTransformer(cfg)


# Config fields that are derived by HookedTransformerConfig.__post_init__ or that describe where the
# model lives rather than what it is; they are not passed back to the constructor.
_DERIVED_FIELDS = ("n_params", "device", "dtype")


def config_to_dict(cfg: HookedTransformerConfig) -> dict:
    """The JSON-serialisable fields of a HookedTransformerConfig (dtype written as a string)."""
    out = {}
    for key, value in cfg.to_dict().items():
        if key == "dtype":
            out[key] = str(value).removeprefix("torch.")
        elif isinstance(value, (int, float, str, bool, type(None))):
            out[key] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, (int, float, str, bool)) for v in value):
            out[key] = list(value)
        # anything else (e.g. tokenizer objects) is not part of an anchor model's definition
    return out


def config_from_dict(d: dict, device: str = "cpu") -> HookedTransformerConfig:
    """Rebuild a HookedTransformerConfig from :func:`config_to_dict` output.

    Raises ``TypeError`` (from the constructor) on fields this TransformerLens version does not know.
    """
    import torch

    fields = {k: v for k, v in d.items() if k not in _DERIVED_FIELDS}
    fields["device"] = device
    if "dtype" in d:
        fields["dtype"] = getattr(torch, d["dtype"])
    known = set(HookedTransformerConfig.__dataclass_fields__)
    unknown = sorted(set(fields) - known)
    if unknown:
        raise TypeError(f"unknown HookedTransformerConfig fields {unknown}")
    return HookedTransformerConfig(**fields)
