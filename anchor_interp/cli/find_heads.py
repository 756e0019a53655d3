"""anchor-find-heads: label the shift and broadcast heads of an anchor-task model and write the report.

    anchor-find-heads                       # the shipped default model -> out/find_heads/report.html
    anchor-find-heads --checkpoint runs/x   # a saved checkpoint folder
    anchor-find-heads --train --task identity --seed 3
    anchor-find-heads --from-json out/find_heads/report.json --report again.html   # re-render only

Arguments are parsed and checked before torch or TransformerLens are imported, so ``--help`` and
bad input answer at once. Bad input (a missing or corrupt checkpoint, a task that does not match,
an unknown option value, an output that exists without --force) prints ONE line on stderr and exits
with status 2. Exit status 0 = success; 3 = the model does not solve the task (outputs written, shift and
broadcast labels withheld unless --allow-unsolved).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from anchor_interp.cli.args import (
    UsageError,
    _nonneg_int,
    _Parser,
    add_device_argument,
    resolve_cli_device,
)
from anchor_interp.find_heads import DEFAULT_N_SAMPLES
from anchor_interp.result import label_role

PROG = "anchor-find-heads"
DEFAULT_REPORT = Path("out") / "find_heads" / "report.html"


def _n_samples(text: str) -> int:
    value = _nonneg_int("--n-samples")(text)
    if not 20 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError(f"--n-samples must be in 20..1000000, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Find the shift and broadcast heads of a transformer trained on an anchor-function task, "
        "with causal evidence (patching, ablation), and write a self-contained HTML report. "
        "With no arguments: the shipped default model.",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", metavar="PATH", help="checkpoint folder (checkpoint.json and the tensor files it names)")
    src.add_argument("--train", action="store_true", help="train a fresh model first (with progress), then analyse it")
    src.add_argument("--from-json", metavar="PATH", help="re-render the report from a saved result JSON; computes nothing")
    p.add_argument("--task", metavar="NAME", help="task name (default: the model's own task; required to match it)")
    p.add_argument("--preset", metavar="NAME", default="small", help="model preset for --train (default: small)")
    p.add_argument("--recipe", metavar="NAME", default="fast", help="training recipe for --train (default: fast)")
    p.add_argument("--epochs", type=_nonneg_int("--epochs"), metavar="N",
                   help="with --train: train for N epochs instead of the recipe's")
    p.add_argument("--seed", type=_nonneg_int("--seed"), default=0, help="seed of every sample drawn (default: 0)")
    add_device_argument(p, default="cpu")
    p.add_argument("--n-samples", type=_n_samples, default=DEFAULT_N_SAMPLES, metavar="N",
                   help=f"held-out rows for accuracy, labels, patching and ablation (default: {DEFAULT_N_SAMPLES})")
    p.add_argument("--json", metavar="PATH", help="result JSON (default: the report path with .json)")
    p.add_argument("--report", metavar="PATH", help=f"HTML report (default: {DEFAULT_REPORT}; PNG figures go beside it)")
    p.add_argument("--no-report", action="store_true", help="write only the JSON result")
    p.add_argument("--force", action="store_true", help="overwrite an existing report / JSON")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--allow-unsolved", action="store_true",
                   help="label a model below the competence floor anyway (default: withhold shift/broadcast "
                        "labels, write the outputs, exit with status 3)")
    return p


def _output_paths(args) -> tuple[Path | None, Path | None]:
    """(report, json) paths after defaults; UsageError for bad suffixes or existing files without --force."""
    report = Path(args.report) if args.report else None
    js = Path(args.json) if args.json else None
    if report is None and js is None:
        report = DEFAULT_REPORT
    if report is None:
        report = js.with_suffix(".html")
    if js is None and not args.from_json:
        js = report.with_suffix(".json")
    if args.no_report:
        if args.report:
            raise UsageError("--no-report and --report contradict each other; give one")
        report = None
    if report is not None and report.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--report {report}: the report path must end in .html")
    if js is not None and js.suffix.lower() != ".json":
        raise UsageError(f"--json {js}: the result path must end in .json")
    if report is not None and js is not None and report.resolve() == js.resolve():
        raise UsageError("--report and --json name the same file")
    for flag, path in (("--report", report), ("--json", js)):
        if path is None:
            continue
        if path.is_dir():
            raise UsageError(f"{flag} {path} is a directory; give a file path")
        if path.exists() and not args.force:
            raise UsageError(f"{flag} {path} exists; pass --force to overwrite it or choose another path")
        if flag == "--report" and not args.force and not args.from_json:
            from anchor_interp.report import report_paths

            pngs = [str(p) for p in list(report_paths(path).values())[1:] if p.exists()]
            if pngs:
                raise UsageError(f"--report {path}: its figure {pngs[0]} exists; pass --force to overwrite it")
        from anchor_interp.atomic import check_writable

        try:  # before any analysis: an unwritable output fails at once
            check_writable(path, flag)
        except ValueError as e:
            raise UsageError(str(e)) from None
    return report, js


def _check_inputs(args) -> None:
    if args.checkpoint is not None:
        ck = Path(args.checkpoint)
        if not ck.exists():
            raise UsageError(f"--checkpoint {ck} does not exist")
        if not ck.is_dir() or not (ck / "checkpoint.json").is_file():
            raise UsageError(f"--checkpoint {ck} is not a checkpoint folder (it needs checkpoint.json and the tensor files it names)")
    if args.from_json is not None:
        if not Path(args.from_json).is_file():
            raise UsageError(f"--from-json {args.from_json} does not exist")
        for flag in ("task", "train", "json", "no_report", "allow_unsolved"):
            if getattr(args, flag):
                raise UsageError(f"--from-json re-renders a saved result; --{flag.replace('_', '-')} does not apply")
        for flag, default in (("n_samples", DEFAULT_N_SAMPLES), ("seed", 0), ("device", "cpu")):
            if getattr(args, flag) != default:  # computes nothing: these would be silently ignored
                raise UsageError(f"--from-json re-renders a saved result and computes nothing; "
                                 f"--{flag.replace('_', '-')} does not apply (rerun the analysis without --from-json)")
    for flag, value, default in (("preset", args.preset, "small"), ("recipe", args.recipe, "fast"),
                                 ("epochs", args.epochs, None)):
        if value != default and not args.train:
            raise UsageError(f"--{flag} applies only with --train")
    if args.epochs == 0:
        raise UsageError("--epochs must be >= 1")


def _say(args, msg: str) -> None:
    if not args.quiet:
        print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``anchor-find-heads`` and ``analyses/find_heads.py``. Returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:  # --help
            return int(e.code or 0)
        _check_inputs(args)
        report_path, json_path = _output_paths(args)
        if args.from_json:
            return _rerender(args, report_path)
        return _run(args, argv, report_path, json_path)
    except (ValueError, FileExistsError) as e:  # UsageError, CheckpointError, bad task/result: one line
        msg = " ".join(str(e).split())
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def _rerender(args, report_path: Path) -> int:
    from anchor_interp.report import write_report
    from anchor_interp.result import FindHeadsResult

    result = FindHeadsResult.load_json(args.from_json)
    path = write_report(result, report_path, overwrite=args.force)
    print(f"report: {path}")
    return 0


def _run(args, argv: list[str], report_path: Path | None, json_path: Path | None) -> int:
    t_start = time.perf_counter()
    if sys.stderr.isatty():  # importing torch and TransformerLens takes seconds; say so at once (an error
        _say(args, "loading torch and the model ...")  # after it stays one line wherever stderr is read back)
    import torch

    # The anchor models are tiny: one thread is as fast as several, and it does not stall on a busy machine.
    torch.set_num_threads(1)
    args.device = str(resolve_cli_device(args.device))  # "auto" -> "cuda" or "cpu"; UsageError if unavailable
    model, task, history, preset, source, training = _load_model(args)
    if args.device != "cpu":
        model = model.to(args.device)
    _say(args, f"model: {source} ({preset or 'custom'}), task {task.name!r}; analysing ...")

    from anchor_interp.find_heads import find_heads
    from anchor_interp.scores.cache import progress

    command = " ".join([PROG] + [shlex.quote(a) for a in argv])
    with progress(not args.quiet):  # chunk progress bars on stderr for long runs
        result = find_heads(
            model, task, seed=args.seed, n_samples=args.n_samples, history=history, preset=preset, source=source,
            command=command, device=args.device, allow_unsolved=args.allow_unsolved, training=training,
            log=lambda m: _say(args, m),
        )
    print(format_head_table(result.to_dict()))
    _write_outputs(result, report_path, json_path, args.force)
    _say(args, f"done in {time.perf_counter() - t_start:.1f} s")
    if not result.competence.get("solved", True) and not args.allow_unsolved:
        print(f"{PROG}: the model does not solve the task (held-out accuracy "
              f"{result.competence.get('accuracy', float('nan')):.3f} < floor {result.competence.get('floor', 0):.3f}); "
              "shift/broadcast labels withheld (--allow-unsolved labels anyway); exit status 3", file=sys.stderr)
        return 3
    return 0


def _write_outputs(result, report_path: Path | None, json_path: Path | None, force: bool) -> None:
    """The JSON, HTML and PNGs as one all-or-nothing set (anchor_interp.atomic.write_file_set): written
    into a temporary sibling folder, then renamed into place; a failure or Ctrl-C leaves no partial set."""
    from anchor_interp.atomic import write_file_set

    json_file = {json_path: result.to_json().encode("utf-8")} if json_path is not None else {}
    if report_path is not None:
        from anchor_interp.report import write_report

        write_report(result, report_path, overwrite=force, extra_files=json_file)
    else:
        write_file_set(json_file, overwrite=force)
    if json_path is not None:
        print(f"json: {json_path}")
    if report_path is not None:
        print(f"report: {report_path}")


def _read_meta(folder: Path) -> dict:
    import json

    try:
        meta = json.loads((folder / "checkpoint.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _read_history(folder: Path) -> list[dict]:
    hist = _read_meta(folder).get("history")
    return [r for r in hist if isinstance(r, dict)] if isinstance(hist, list) else []


def _read_training(folder: Path) -> dict:
    """The checkpoint's training facts for the model card: recipe, seed, step, epoch, n_train, train_seconds."""
    meta = _read_meta(folder)
    out = {k: meta[k] for k in ("recipe", "seed", "step", "epoch", "n_train") if k in meta}
    seconds = (meta.get("zoo") or {}).get("train_seconds") if isinstance(meta.get("zoo"), dict) else None
    if seconds is not None:
        out["train_seconds"] = seconds
    return out


