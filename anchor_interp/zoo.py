"""Deprecated alias of anchor_interp.models.zoo (removed in 0.2)."""

from anchor_interp._deprecated import alias_module

alias_module(__name__)
