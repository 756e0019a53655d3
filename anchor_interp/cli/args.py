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
    "DEVICE_NAMES",
    "RECIPE_NAMES",
    "UsageError",
    "add_device_argument",
    "parse_device",
    "parse_field_value",
    "parse_field_values",
    "parse_init_gamma",
    "parse_nonneg_float",
    "parse_nonneg_int",
    "resolve_cli_device",
]

# The one device vocabulary (anchor_interp.models.presets.DEVICE_CHOICES, named here without importing torch):
# parse_device checks the spelling when the arguments are parsed, resolve_cli_device (-> models.resolve_device)
# turns it into a torch.device when the script runs.
DEVICE_NAMES = ("auto", "cpu", "cuda", "cuda:N", "mps")
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
DEVICE_HELP = "auto (cuda if available, else cpu), cpu, cuda, cuda:N or mps"


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

def parse_nonneg_int(name: str):
    """A parser of integers >= 0 for the option ``name`` (ArgumentTypeError naming it otherwise)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"{name} must be >= 0, got {value}")
        return value

    return parse


_nonneg_int = parse_nonneg_int


def parse_nonneg_float(name: str):
    """A parser of finite numbers >= 0 for the option ``name`` (ArgumentTypeError naming it otherwise)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not (0 <= value < float("inf")):
            raise argparse.ArgumentTypeError(f"{name} must be a number >= 0, got {text}")
        return value

    return parse


def parse_device(text: str) -> str:
    """``--device`` values: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (returned as given).
    Raises ArgumentTypeError otherwise. Whether the device exists is checked by :func:`resolve_cli_device`."""
    if not _DEVICE_RE.match(text):
        raise argparse.ArgumentTypeError(
            f"--device {text!r} is not a device; allowed: {', '.join(DEVICE_NAMES)}")
    return text


_device = parse_device  # the name the find_heads CLI imports


def add_device_argument(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """Add the shared ``--device`` option (:func:`parse_device`) with ``default``."""
    parser.add_argument("--device", type=parse_device, default=default, metavar="DEVICE",
                        help=f"{DEVICE_HELP} (default: {default})")


def resolve_cli_device(text: str):
    """The ``torch.device`` of a parsed ``--device`` value (:func:`anchor_interp.models.resolve_device`:
    ``auto`` -> cuda if available, else cpu). Raises UsageError (one line, exit 2) naming ``--device``
    when that device is not available here. Imports torch."""
    from anchor_interp.models.presets import resolve_device

    try:
        return resolve_device(text)
    except ValueError as e:
        raise UsageError(f"--device {text}: {e}") from None