def _load_model(args):
    """(model, task, history, preset, source, training) for the chosen model source."""
    from anchor_interp.models import checkpoint as ckpt
    from anchor_interp.tasks import make_task

    if args.checkpoint is not None:
        task = make_task(args.task) if args.task else None  # ValueError naming the known tasks
        stored = _stored_task_name(Path(args.checkpoint))
        if task is not None and stored is not None and stored != task.name:
            raise UsageError(f"--task {args.task}: checkpoint {args.checkpoint} was trained on task {stored!r}; "
                             "drop --task to use the checkpoint's own task")
        model, task = ckpt.load_checkpoint(args.checkpoint, task=task)
        folder = Path(args.checkpoint)
        return model, task, _read_history(folder), _preset_of(folder), str(folder), _read_training(folder)
    if args.train:
        return _train(args)
    from anchor_interp.models import zoo

    model, task = zoo.load("default")
    if args.task and args.task != task.name:
        raise UsageError(
            f"--task {args.task}: the shipped default model is trained on {task.name!r}; "
            "use --train or --checkpoint for another task"
        )
    folder = zoo.path("default")
    return model, task, _read_history(folder), _preset_of(folder), "zoo:default", _read_training(folder)


def _stored_task_name(folder: Path) -> str | None:
    """The task name saved in ``folder/checkpoint.json`` (None when unreadable: loading then says why)."""
    import json

    try:
        name = json.loads((folder / "checkpoint.json").read_text(encoding="utf-8"))["task"]["name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return name if isinstance(name, str) else None


def _preset_of(folder: Path) -> str | None:
    import json

    try:
        meta = json.loads((folder / "checkpoint.json").read_text(encoding="utf-8"))
        return meta.get("preset")
    except (OSError, ValueError, AttributeError):
        return None


def _train(args):
    from anchor_interp import training
    from anchor_interp.models import make_model
    from anchor_interp.tasks import make_task

    task = make_task(args.task or "identity")
    model = make_model(args.preset, task, seed=args.seed, device=args.device)
    overrides = {"epochs": args.epochs} if args.epochs else {}
    recipe = training.get_recipe(args.recipe, **overrides)  # ValueError for an unknown recipe
    _say(args, f"training preset {args.preset!r} on {task.name!r} with recipe {recipe.name!r} "
               f"({recipe.epochs} epochs, seed {args.seed}) ...")
    out = training.train(model, task, recipe, seed=args.seed, device=args.device, progress=not args.quiet,
                         preset=args.preset)
    model.eval()
    source = f"trained now (preset {args.preset}, recipe {recipe.name}, {recipe.epochs} epochs, seed {args.seed})"
    training_facts = {"recipe": dict(out.recipe), "seed": args.seed, "step": out.step, "epoch": out.epoch}
    return model, task, list(out.history), args.preset, source, training_facts


def format_head_table(result: dict) -> str:
    """The console table: one line per head: label, offset or kind, the label role's effect with its 95%
    interval, the counterfactual that measured it, stability over batches, its route; then groups and
    circuit checks. A ``~`` after the label marks a borderline head. Multi-anchor tasks add a ``reads``
    column: the anchors each head reads (``~``: an anchor's effect within its margin of the threshold)."""
    heads = sorted(result.get("heads") or [], key=lambda h: (h["layer"], h["head"]))
    acc, comp = result.get("accuracy") or {}, result.get("competence") or {}
    overall = acc.get("overall")
    line = f"held-out accuracy {overall if overall is None else f'{overall:.3f}'} ({acc.get('n', '?')} rows"
    line += ", unmasked groups)" if acc.get("n_masked") else ")"
    if comp:
        line += (f"; competence floor {_num(comp.get('floor'), '.3f')}: "
                 + ("solved" if comp.get("solved") else "NOT SOLVED" + ("" if comp.get("allow_unsolved")
                                                                     else ", shift/broadcast labels withheld")))
    multi = any(h.get("reads") is not None for h in heads)
    lines = [line, f"{'head':<6} {'label':<11} {'offset/kind':<11} {'effect [95% CI]':<18} {'counterfactual':<16} "
                   f"{'stable':<6}  " + (f"{'reads':<15} " if multi else "") + "route"]
    for h in heads:
        lines.append(_head_line(h, multi))
    for g in result.get("groups") or []:
        lines.append(f"group {g.get('name')}: {', '.join(g.get('heads') or [])} ({g.get('label', '')}), "
                     f"joint effect {_num(g.get('joint_effect'), '.3f')} ({g.get('metric', '')})")
    for c in (result.get("ablation") or {}).get("checks") or []:
        verdict = "pass" if c.get("passed") else ("n/a" if c.get("passed") is None else "FAIL")
        lines.append(f"check {c['name']}: accuracy {_num(c.get('accuracy'), '.3f')} "
                     f"(expected {c.get('expected')}): {verdict}")
    return "\n".join(lines)


def _num(x, fmt):
    return format(x, fmt) if isinstance(x, (int, float)) and not isinstance(x, bool) else "-"


def _head_line(h: dict, multi: bool = False) -> str:
    detail = f"{h['offset']:+d}" if h.get("offset") is not None else (h.get("kind") or "")
    label = h.get("label", "?") + ("~" if h.get("borderline") else "")
    roles = h.get("roles") or []
    main = label_role(h)
    if main is not None:
        effect = f"{_num(main.get('effect'), '.2f')} [{_num(main.get('ci_low'), '.2f')}, {_num(main.get('ci_high'), '.2f')}]"
        route = main.get("route", "")
        also = [f"{r['name']} {_num(r.get('effect'), '.2f')}" for r in roles if r.get("passes") and r is not main]
        route += f" (also {', '.join(also)})" if also else ""
    else:
        effect, route = _num(h.get("causal_effect"), ".3f"), ""
    stab = h.get("stability")
    stable = "-" if stab is None else f"{stab:.0%}"
    reads = f"{(h.get('reads') or '-') + ('~' if h.get('reads_borderline') else ''):<15} " if multi else ""
    return (f"{h['name']:<6} {label:<11} {detail:<11} {effect:<18} {str(h.get('counterfactual') or '-'):<16} "
            f"{stable:<6}  {reads}{route}").rstrip()


if __name__ == "__main__":
    sys.exit(main())
