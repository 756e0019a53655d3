"""Command-line entry points and their shared argument layer.

    args.py        one parser class, one error type (UsageError: one line, exit 2), value parsers
    find_heads.py  ``anchor-find-heads`` / ``python analyses/find_heads.py``: load or train, analyse, report

Importing this package is cheap (no torch): ``--help`` and bad input answer at once.
"""

from anchor_interp.cli.args import (
    RECIPE_NAMES,
    UsageError,
    parse_field_value,
    parse_field_values,
    parse_init_gamma,
)
from anchor_interp.cli.find_heads import DEFAULT_REPORT, PROG, build_parser, format_head_table, main

__all__ = [
    "DEFAULT_REPORT",
    "PROG",
    "RECIPE_NAMES",
    "UsageError",
    "build_parser",
    "format_head_table",
    "main",
    "parse_field_value",
    "parse_field_values",
    "parse_init_gamma",
]
