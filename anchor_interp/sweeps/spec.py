"""Sweep files: a TOML file -> validated settings -> the list of runs (:class:`RunSpec`), each with a stable id.

A sweep file (docs/sweeps.md) has a ``name``, one value per setting under ``[settings]``, lists of
values under ``[axes]`` (their Cartesian product is the sweep) and what to run after training under
``[after]``::

    name = "identity_curve_small"
    [settings]
    task = "identity"          # anchor_interp.tasks.make_task name; its parameters in [settings.task_params]
    preset = "small"           # anchor_interp.models.PRESETS; HookedTransformerConfig overrides in [settings.model]
    recipe = "fast"            # anchor_interp.training.RECIPES; Recipe field overrides in [settings.recipe_fields]
    epochs = 100
    [axes]
    n_train = [200, 300, {from = 400, to = 1000, step = 200}]
    seed = {from = 0, to = 4}
    [axes.recipe_fields]
    lr = [1e-3, 3e-4]
    [after]
    find_heads = true

Settings that change together (one study arm: an architecture with its own init and recipe fields)
are ``[[variants]]``: each a table of settings (and an optional ``name``, a comment for the reader)
applied over ``[settings]`` (a table setting such as ``recipe_fields`` is merged field by field); the
sweep is then every variant x the product of the axes.

TOML has no null: in ``recipe_fields`` and ``model`` the string ``"none"`` stands for None.
A run's id is a hash of its *resolved* training settings (:func:`run_id`): the task with every parameter,
the architecture, preset, model overrides, the init scale as a number (or None), the full Recipe (with
n_train and epochs) and the seed. Executor, device, threads and paths are not part of it.
Importing this module is cheap (no torch); :func:`expand` imports torch and TransformerLens to validate.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ARCHS", "AFTER_DEFAULTS", "SETTING_KEYS", "RunSpec", "SweepError", "SweepSpec", "expand", "load_spec",
           "parse_spec", "run_id"]

ARCHS = ("hooked", "reference")  # the keys of sweeps.execute.BUILDERS (named here without importing it)
SETTING_KEYS = ("task", "task_params", "arch", "preset", "model", "init_gamma", "recipe", "recipe_fields",
                "epochs", "squeeze", "n_train", "seed")
TABLE_KEYS = ("task_params", "model", "recipe_fields")  # settings whose value is a table of fields
DEFAULTS: dict[str, Any] = {"task": "identity", "task_params": {}, "arch": "hooked", "preset": "small", "model": {},
                            "init_gamma": "preset", "recipe": "fast", "recipe_fields": {}, "epochs": None,
                            "squeeze": True, "n_train": None, "seed": 0}
AFTER_DEFAULTS: dict[str, Any] = {"find_heads": False, "n_samples": 128, "seed": 0, "patching": False,
                                  "ablation": False}


class SweepError(ValueError):
    """A sweep file (or folder) that cannot be used; the message is one line naming the problem and the fix."""


@dataclass(frozen=True)
class RunSpec:
    """One training run of a sweep. ``settings``: the resolved training settings (JSON values) that the
    id hashes: ``arch``, ``task`` ({name, params}), ``preset``, ``model`` (overrides), ``init_gamma``
    (a number or None), ``recipe`` (every Recipe field, n_train and epochs included) and ``seed``."""

    id: str
    settings: dict[str, Any]

    @property
    def n_train(self) -> int:
        return int(self.settings["recipe"]["n_train"])

    @property
    def seed(self) -> int:
        return int(self.settings["seed"])

    def shape_key(self) -> str:
        """What runs packed into one train_many stack must share: everything but seed, n_train and init."""
        s = {k: v for k, v in self.settings.items() if k not in ("seed", "init_gamma")}
        s["recipe"] = {k: v for k, v in s["recipe"].items() if k != "n_train"}
        return json.dumps(s, sort_keys=True)


@dataclass
class SweepSpec:
    """A parsed sweep file: ``name`` (the default folder name), ``settings`` (one value each), ``axes``
    (setting -> list of values, or for table settings field -> list), ``after`` (post-training hooks),
    ``source`` (the file's text, kept in the sweep folder)."""

    name: str
    settings: dict[str, Any]
    axes: dict[str, Any]
    after: dict[str, Any] = field(default_factory=lambda: dict(AFTER_DEFAULTS))
    description: str = ""
    source: str = ""
    variants: list[dict[str, Any]] = field(default_factory=lambda: [{}])  # settings overrides, one per arm


def run_id(settings: dict[str, Any]) -> str:
    """12 hex digits of the SHA-256 of the canonical JSON of resolved settings (sorted keys, no spaces)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def load_spec(path: str | Path) -> SweepSpec:
    """Read and check a sweep file. Raises SweepError (one line) for a missing file, bad TOML or bad content."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SweepError(f"sweep file {path} does not exist; give the path of a .toml sweep file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SweepError(f"sweep file {path} cannot be read ({e})") from None
    return parse_spec(text, where=str(path))


def parse_spec(text: str, where: str = "sweep") -> SweepSpec:
    """Parse a sweep file's text (see the module docstring). Raises SweepError naming the key at fault."""
    import tomllib

    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SweepError(f"{where}: not valid TOML ({e})") from None
    _known(doc, ("name", "description", "settings", "axes", "after", "variants"), where, "top-level key")
    name = doc.get("name")
    if not isinstance(name, str) or not name or any(c in name for c in "/\\") or name.startswith("."):
        raise SweepError(f"{where}: name = {name!r}; give a non-empty name without '/' (it names the sweep folder)")
    settings = _table(doc, "settings", where)
    _known(settings, SETTING_KEYS, where, "[settings] key")
    axes = _table(doc, "axes", where)
    _known(axes, SETTING_KEYS, where, "[axes] key")
    merged = {**DEFAULTS, **settings}
    for key in TABLE_KEYS:
        if not isinstance(merged[key], dict):
            raise SweepError(f"{where}: settings.{key} must be a table of fields, e.g. [settings.{key}]")
    flat_axes: dict[str, list] = {}
    for key, values in axes.items():
        if key in TABLE_KEYS:
            if not isinstance(values, dict) or not values:
                raise SweepError(f"{where}: axes.{key} must be a table of field = [values], e.g. [axes.{key}]")
            for f, vs in values.items():
                flat_axes[f"{key}.{f}"] = _axis_values(vs, f"axes.{key}.{f}", where)
        else:
            flat_axes[key] = _axis_values(values, f"axes.{key}", where)
    after = {**AFTER_DEFAULTS, **_table(doc, "after", where)}
    _known(after, AFTER_DEFAULTS, where, "[after] key")
    for k in ("find_heads", "patching", "ablation"):
        if not isinstance(after[k], bool):
            raise SweepError(f"{where}: after.{k} = {after[k]!r}; use true or false")
    for k, lo in (("n_samples", 20), ("seed", 0)):
        if isinstance(after[k], bool) or not isinstance(after[k], int) or after[k] < lo:
            raise SweepError(f"{where}: after.{k} = {after[k]!r}; use an integer >= {lo}")
    return SweepSpec(name=name, settings=merged, axes=flat_axes, after=after,
                     description=str(doc.get("description", "")), source=text, variants=_variants(doc, where))


def _variants(doc: dict, where: str) -> list[dict[str, Any]]:
    """``[[variants]]`` tables (settings overrides; ``name`` dropped), or one empty variant."""
    raw = doc.get("variants", [{}])
    if not isinstance(raw, list) or not raw or not all(isinstance(v, dict) for v in raw):
        raise SweepError(f"{where}: variants must be a list of tables ([[variants]] blocks)")
    out = []
    for i, v in enumerate(raw):
        v = {k: x for k, x in v.items() if k != "name"}
        _known(v, SETTING_KEYS, where, f"variants[{i}] key")
        for key in TABLE_KEYS:
            if key in v and not isinstance(v[key], dict):
                raise SweepError(f"{where}: variants[{i}].{key} must be a table of fields")
        out.append(v)
    return out


def _known(d: dict, known, where: str, what: str) -> None:
    for key in d:
        if key not in known:
            raise SweepError(f"{where}: unknown {what} {key!r}; known: {', '.join(sorted(known))}")


def _table(doc: dict, key: str, where: str) -> dict:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise SweepError(f"{where}: {key} must be a table ([{key}])")
    return value


def _axis_values(values, key: str, where: str) -> list:
    """An axis: a list of values, where a {from, to, step} table stands for an inclusive integer range."""
    items = values if isinstance(values, list) else [values]
    out: list = []
    for v in items:
        if isinstance(v, dict):
            _known(v, ("from", "to", "step"), where, f"{key} range key")
            lo, hi, step = v.get("from"), v.get("to"), v.get("step", 1)
            if not all(isinstance(x, int) and not isinstance(x, bool) for x in (lo, hi, step)) or step < 1 or hi < lo:
                raise SweepError(f"{where}: {key} range {v!r}; use {{from = A, to = B, step = S}} with integers "
                                 f"A <= B and S >= 1 (B included)")
            out.extend(range(lo, hi + 1, step))
        else:
            out.append(v)
    if not out:
        raise SweepError(f"{where}: {key} is empty; give at least one value")
    if len({json.dumps(v, sort_keys=True) for v in out}) != len(out):
        raise SweepError(f"{where}: {key} repeats a value; give distinct values")
    return out


def expand(spec: SweepSpec) -> list[RunSpec]:
    """Every run of the sweep (the product of its axes, in axis order), each resolved and checked.

    Raises SweepError (one line) for an unknown task, preset, recipe, architecture or field, a value of
    the wrong kind, a model that cannot run the task, or two axis points that resolve to the same run.
    """
    keys = list(spec.axes)
    runs: list[RunSpec] = []
    seen: dict[str, dict] = {}
    checked_models: set[str] = set()
    for variant, point in itertools.product(spec.variants, itertools.product(*(spec.axes[k] for k in keys))):
        raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in spec.settings.items()}
        for k, v in variant.items():  # a variant's table settings are merged field by field
            raw[k] = {**raw[k], **v} if k in TABLE_KEYS else v
        for k, v in zip(keys, point, strict=True):
            if "." in k:
                table, f = k.split(".", 1)
                raw[table][f] = v
            else:
                raw[k] = v
        settings = resolve_settings(raw, checked_models)
        rid = run_id(settings)
        if rid in seen:
            raise SweepError(f"axes point {dict(zip(keys, point, strict=True))} gives the same run as another point; "
                             f"remove the repeated values")
        seen[rid] = settings
        runs.append(RunSpec(rid, settings))
    return runs


