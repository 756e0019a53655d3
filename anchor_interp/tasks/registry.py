"""The task catalogue: names -> factories. docs/tasks.md describes every entry.

Each factory takes keyword parameters with defaults; ``task.params`` holds all of them (defaults
filled in, JSON types), so ``make_task(task.name, **task.params)`` recreates the task.
"""

from __future__ import annotations

import inspect

from anchor_interp.tasks.base import (
    FILLER_HIGH,
    FILLER_LOW,
    MODULUS,
    SEQ_LEN,
    Task,
    TaskError,
    check_int_param,
)
from anchor_interp.tasks.block import BlockGroup, BlockTask

BASE_VALUES = tuple(range(FILLER_LOW, FILLER_HIGH + 1))  # 20..99: key base values, also the filler range
MAX_SEQ_LEN = 64

# single-anchor maps of the composition and synonym tasks (the paper's f1=+5, f2=+1, f3=-2, f4=-8, f9=-2)
COMPOSITION_SHIFTS = {1: 5, 2: 1, 3: -2, 4: -8, 9: -2}
COMPOSITION_PAIRS = ("13", "23", "43", "31", "32", "34", "12", "14", "21", "41", "24", "42")
COMPOSITION_MASKED = ("43", "34")
SYNONYM_PAIRS = COMPOSITION_PAIRS + ("19", "91", "29", "92", "49", "94")
SYNONYM_MASKED = ("49", "94")
CLASS_LABELS = (11, 12, 13, 14)  # classification labels: key intervals [20,39] [40,59] [60,79] [80,99]

_ANCHOR_KEY = (("anchor", 0), ("key", 1))


def _seq(name, seq_len):
    return check_int_param(name, "seq_len", seq_len, 1, MAX_SEQ_LEN)


def _identity_group(slots=_ANCHOR_KEY, anchor=3, name="all", **kw):
    return BlockGroup(name=name, slots=slots, tokens={"anchor": anchor}, key_values=BASE_VALUES, **kw)


# ---------------------------------------------------------------------- identity family (paper)


def identity(seq_len: int = SEQ_LEN) -> BlockTask:
    """3x_to_x: anchor 3 at p, key x = b + p at p+1, target x."""
    return BlockTask("identity", {"seq_len": seq_len}, [_identity_group()], seq_len=_seq("identity", seq_len),
                     description="anchor 3 at p, key at p+1, target = key")


def identity_key_before(seq_len: int = SEQ_LEN) -> BlockTask:
    """x3_to_x: key x = b + p at p, anchor 3 at p+1, target x."""
    return BlockTask("identity_key_before", {"seq_len": seq_len}, [_identity_group(slots=(("key", 0), ("anchor", 1)))],
                     seq_len=_seq("identity_key_before", seq_len), description="key at p, anchor 3 at p+1, target = key")


def identity_distance(d: int = 2, seq_len: int = SEQ_LEN) -> BlockTask:
    """Anchor 3 at p, key x = b + p at p+d, target x."""
    check_int_param("identity_distance", "d", d, 1, MAX_SEQ_LEN)
    return BlockTask("identity_distance", {"d": d, "seq_len": seq_len},
                     [_identity_group(slots=(("anchor", 0), ("key", d)))], seq_len=_seq("identity_distance", seq_len),
                     description=f"anchor 3 at p, key at p+{d}, target = key")


def identity_two_keys(seq_len: int = SEQ_LEN) -> BlockTask:
    """Anchor 3 at p, keys x1, x2 at p+1, p+2, target floor((x1 + x2) / 2)."""
    g = _identity_group(slots=(("anchor", 0), ("key", 1), ("key2", 2)))
    return BlockTask("identity_two_keys", {"seq_len": seq_len}, [g], seq_len=_seq("identity_two_keys", seq_len),
                     combine="mean", description="anchor 3, keys x1 x2 after it, target = floor((x1+x2)/2)")


