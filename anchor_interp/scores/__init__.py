"""Per-head scores from a model and its rows, each in documented units (docs/concepts.md).

    patterns.py  cached attention patterns -> pattern scores (shift, broadcast, sink, self, uniform, task rows)
    weights.py   model weights -> OV copying, positional QK preference, direct logit attribution
    ablation.py  a set of heads + rows -> accuracy / loss / KL change; the circuit check and its thresholds

Importing this package is cheap: import the submodule you need.
"""