def resolve_settings(raw: dict[str, Any], checked_models: set[str] | None = None) -> dict[str, Any]:
    """One axis point's raw settings -> the resolved, hashed settings of a run. Raises SweepError."""
    from anchor_interp.cli.args import RECIPE_FIELD_TYPES, UsageError, check_known_fields

    arch = raw["arch"]
    if arch not in ARCHS:
        raise SweepError(f"arch = {arch!r}: unknown architecture; known: {', '.join(ARCHS)}")
    for k in ("seed",):
        if isinstance(raw[k], bool) or not isinstance(raw[k], int) or raw[k] < 0:
            raise SweepError(f"{k} = {raw[k]!r}: use an integer >= 0")
    for k in ("n_train", "epochs"):
        if raw[k] is not None and (isinstance(raw[k], bool) or not isinstance(raw[k], int) or raw[k] < 1):
            raise SweepError(f"{k} = {raw[k]!r}: use an integer >= 1")
    if not isinstance(raw["squeeze"], bool):
        raise SweepError(f"squeeze = {raw['squeeze']!r}: use true (scale warm-up and cosine to epochs) or false")
    for table in ("recipe_fields", "model"):  # TOML has no null: the string "none" stands for None
        raw[table] = {k: None if isinstance(v, str) and v.lower() == "none" else v for k, v in raw[table].items()}
    try:
        check_known_fields(raw["recipe_fields"], "recipe_fields", RECIPE_FIELD_TYPES, "recipe field")
    except UsageError as e:
        raise SweepError(str(e)) from None
    task = _task(raw["task"], raw["task_params"])
    recipe = _recipe(raw)
    init_gamma = _init_gamma(raw["init_gamma"], raw["preset"])
    if arch == "reference":  # the authors' model always starts from PyTorch's default init
        if raw["init_gamma"] not in ("preset", "torch"):
            raise SweepError(f"init_gamma = {raw['init_gamma']!r}: the reference architecture always uses PyTorch's "
                             "init; leave init_gamma unset or write 'torch'")
        init_gamma = "torch"
    key = json.dumps([arch, raw["preset"], task["name"], task["params"], raw["model"]], sort_keys=True)
    if checked_models is None or key not in checked_models:
        _check_model(raw["preset"], task, raw["model"], arch)
        if checked_models is not None:
            checked_models.add(key)
    return {"arch": arch, "task": task, "preset": raw["preset"], "model": dict(sorted(raw["model"].items())),
            "init_gamma": init_gamma, "recipe": recipe, "seed": raw["seed"]}