def identity_wraparound(d: int = 1, seq_len: int = SEQ_LEN) -> BlockTask:
    """Anchor 3 at any p in 0..seq_len-1, key at (p + d) % seq_len, target x."""
    check_int_param("identity_wraparound", "d", d, 1, MAX_SEQ_LEN)
    seq_len = _seq("identity_wraparound", seq_len)
    if d >= seq_len:
        raise TaskError(f"make_task('identity_wraparound', d={d}): d must be < seq_len={seq_len}")
    return BlockTask("identity_wraparound", {"d": d, "seq_len": seq_len},
                     [_identity_group(slots=(("anchor", 0), ("key", d)))], seq_len=seq_len, wrap=True,
                     description=f"anchor 3 anywhere, key at (p+{d}) mod seq_len, target = key")


def identity_residue(residue: int = 0, modulus: int = MODULUS, seq_len: int = SEQ_LEN) -> BlockTask:
    """identity with the held-out residue r: test iff (x - p) % modulus == r."""
    check_int_param("identity_residue", "modulus", modulus, 1, 80)
    check_int_param("identity_residue", "residue", residue, 0, modulus - 1)
    return BlockTask("identity_residue", {"residue": residue, "modulus": modulus, "seq_len": seq_len},
                     [_identity_group()], seq_len=_seq("identity_residue", seq_len), residue=residue, modulus=modulus,
                     description=f"identity, held out (key - p) % {modulus} == {residue}")


def statistical_output(seq_len: int = SEQ_LEN) -> BlockTask:
    """identity input; target x with probability 0.8, x+1 with 0.2."""
    return BlockTask("statistical_output", {"seq_len": seq_len}, [_identity_group()],
                     seq_len=_seq("statistical_output", seq_len), random_shift=((0, 0.8), (1, 0.2)),
                     description="anchor 3, key x after it; target x (p=0.8) or x+1 (p=0.2)")


# ---------------------------------------------------------------------- recitation (paper)


_FORWARD_SLOTS = (("cue", 0), ("anchor", 1), ("key", 2))  # 'a 3 b', question a, target b
_REVERSE_SLOTS = (("key", 0), ("anchor", 1), ("cue", 2))  # 'a 3 b', question b, target a


def recitation_forward(seq_len: int = SEQ_LEN) -> BlockTask:
    """'a 3 b' in the context, last input a, target b."""
    g = BlockGroup("all", _FORWARD_SLOTS, {"anchor": 3}, BASE_VALUES)
    return BlockTask("recitation_forward", {"seq_len": seq_len}, [g], seq_len=_seq("recitation_forward", seq_len),
                     query_cue=True, description="'a 3 b' in context, last input a, target b")


def recitation_reverse(seq_len: int = SEQ_LEN) -> BlockTask:
    """'a 3 b' in the context, last input b, target a."""
    g = BlockGroup("all", _REVERSE_SLOTS, {"anchor": 3}, BASE_VALUES)
    return BlockTask("recitation_reverse", {"seq_len": seq_len}, [g], seq_len=_seq("recitation_reverse", seq_len),
                     query_cue=True, description="'a 3 b' in context, last input b, target a")


def recitation(seq_len: int = SEQ_LEN) -> BlockTask:
    """Forward and reverse recitation in one task, as the paper trains them: groups "forward" (last input a,
    target b) and "reverse" (last input b, target a), weight 0.5 each, so the question token matters."""
    groups = [BlockGroup("forward", _FORWARD_SLOTS, {"anchor": 3}, BASE_VALUES, weight=0.5),
              BlockGroup("reverse", _REVERSE_SLOTS, {"anchor": 3}, BASE_VALUES, weight=0.5)]
    return BlockTask("recitation", {"seq_len": seq_len}, groups, seq_len=_seq("recitation", seq_len), query_cue=True,
                     description="'a 3 b' in context; last input a -> b (forward) or b -> a (reverse), 0.5 / 0.5")


