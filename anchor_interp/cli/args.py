"""The shared command-line argument layer: one parser class, one error type, one parser per value kind.

Every script (find_heads, train.py, reproduce_identity_curve.py, head_study.py, the benchmarks) parses
its options with these, so bad input gets the same answer everywhere: ONE line on stderr, exit status 2.
Importing this module is cheap (no torch).
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
from pathlib import Path

__all__ = [
    "DEVICE_HELP",
    "DEVICE_NAMES",
    "OneLineParser",
    "RECIPE_NAMES",
    "PRESET_NAMES",
    "RECIPE_FIELD_TYPES",
    "UsageError",
    "add_device_argument",
    "check_distinct",
    "check_known_fields",
    "check_writable_folder",
    "parse_device",
    "parse_field_value",
    "parse_field_values",
    "parse_init_gamma",
    "parse_nonneg_float",
    "parse_nonneg_int",
    "parse_pos_int",
    "parse_recipe_values",
    "resolve_cli_device",
    "parse_or_exit",
    "parse_output_file",
    "run_main",
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


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose ``error`` prints ONE line on stderr and exits with status 2 (SystemExit),
    for scripts whose ``main(argv)`` is also called from Python (the benchmarks)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(str(message).split())} (see {self.prog} --help)\n")



RECIPE_NAMES = ("fast", "quick", "paper")  # anchor_interp.training.RECIPES, named here without importing torch
PRESET_NAMES = ("small", "paper", "paper_lnpre", "mechanism")  # anchor_interp.models.PRESETS, likewise

# The fields of anchor_interp.training.Recipe and the kinds of value they take, named here without importing
# torch (tests/cli/test_bad_input_table.py checks that they match the dataclass). "number": an int or a float.
RECIPE_FIELD_TYPES = {
    "name": "str", "epochs": "int", "batch_size": "int", "lr": "number", "lr_start": "number",
    "lr_end": "number", "warmup_epochs": "number", "cosine_epochs": "number|None", "schedule_per": "str",
    "weight_decay": "number", "grad_clip": "number|None", "beta1": "number", "beta2": "number",
    "adam_eps": "number", "n_train": "int", "n_test": "int", "data": "str", "eval_every": "int",
    "early_stop_acc": "number|None", "checkpoint_every": "int", "precision": "str", "fused_adamw": "bool",
    "freeze": "patterns",
}
_KIND_WORDS = {"int": "an integer", "number": "a number", "number|None": "a number or None",
               "bool": "true or false", "str": "a string",
               "patterns": "comma-separated parameter-name patterns, e.g. blocks.*.b_*"}


def _fits(value, kind: str) -> bool:
    if kind == "str":
        return True
    if kind == "patterns":  # "a,b" on a command line; a list of strings in a sweep file
        return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
    if kind == "bool":
        return isinstance(value, bool)
    if value is None:
        return kind.endswith("|None")
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if kind == "int" else isinstance(value, (int, float))


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


def check_known_fields(pairs: dict, option: str, known, what: str = "field") -> dict:
    """Raise UsageError (one line naming ``option`` and the field) for a key of ``pairs`` not in ``known``
    (a collection of names, or a mapping name -> kind of value, see :data:`RECIPE_FIELD_TYPES`, whose values
    are checked too). Returns ``pairs``."""
    for key, value in pairs.items():
        if key not in known:
            raise UsageError(f"{option} {key}: unknown {what}; known: {', '.join(sorted(known))}")
        kind = known[key] if isinstance(known, dict) else None
        if kind is not None and not _fits(value, kind):
            raise UsageError(f"{option} {key}={value!r}: {key} must be {_KIND_WORDS[kind]}")
    return pairs


def parse_recipe_values(items, option: str = "--set") -> dict:
    """``--set FIELD=VALUE`` items -> recipe overrides, each field known and its value of the right kind;
    UsageError (one line naming the field) otherwise."""
    try:
        pairs = parse_field_values(items, option)
    except argparse.ArgumentTypeError as e:
        raise UsageError(str(e)) from None
    pairs = check_known_fields(pairs, option, RECIPE_FIELD_TYPES, "recipe field")
    if "freeze" in pairs:  # "blocks.*.b_*,unembed.b_U" -> a list of patterns
        pairs["freeze"] = [p for p in pairs["freeze"].split(",") if p]
    return pairs


def parse_init_gamma(text: str):
    """``--init-gamma`` values: a number (std = d_in^-gamma), ``tl`` (TransformerLens' default
    initialisation: ``None``), ``torch`` (PyTorch's default init, as in the authors' code) or ``preset``
    (the preset's own scale). Raises ArgumentTypeError otherwise."""
    if text in ("preset", "tl", "torch"):
        return None if text == "tl" else text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use a number (e.g. 0.75), 'tl', 'torch' or 'preset'") from None

def parse_int_at_least(name: str, least: int):
    """A parser of integers >= ``least`` for the option ``name`` (ArgumentTypeError naming it otherwise)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{name} must be >= {least}, got {value}")
        return value

    return parse


def parse_nonneg_int(name: str):
    """A parser of integers >= 0 for the option ``name``."""
    return parse_int_at_least(name, 0)


_nonneg_int = parse_nonneg_int


def parse_pos_int(name: str):
    """A parser of integers >= 1 for the option ``name``."""
    return parse_int_at_least(name, 1)


def check_distinct(values, option: str) -> None:
    """UsageError (one line) if ``values`` repeats an item (e.g. ``--seeds 0 0``)."""
    if values is not None and len(set(values)) != len(values):
        raise UsageError(f"{option} {' '.join(map(str, values))}: give distinct values")


def check_writable_folder(path, option: str = "--out") -> Path:
    """Raise UsageError (one line naming ``option``) unless ``path`` is, or can be created as, a folder
    that accepts new files: ``path`` must not be a file, and the nearest existing of ``path`` and its
    ancestors must be a folder where a new entry can be made (tried with a temporary folder, removed
    again). Creates nothing that stays. Call it before any work or import of torch."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path}: {path} exists and is not a folder")
    anc = path
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise UsageError(f"{option} {path}: {anc} is not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".anchor_interp-probe-", dir=anc))
    except OSError as e:
        raise UsageError(f"{option} {path}: cannot create files under {anc} ({e.strerror})") from None
    return path


def parse_or_exit(parser: argparse.ArgumentParser, argv=None, checks=()) -> argparse.Namespace:
    """``parser.parse_args(argv)`` (a :class:`_Parser`), then each ``check(args)`` of ``checks``; a
    UsageError from either is printed as ONE line on stderr and ends the script: SystemExit(2)."""
    try:
        args = parser.parse_args(argv)
        for check in checks:
            check(args)
    except (UsageError, argparse.ArgumentTypeError) as e:
        parser.exit(2, f"{parser.prog}: error: {' '.join(str(e).split())}\n")
    return args


def parse_output_file(option: str):
    """A parser of output file paths for ``option`` (e.g. ``--json``): the file's folder must be, or be
    creatable as, a writable folder (:func:`check_writable_folder`); ArgumentTypeError naming ``option``
    otherwise. Checked when the arguments are parsed, so that a long run cannot end unable to save."""

    def parse(text: str) -> str:
        path = Path(text)
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{option} {text}: is a folder; give a file path")
        try:
            check_writable_folder(path.parent, option)
        except UsageError as e:
            raise argparse.ArgumentTypeError(str(e).replace(f"{option} {path.parent}:", f"{option} {text}:")) from None
        return text

    return parse


def run_main(main, argv=None, prog: str = "error") -> int:
    """Run a script's ``main(argv)``, answering UsageError (and argparse's ArgumentTypeError) with ONE
    line on stderr and exit status 2. ``--help`` still prints the help and exits 0."""
    try:
        return main(argv)
    except (UsageError, argparse.ArgumentTypeError) as e:
        import sys

        print(f"{prog}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


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