def _task(name, params: dict) -> dict:
    from anchor_interp.tasks import make_task

    if not isinstance(name, str):
        raise SweepError(f"task = {name!r}: give a task name (anchor_interp.tasks)")
    try:
        task = make_task(name, **params)
    except (ValueError, TypeError) as e:
        raise SweepError(f"task {name!r} with params {params}: {' '.join(str(e).split())}") from None
    return {"name": task.name, "params": json.loads(json.dumps(task.params))}


def _recipe(raw: dict) -> dict:
    """The full Recipe dict: the named recipe, its field overrides, epochs (warm-up and cosine scaled by
    epochs / recipe epochs when ``squeeze``) and n_train."""
    from anchor_interp.training import get_recipe

    try:
        base = get_recipe(raw["recipe"]) if isinstance(raw["recipe"], str) else None
        if base is None:
            raise ValueError(f"recipe = {raw['recipe']!r}: give a recipe name")
        over = dict(raw["recipe_fields"])
        if isinstance(over.get("freeze"), str):  # "blocks.*.b_*,unembed.b_U" -> a list of patterns
            over["freeze"] = [p for p in over["freeze"].split(",") if p]
        if raw["epochs"] is not None:
            over["epochs"] = raw["epochs"]
            if raw["squeeze"]:
                f = raw["epochs"] / base.epochs
                over.setdefault("warmup_epochs", base.warmup_epochs * f)
                if base.cosine_epochs is not None:
                    over.setdefault("cosine_epochs", base.cosine_epochs * f)
        if raw["n_train"] is not None:
            over["n_train"] = raw["n_train"]
        rec = get_recipe(base, **over)
        if rec.cosine_epochs is None:  # written out in full: the same schedule, one spelling
            rec = rec.replace(cosine_epochs=max(rec.epochs - rec.warmup_epochs, 1))
    except ValueError as e:
        raise SweepError(" ".join(str(e).split())) from None
    d = rec.to_dict()
    if any(isinstance(v, float) and not math.isfinite(v) for v in d.values()):
        raise SweepError(f"recipe {d['name']!r}: a field is not finite")
    return d