# ---------------------------------------------------------------------- composition, synonym (paper)


def _pair_groups(task, pairs, masked, key_side):
    if key_side not in ("after", "before"):
        raise TaskError(f"make_task({task!r}, key_side={key_side!r}): key_side must be 'after' or 'before'")
    pairs = [str(p) for p in pairs]
    masked = [str(p) for p in masked]
    for p in pairs:
        if len(p) != 2 or any(not c.isdigit() or int(c) not in COMPOSITION_SHIFTS for c in p):
            raise TaskError(
                f"make_task({task!r}, pairs=...): pair {p!r} must be two anchor digits from "
                f"{sorted(COMPOSITION_SHIFTS)} (e.g. '34')"
            )
    if len(set(pairs)) != len(pairs) or not pairs:
        raise TaskError(f"make_task({task!r}, pairs={pairs}): pairs must be non-empty and distinct")
    for p in masked:
        if p not in pairs:
            raise TaskError(f"make_task({task!r}, masked=...): masked pair {p!r} is not in pairs {pairs}")
    if all(p in masked for p in pairs):
        raise TaskError(f"make_task({task!r}, masked={masked}): every pair is masked; the train split would be empty")
    slots = ((("anchor", 0), ("anchor2", 1), ("key", 2)) if key_side == "after"
             else (("key", 0), ("anchor", 1), ("anchor2", 2)))
    groups = []
    for p in pairs:
        a1, a2 = int(p[0]), int(p[1])
        groups.append(BlockGroup(p, slots, {"anchor": a1, "anchor2": a2}, BASE_VALUES,
                                 shift=COMPOSITION_SHIFTS[a1] + COMPOSITION_SHIFTS[a2], masked=p in masked))
    return groups, pairs, masked


def composition(key_side: str = "after", pairs=COMPOSITION_PAIRS, masked=COMPOSITION_MASKED,
                seq_len: int = SEQ_LEN) -> BlockTask:
    """Anchors a1 a2 then key x (or x then a1 a2); target f_a1(f_a2(x))."""
    groups, pairs, masked = _pair_groups("composition", pairs, masked, key_side)
    return BlockTask("composition", {"key_side": key_side, "pairs": pairs, "masked": masked, "seq_len": seq_len},
                     groups, seq_len=_seq("composition", seq_len),
                     description="anchor pair a1 a2 and key x; target f_a1(f_a2(x)), f1=+5 f2=+1 f3=-2 f4=-8")


def synonym(key_side: str = "after", pairs=SYNONYM_PAIRS, masked=SYNONYM_MASKED, seq_len: int = SEQ_LEN) -> BlockTask:
    """composition where anchor 9 acts like 3 (f9 = -2); pairs 49 and 94 masked."""
    groups, pairs, masked = _pair_groups("synonym", pairs, masked, key_side)
    return BlockTask("synonym", {"key_side": key_side, "pairs": pairs, "masked": masked, "seq_len": seq_len},
                     groups, seq_len=_seq("synonym", seq_len),
                     description="composition with anchor 9 a synonym of 3 (f9 = f3 = -2)")


# ---------------------------------------------------------------------- multi-anchor (paper)


def multi_anchor_two_interval(seq_len: int = SEQ_LEN) -> BlockTask:
    """Anchor 3 -> x, anchor 4 -> x+1; keys I1=[20,59], I2=[60,99]; (3,I2) and (4,I1) masked."""
    i1, i2 = tuple(range(20, 60)), tuple(range(60, 100))
    groups = [
        BlockGroup("3_I1", _ANCHOR_KEY, {"anchor": 3}, i1, shift=0),
        BlockGroup("4_I2", _ANCHOR_KEY, {"anchor": 4}, i2, shift=1),
        BlockGroup("3_I2", _ANCHOR_KEY, {"anchor": 3}, i2, shift=0, masked=True),
        BlockGroup("4_I1", _ANCHOR_KEY, {"anchor": 4}, i1, shift=1, masked=True),
    ]
    return BlockTask("multi_anchor_two_interval", {"seq_len": seq_len}, groups,
                     seq_len=_seq("multi_anchor_two_interval", seq_len), key_mode="direct",
                     description="3x -> x on I1=[20,59], 4x -> x+1 on I2=[60,99]; cross combinations masked")


