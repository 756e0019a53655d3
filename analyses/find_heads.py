"""Find the shift and broadcast heads of the shipped default model (or any checkpoint) and write the report.

    python analyses/find_heads.py            # default model -> out/find_heads/report.html (+ .json, PNGs)
    python analyses/find_heads.py --help     # every option (the same as the `anchor-find-heads` command)

A thin wrapper around anchor_interp.cli.main.
"""

import sys

from anchor_interp.cli import main

if __name__ == "__main__":
    sys.exit(main())