def _init_gamma(value, preset):
    from anchor_interp.models import PRESETS

    if value == "preset":
        if preset not in PRESETS:
            raise SweepError(f"preset = {preset!r}: unknown preset; known: {', '.join(sorted(PRESETS))}")
        return PRESETS[preset].init_gamma
    if value == "tl":
        return None
    if value == "torch":
        return "torch"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SweepError(f"init_gamma = {value!r}: use a number (std = d_in ** -gamma), 'tl', 'torch' or 'preset'")
    return float(value)


def _check_model(preset, task: dict, overrides: dict, arch: str = "hooked") -> None:
    from anchor_interp.models import model_config
    from anchor_interp.tasks import make_task

    try:
        if arch == "reference":
            from anchor_interp.models.reference import reference_config

            reference_config(preset, make_task(task["name"], **task["params"]), **overrides)
            return
        model_config(preset, make_task(task["name"], **task["params"]), **overrides)
    except (ValueError, TypeError) as e:
        raise SweepError(f"preset {preset!r} with model overrides {overrides}: {' '.join(str(e).split())}") from None


def axis_value(run: RunSpec, key: str):
    """The value of axis ``key`` (as written in [axes]) in a run's resolved settings."""
    s = run.settings
    if key in ("n_train", "epochs"):
        return s["recipe"][key]
    if key == "recipe":
        return s["recipe"]["name"]
    if key == "task":
        return s["task"]["name"]
    if key.startswith("task_params."):
        return s["task"]["params"].get(key.split(".", 1)[1])
    if key.startswith("recipe_fields."):
        return s["recipe"].get(key.split(".", 1)[1])
    if key.startswith("model."):
        return s["model"].get(key.split(".", 1)[1])
    return s.get(key)
