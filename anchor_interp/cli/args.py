"""The shared command-line argument layer: one parser class, one error type, one parser per value kind.

Every script (find_heads, train.py, reproduce_identity_curve.py, head_study.py, the benchmarks) parses
its options with these, so bad input gets the same answer everywhere: ONE line on stderr, exit status 2.
Importing this module is cheap (no torch).
"""

from __future__ import annotations

import argparse
import re

__all__ = [
    "DEVICE_HELP",
    "RECIPE_NAMES",
    "UsageError",
    "parse_field_value",
    "parse_field_values",
    "parse_init_gamma",
]

_DEVICE_RE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")
DEVICE_HELP = "cpu (default), cuda, cuda:N or mps"


class UsageError(ValueError):
    """Bad command-line input: reported as one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + error
        raise UsageError(f"{message} (see {self.prog} --help)")



RECIPE_NAMES = ("fast", "quick", "paper")  # anchor_interp.training.RECIPES, named here without importing torch


def parse_field_value(text: str):
    """One ``FIELD=VALUE`` value: an int, a float, None / True / False (any case), else the string."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"none": None, "true": True, "false": False}.get(text.lower(), text)


def parse_field_values(items, option: str) -> dict:
    """``["lr=3e-4", "precision=bf16"]`` -> ``{"lr": 0.0003, "precision": "bf16"}``.
    Raises ArgumentTypeError naming ``option`` for an item without ``=``."""
    pairs = {}
    for item in items:
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"{option} {item!r}: expected FIELD=VALUE")
        key, val = item.split("=", 1)
        pairs[key.strip()] = parse_field_value(val.strip())
    return pairs


def parse_init_gamma(text: str):
    """``--init-gamma`` values: a number (std = d_in^-gamma), ``tl`` (TransformerLens' default
    initialisation: ``None``) or ``preset`` (the preset's own scale). Raises ArgumentTypeError otherwise."""
    if text in ("preset", "tl"):
        return None if text == "tl" else "preset"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use a number (e.g. 0.75), 'tl' or 'preset'") from None

def _nonneg_int(name: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"{name} must be >= 0, got {value}")
        return value

    return parse


def _device(text: str) -> str:
    if not _DEVICE_RE.match(text):
        raise argparse.ArgumentTypeError(f"--device {text!r} is not a device; allowed: cpu, cuda, cuda:N, mps")
    return text
