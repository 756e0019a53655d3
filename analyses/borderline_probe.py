"""Why are heads borderline, and which label-rule change would settle them? (issue 12, probe only)

    python analyses/borderline_probe.py dump --seeds 0 1 --rows 256        # labeller evidence, main + 5 folds
    python analyses/borderline_probe.py simulate --seeds 0 1 --rows 256    # reasons + rule variants

``dump`` runs ``anchor_interp.labels.analyse_heads`` as ``analyses/validate_labels.py`` did until the recheck
of 2026-12-01 (held-out rows, sample seed 1000 + k, ``seed=0``, the folds only: ``recheck=False``) on every
validation model of the chosen seeds and records, per head,
the role evidence the rule saw on the whole batch and on each of the 5 stability folds (effect, 95% interval,
margin, routes, whether it passes), with the final ``borderline`` / ``stability``. One JSON per model in
``--out/<rows>/`` (default ``~/.cache/anchor_interp/borderline_probe``); existing files are kept.

``simulate`` reads those dumps and the oracle's cached heads (``analyses/results/validation/oracle/``) and
prints (1) why each borderline head is borderline today -- ``T`` its deciding role (or route) lies within its
margin of a threshold, ``R`` its two largest passing roles give different labels within a margin of each other,
``F`` its 5 fold labels are not unanimous -- and (2) for a few rule variants, re-applied to the stored numbers,
the borderline share, the strong borderline heads (oracle label shift / broadcast with the oracle's effect of
that role >= 0.2) and shift / broadcast precision and recall against the oracle re-decided with the same rule.
The oracle stores no intervals, so for the ``stat`` variant its tie test uses a fixed proxy margin
(``--oracle-margin``, default 0.03; the labeller's margins on these heads are 0.02-0.06).

Variants (label rule / fold test):

- ``argmax``: the rule until 2026-12-01: the label is the passing role with the largest effect; borderline on
  ``T``, ``R``, ``F``.
- ``stat``: passing roles within max(margin_a, margin_b) of the largest are tied; among tied roles the label
  follows the order shift > broadcast > copy (shifts among themselves: largest effect); ties are not
  borderline by themselves.
- ``fixed:<t>``: the same order among passing roles within ``t`` (a fixed effect difference) of the largest;
  borderline when that difference lies within a margin of ``t``.
- ``sure``: the largest operation (shift or broadcast, by effect) when one passes surely (its effect less
  its margin reaches the threshold), else the largest passing role of any kind (an uncertain operation
  does not outrank a larger copy).
- ``order``: the order alone (a head with a passing shift is labelled shift). With the ``confirm`` fold test
  this is the rule adopted on 2026-12-01 (``anchor_interp.labels.rule``; ties between offsets are not
  borderline, near ties are only counted between a shift and a broadcast).

Fold tests: ``exact`` (until 2026-12-01: every fold's own label equals the head's label), ``confirm`` (since:
the fold gives the same label and kind, and for ``shift(k)`` a shift from offset ``k`` passes on it) and
``consistent`` (a fold
disagrees only when its own evidence rejects the label at the fold's margins: the label's role is missing or
lies more than its margin below the effect threshold, or a role that surely passes exceeds it by more than
the rule's tie plus the larger margin; a role-less label is rejected by any role that surely passes).

Bad input (no dumps for the chosen seeds and rows, a models folder that does not exist) prints one ``error:``
line and exits with status 2.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from anchor_interp.atomic import atomic_write_text  # noqa: E402

DEFAULT_MODELS = Path.home() / ".cache" / "anchor_interp" / "validation"
DEFAULT_OUT = Path.home() / ".cache" / "anchor_interp" / "borderline_probe"
ORACLE = Path(__file__).resolve().parent / "results" / "validation" / "oracle"  # the oracle at 512 rows (oracle_256: before 2026-12-01)
EFFECT, ROUTE, MIN_MARGIN, STRONG = 0.1, 0.05, 0.02, 0.2
ORDER = {"shift": 0, "broadcast": 1, "copy": 2}
VARIANTS = [("argmax", "exact"), ("argmax", "consistent"), ("stat", "exact"), ("stat", "consistent"),
            ("fixed:0.05", "consistent"), ("fixed:0.1", "consistent"), ("order", "consistent"), ("order", "confirm"),
            ("argmax", "confirm"), ("stat", "confirm"), ("sure", "confirm")]


# ----------------------------------------------------------------------------------------------
# dump


def dump(models_dir: Path, out: Path, rows: int, seeds: list[int]) -> None:
    """Record the rule's inputs on the whole batch and on every fold, for every chosen model."""
    import torch

    import anchor_interp.labels as labels
    import anchor_interp.labels.stability as stability
    from anchor_interp.labels.rule import decide
    from anchor_interp.models.checkpoint import load_checkpoint

    torch.set_num_threads(1)
    calls: list[dict] = []

    def recording_decide(ev, th):
        rec = decide(ev, th)
        calls.append({"head": rec.name, "label": rec.label, "offset": rec.offset, "kind": rec.kind,
                      "borderline": rec.borderline, "roles": [dict(r) for r in rec.roles]})
        return rec

    labels.decide = stability.decide = recording_decide  # analyse_heads and fold_labels look it up at call time
    folder = out / str(rows)
    folder.mkdir(parents=True, exist_ok=True)
    for f in sorted(models_dir.glob("*__seed*")):
        seed = int(f.name.rsplit("seed", 1)[1])
        path = folder / f"{f.name}.json"
        if seed not in seeds or path.is_file() or not (f / "checkpoint.json").is_file():
            continue
        model, task = load_checkpoint(f)
        model.eval()
        calls.clear()
        t0 = time.perf_counter()
        an = labels.analyse_heads(model, task.sample(rows, split="test", seed=1000 + seed), task, seed=0,
                                  recheck=False)
        n = len(an.records)
        folds = [calls[n * (i + 1): n * (i + 2)] for i in range(len(calls) // n - 1)]
        atomic_write_text(path, json.dumps({
            "name": f.name, "rows": rows, "main": calls[:n], "folds": folds,
            "final": [{"head": r.name, "borderline": r.borderline, "stability": r.stability} for r in an.records]}))
        print(f"{f.name}: {time.perf_counter() - t0:.1f} s", flush=True)


# ----------------------------------------------------------------------------------------------
# the rule variants, on stored numbers


def _name(r: dict) -> str:
    if r["role"] == "shift":
        return f"shift({r['offset']:+d})"
    return "broadcast" if r["role"] == "broadcast" else "neither/copy"


def _key(c: dict) -> str:
    return c["label"] + (f"({c['offset']:+d})" if c["offset"] is not None else "") + (f"/{c['kind']}" if c["kind"] else "")


def _route(r: dict) -> float:
    return max(r.get("routes", {}).values(), default=0.0)


def _rank(r: dict) -> tuple:
    return ORDER[r["role"]], -r["effect"]


def _tie(rule: str, top: dict, r: dict) -> float:
    """How far below the top role a role may lie and still be tied with it."""
    if rule == "argmax":
        return 0.0
    if rule == "stat":
        return max(top["margin"], r["margin"])
    return float("inf") if rule == "order" else float(rule.split(":")[1])


def decide(roles: list[dict], rule: str) -> tuple[str | None, bool]:
    """(label of the passing roles or None, whether it hangs on a tie edge) under ``rule``."""
    passing = sorted((r for r in roles if r["passes"]), key=lambda r: -r["effect"])
    if not passing:
        return None, False
    top = passing[0]
    if rule == "sure":  # the largest operation when one passes surely, else the largest role of any kind
        ops = [r for r in passing if r["role"] != "copy"]
        return _name(ops[0] if any(r["effect"] - r["margin"] >= EFFECT for r in ops) else top), False
    if rule == "argmax":
        edge = len(passing) > 1 and _name(passing[1]) != _name(top) and \
            top["effect"] - passing[1]["effect"] < max(top["margin"], passing[1]["margin"])
        return _name(top), edge
    tied = [r for r in passing if top["effect"] - r["effect"] < _tie(rule, top, r) or r is top]
    best = min(tied, key=_rank)
    edge = rule.startswith("fixed") and any(
        r is not top and _rank(r) <= _rank(best)
        and abs(top["effect"] - r["effect"] - _tie(rule, top, r)) < max(r["margin"], top["margin"]) for r in passing)
    return _name(best), edge


def consistent(label: str, roles: list[dict], rule: str) -> bool:
    """A fold's evidence does not reject ``label`` at the fold's own margins (module docstring)."""
    def surely(r):
        return r["effect"] - r["margin"] >= EFFECT and _route(r) >= ROUTE + MIN_MARGIN

    if label not in ("broadcast", "neither/copy") and not label.startswith("shift"):
        return not any(surely(r) for r in roles)
    mine = [r for r in roles if _name(r) == label]
    if not mine:
        return False
    m = max(mine, key=lambda r: r["effect"])
    if m["effect"] + m["margin"] < EFFECT or _route(m) < ROUTE - MIN_MARGIN:
        return False
    top = max([r for r in roles if surely(r)] + [m], key=lambda r: r["effect"])
    return top["effect"] - m["effect"] < _tie(rule, top, m) + max(top["margin"], m["margin"])


def confirmed(label: str, fold: dict, rule: str) -> bool:
    """The fold gives ``label``'s label and kind and, for ``shift(k)``, a shift from offset ``k`` passes on it."""
    mine = decide(fold["roles"], rule)[0] or _key(fold)
    if label.startswith("shift"):
        return mine.startswith("shift") and any(r["passes"] and _name(r) == label for r in fold["roles"])
    return mine == label


def _oracle_label(heads: dict, rule: str, margin: float) -> tuple[str, float]:
    roles = [dict(r, margin=margin, passes=True) for r in heads["roles"]]
    lab, _ = decide(roles, rule)
    if lab is None:
        return (f"neither/{heads['kind']}" if heads.get("kind") else "neither"), 0.0
    effect = max(r["effect"] for r in roles if _name(r) == lab)
    return lab, effect


def _coarse(key: str) -> str:
    return "shift" if key.startswith("shift") else key


def _threshold_edge(roles: list[dict]) -> bool:
    passing = sorted((r for r in roles if r["passes"]), key=lambda r: -r["effect"])
    deciding = passing[:1] or sorted(roles, key=lambda r: -r["effect"])[:1]
    return any(abs(r["effect"] - EFFECT) < r["margin"] or abs(_route(r) - ROUTE) < MIN_MARGIN for r in deciding)


def evaluate(models: list[dict], oracle: dict, rule: str, folds: str, oracle_margin: float) -> dict:
    """One variant on every head: borderline share, strong borderline heads, precision / recall."""
    out = collections.Counter()
    pr = {lab: collections.Counter() for lab in ("shift", "broadcast")}
    for m in models:
        for i, h in enumerate(m["main"]):
            lab, edge = decide(h["roles"], rule)
            label = lab or _key(h)
            if folds == "exact":
                fold_bad = any((decide(f[i]["roles"], rule)[0] or _key(f[i])) != label for f in m["folds"])
            elif folds == "confirm":
                fold_bad = any(not confirmed(label, f[i], rule) for f in m["folds"])
                ops = sorted((r for r in h["roles"] if r["passes"] and r["role"] != "copy"), key=lambda r: -r["effect"])
                edge = len(ops) > 1 and ops[0]["role"] != ops[1]["role"] and \
                    ops[0]["effect"] - ops[1]["effect"] < max(ops[0]["margin"], ops[1]["margin"])
            else:
                fold_bad = any(not consistent(label, f[i]["roles"], rule) for f in m["folds"])
            thr = _threshold_edge(h["roles"])
            borderline = thr or edge or fold_bad
            olab, oeff = _oracle_label(oracle[m["name"]][h["head"]], rule, oracle_margin)
            strong = oeff >= STRONG and _coarse(olab) in pr
            out["heads"] += 1
            out["borderline"] += borderline
            out["strong"] += strong
            out["strong_borderline"] += strong and borderline
            out["disagree"] += _coarse(label) != _coarse(olab)
            out["disagree_not_borderline"] += _coarse(label) != _coarse(olab) and not borderline
            if borderline:
                out["why:" + ("T" if thr else "-") + ("R" if edge else "-") + ("F" if fold_bad else "-")] += 1
            for lab_, c in pr.items():
                for tag in ("",) + (("strong_",) if oeff >= STRONG else ()):
                    c[tag + "tp"] += _coarse(label) == lab_ == _coarse(olab)
                    c[tag + "fp"] += _coarse(label) == lab_ != _coarse(olab)
                    c[tag + "fn"] += _coarse(olab) == lab_ != _coarse(label)
    res = dict(out)
    for lab_, c in pr.items():
        for tag in ("", "strong_"):
            tp, fp, fn = c[tag + "tp"], c[tag + "fp"], c[tag + "fn"]
            res[f"{lab_}_{tag}P"] = f"{tp}/{tp + fp}"
            res[f"{lab_}_{tag}R"] = f"{tp}/{tp + fn}"
    return res


def reasons(models: list[dict]) -> list[str]:
    """Today's borderline heads, one line each: reason letters, label, fold labels, passing roles."""
    lines = []
    for m in models:
        for i, h in enumerate(m["main"]):
            if not m["final"][i]["borderline"]:
                continue
            _, tie = decide(h["roles"], "argmax")
            fk = [_key(f[i]) for f in m["folds"]]
            why = ("T" if _threshold_edge(h["roles"]) else "-") + ("R" if tie else "-") + ("F" if len(set(fk)) > 1 else "-")
            roles = ", ".join(f"{_name(r)} {r['effect']:.3f}±{r['margin']:.3f}" for r in h["roles"] if r["passes"])
            lines.append(f"{why} {m['name']} {h['head']} {_key(h)}  folds {dict(collections.Counter(fk))}  [{roles}]")
    return lines


def simulate(out: Path, rows: int, seeds: list[int], oracle_margin: float, oracle_dir: Path = ORACLE) -> str:
    paths = [p for p in sorted((out / str(rows)).glob("*__seed*.json")) if int(p.stem.rsplit("seed", 1)[1]) in seeds]
    if not paths:
        raise FileNotFoundError(f"no dumps for seeds {seeds} at {rows} rows in {out / str(rows)} (run the dump "
                                "subcommand first)")
    models = [json.loads(p.read_text()) for p in paths]
    oracle = {m["name"]: json.loads((oracle_dir / f"{m['name']}.json").read_text()).get("heads", {}) for m in models}
    models = [m for m in models if oracle[m["name"]]]
    lines = reasons(models)
    why = collections.Counter(line.split()[0] for line in lines)
    text = [f"seeds {seeds}, {rows} rows: {sum(len(m['main']) for m in models)} heads, {len(lines)} borderline; "
            f"reasons (T threshold edge, R near-equal roles, F folds not unanimous): {dict(why)}", *lines, ""]
    for rule, folds in VARIANTS:
        r = evaluate(models, oracle, rule, folds, oracle_margin)
        text.append(f"{rule:>10} {folds:<10} borderline {r['borderline']}/{r['heads']} = "
                    f"{r['borderline'] / r['heads']:.3f}; strong borderline {r['strong_borderline']}/{r['strong']}; "
                    f"disagree {r['disagree']} ({r['disagree_not_borderline']} not borderline); shift P {r['shift_P']} "
                    f"R {r['shift_R']} (strong {r['shift_strong_P']}, {r['shift_strong_R']}); broadcast P "
                    f"{r['broadcast_P']} R {r['broadcast_R']}; why {', '.join(f'{k[4:]}={v}' for k, v in sorted(r.items()) if k.startswith('why:'))}")
    return "\n".join(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["dump", "simulate"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--oracle-margin", type=float, default=0.03)
    p.add_argument("--oracle", type=Path, default=ORACLE, help="the oracle's cached heads (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        if args.command == "dump":
            if not args.models_dir.is_dir():
                raise FileNotFoundError(f"--models-dir {args.models_dir} does not exist (train the validation set "
                                        "with analyses/validation_models.py)")
            dump(args.models_dir, args.out, args.rows, args.seeds)
        else:
            if not args.oracle.is_dir():
                raise FileNotFoundError(f"--oracle {args.oracle} does not exist (run analyses/validate_labels.py first)")
            print(simulate(args.out, args.rows, args.seeds, args.oracle_margin, args.oracle))
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
