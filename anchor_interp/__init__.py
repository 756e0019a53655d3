"""anchor_interp: find the shift and broadcast heads of transformers trained on anchor-function tasks.

Importing the package is cheap: submodules (``anchor_interp.tasks``, ``anchor_interp.patching``, ...)
are imported on their own, so a command-line ``--help`` never pays for torch or TransformerLens.
"""

__version__ = "0.1.0"