def multi_anchor_multi_interval(seq_len: int = SEQ_LEN) -> BlockTask:
    """Anchors a = 1..10, target x + a; for anchor a the keys 20+8(a-1)..27+8(a-1) are never trained."""
    groups = []
    for a in range(1, 11):
        unseen = tuple(range(20 + 8 * (a - 1), 28 + 8 * (a - 1)))
        seen = tuple(v for v in BASE_VALUES if v not in unseen)
        groups.append(BlockGroup(f"{a}", _ANCHOR_KEY, {"anchor": a}, seen, shift=a))
        groups.append(BlockGroup(f"{a}_unseen", _ANCHOR_KEY, {"anchor": a}, unseen, shift=a, masked=True))
    return BlockTask("multi_anchor_multi_interval", {"seq_len": seq_len}, groups,
                     seq_len=_seq("multi_anchor_multi_interval", seq_len), key_mode="direct",
                     description="anchor a in 1..10, target x + a; one 8-value key interval per anchor masked")


# ---------------------------------------------------------------------- frequency-principle pair (paper)


def frequency_same(seq_len: int = SEQ_LEN) -> BlockTask:
    """{3 -> x, 4 -> x}: the fast-learned member of the frequency-principle pair."""
    groups = [BlockGroup("3", _ANCHOR_KEY, {"anchor": 3}, BASE_VALUES, shift=0),
              BlockGroup("4", _ANCHOR_KEY, {"anchor": 4}, BASE_VALUES, shift=0)]
    return BlockTask("frequency_same", {"seq_len": seq_len}, groups, seq_len=_seq("frequency_same", seq_len),
                     description="anchor 3 -> x and anchor 4 -> x (low-frequency target function)")


def frequency_shift(seq_len: int = SEQ_LEN) -> BlockTask:
    """{3 -> x, 4 -> x+1}: the slow-learned member of the frequency-principle pair."""
    groups = [BlockGroup("3", _ANCHOR_KEY, {"anchor": 3}, BASE_VALUES, shift=0),
              BlockGroup("4", _ANCHOR_KEY, {"anchor": 4}, BASE_VALUES, shift=1)]
    return BlockTask("frequency_shift", {"seq_len": seq_len}, groups, seq_len=_seq("frequency_shift", seq_len),
                     description="anchor 3 -> x and anchor 4 -> x+1 (high-frequency target function)")


# ---------------------------------------------------------------------- this project's own formats


def classification(seq_len: int = SEQ_LEN) -> BlockTask:
    """Anchor 3 then key x in [20,99]; target the label of x's interval: 11..14 for [20,39] .. [80,99]."""
    target_map = {x: CLASS_LABELS[(x - FILLER_LOW) // 20] for x in BASE_VALUES}
    return BlockTask("classification", {"seq_len": seq_len}, [_identity_group()],
                     seq_len=_seq("classification", seq_len), key_mode="direct", target_map=target_map,
                     definition="project", description="anchor 3, key x; target = class label 11..14 of x's 20-wide interval")


def working_memory(seq_len: int = 20) -> BlockTask:
    """Length-20 identity where the anchor sits in the first half (p <= seq_len // 2 - 1)."""
    seq_len = _seq("working_memory", seq_len)
    if seq_len < 4:
        raise TaskError(f"make_task('working_memory', seq_len={seq_len}): seq_len must be >= 4")
    return BlockTask("working_memory", {"seq_len": seq_len}, [_identity_group()], seq_len=seq_len,
                     max_start=seq_len // 2 - 1, definition="project",
                     description="anchor 3 in the first half of 20 inputs, key after it, target = key")


def anchor_length(lengths=(1, 2, 3), seq_len: int = SEQ_LEN) -> BlockTask:
    """Anchors '3', '2 3', '1 2 3' before the key x; target x + (length - 1)."""
    lengths = [int(x) if isinstance(x, int) and not isinstance(x, bool) else x for x in lengths]
    if not lengths or any(x not in (1, 2, 3) for x in lengths) or len(set(lengths)) != len(lengths):
        raise TaskError(f"make_task('anchor_length', lengths={lengths!r}): lengths must be distinct values from [1, 2, 3]")
    layouts = {
        1: ((("anchor", 0), ("key", 1)), {"anchor": 3}),
        2: ((("anchor_start", 0), ("anchor", 1), ("key", 2)), {"anchor_start": 2, "anchor": 3}),
        3: ((("anchor_start", 0), ("anchor_mid", 1), ("anchor", 2), ("key", 3)),
            {"anchor_start": 1, "anchor_mid": 2, "anchor": 3}),
    }
    groups = [BlockGroup(f"len{L}", layouts[L][0], layouts[L][1], BASE_VALUES, shift=L - 1,
                         extra_consts={"anchor_len": L}) for L in lengths]
    return BlockTask("anchor_length", {"lengths": lengths, "seq_len": seq_len}, groups,
                     seq_len=_seq("anchor_length", seq_len), definition="project",
                     description="anchor '3' / '2 3' / '1 2 3' then key x; target x + length - 1")


def reading_comprehension(seq_len: int = SEQ_LEN):
    """Two facts '3 x' and '4 y' in the context, last input the question anchor; target its key."""
    from anchor_interp.tasks.reading import ReadingComprehension

    return ReadingComprehension(seq_len=_seq("reading_comprehension", seq_len))


_FACTORIES = {
    "identity": identity,
    "identity_key_before": identity_key_before,
    "identity_distance": identity_distance,
    "identity_two_keys": identity_two_keys,
    "identity_wraparound": identity_wraparound,
    "identity_residue": identity_residue,
    "recitation_forward": recitation_forward,
    "recitation_reverse": recitation_reverse,
    "recitation": recitation,
    "composition": composition,
    "synonym": synonym,
    "multi_anchor_two_interval": multi_anchor_two_interval,
    "multi_anchor_multi_interval": multi_anchor_multi_interval,
    "statistical_output": statistical_output,
    "reading_comprehension": reading_comprehension,
    "classification": classification,
    "working_memory": working_memory,
    "anchor_length": anchor_length,
    "frequency_same": frequency_same,
    "frequency_shift": frequency_shift,
}


def list_tasks() -> list[str]:
    """Names accepted by ``make_task``."""
    return list(_FACTORIES)


def task_param_names(name: str) -> list[str]:
    """The keyword parameters of task ``name``."""
    return list(inspect.signature(_factory(name)).parameters)


def _factory(name):
    if name not in _FACTORIES:
        raise TaskError(f"make_task(name={name!r}): unknown task; known tasks: {', '.join(_FACTORIES)}")
    return _FACTORIES[name]


def make_task(name: str, **params) -> Task:
    """Build task ``name`` with ``params`` (see docs/tasks.md). Raises TaskError (a ValueError) for an
    unknown name (listing the known ones), an unknown parameter, or parameters that give an impossible
    layout (sequence too short, anchors colliding with keys/targets, an empty split)."""
    factory = _factory(name)
    allowed = inspect.signature(factory).parameters
    for k in params:
        if k not in allowed:
            raise TaskError(f"make_task({name!r}, {k}=...): unknown parameter {k!r}; {name!r} takes {list(allowed)}")
    return factory(**params)
