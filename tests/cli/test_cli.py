"""anchor-find-heads / analyses/find_heads.py: fast --help, one-line errors with exit status 2, no silent overwrite."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures_findheads import synthetic_result

from anchor_interp import cli
from anchor_interp.result import FindHeadsResult

REPO = Path(__file__).resolve().parents[2]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("anchor-find-heads: error: ")
    return lines[0]


def test_help_answers_without_importing_torch_tl_or_matplotlib():
    code = (
        "import sys; from anchor_interp.cli import main; rc = main(['--help']); "
        "heavy = [m for m in ('torch', 'transformer_lens', 'matplotlib', 'numpy') if m in sys.modules]; "
        "print('RC', rc, 'HEAVY', heavy)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "RC 0 HEAVY []" in proc.stdout
    for option in ("--checkpoint", "--task", "--train", "--seed", "--device", "--n-samples", "--json", "--report",
                   "--force"):
        assert option in proc.stdout


def test_wrapper_script_runs_the_same_cli():
    proc = subprocess.run([sys.executable, "analyses/find_heads.py", "--seed", "x"], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert proc.returncode == 2
    assert "--seed" in _one_error_line(proc.stderr)


@pytest.mark.parametrize(
    "argv, mentions",
    [
        (["--seed", "-1"], "--seed"),
        (["--seed", "1.5"], "--seed"),
        (["--device", "gpu"], "--device"),
        (["--n-samples", "3"], "--n-samples"),
        (["--checkpoint", "/no/such/folder"], "does not exist"),
        (["--train", "--checkpoint", "x"], "not allowed with"),
        (["--report", "out.txt"], ".html"),
        (["--json", "out.csv"], ".json"),
        (["--report", "a.html", "--no-report"], "--no-report"),
        (["--preset", "paper"], "--train"),
        (["--bogus"], "--bogus"),
    ],
)
def test_bad_arguments_give_one_line_and_status_2(capsys, tmp_path, monkeypatch, argv, mentions):
    monkeypatch.chdir(tmp_path)
    rc, out, err = _run(capsys, *argv)
    assert rc == 2
    assert mentions in _one_error_line(err)
    assert out == ""
    assert not (tmp_path / "out").exists()


def test_checkpoint_that_is_a_file_is_refused(capsys, tmp_path):
    f = tmp_path / "model.pt"
    f.write_bytes(b"x")
    rc, _, err = _run(capsys, "--checkpoint", str(f))
    assert rc == 2 and "not a checkpoint folder" in _one_error_line(err)


@pytest.mark.parametrize("flag, name", [("--report", "r.html"), ("--json", "r.json")])
def test_existing_outputs_are_never_silently_overwritten(capsys, tmp_path, flag, name):
    target = tmp_path / name
    target.write_text("precious")
    rc, _, err = _run(capsys, flag, str(target))
    assert rc == 2
    line = _one_error_line(err)
    assert "exists" in line and "--force" in line
    assert target.read_text() == "precious"


def test_from_json_rerenders_without_recomputing(capsys, tmp_path):
    res_path = synthetic_result().save_json(tmp_path / "res.json")
    out = tmp_path / "again.html"
    rc, stdout, err = _run(capsys, "--from-json", str(res_path), "--report", str(out))
    assert rc == 0, err
    assert f"report: {out}" in stdout
    assert out.stat().st_size > 1_000_000
    first = out.read_bytes()
    rc, _, err = _run(capsys, "--from-json", str(res_path), "--report", str(out))
    assert rc == 2 and "--force" in _one_error_line(err)
    assert out.read_bytes() == first
    rc, _, _ = _run(capsys, "--from-json", str(res_path), "--report", str(out), "--force")
    assert rc == 0


@pytest.mark.parametrize("extra", [["--n-samples", "5000"], ["--seed", "3"], ["--device", "auto"],
                                   ["--allow-unsolved"]])
def test_from_json_refuses_options_it_would_ignore(capsys, tmp_path, extra):
    """--from-json computes nothing: an analysis option with it is an error, not silently dropped (#14 item 10)."""
    res_path = synthetic_result().save_json(tmp_path / "res.json")
    rc, out, err = _run(capsys, "--from-json", str(res_path), "--report", str(tmp_path / "r.html"), *extra)
    assert rc == 2 and extra[0] in _one_error_line(err) and out == ""
    assert not (tmp_path / "r.html").exists()


def test_a_terminal_hears_from_the_cli_before_torch_is_imported(capsys, tmp_path, monkeypatch):
    """On a terminal the first stderr line comes before the seconds-long torch / TransformerLens import."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    rc, _, err = _run(capsys, "--device", "cuda:99")  # fails right after the import
    assert rc == 2
    assert err.splitlines()[0] == "loading torch and the model ..."


def test_from_json_rejects_bad_results(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    rc, _, err = _run(capsys, "--from-json", str(bad), "--report", str(tmp_path / "r.html"))
    assert rc == 2 and "could not be read" in _one_error_line(err)
    d = synthetic_result().to_dict()
    d["schema_version"] = 2
    bad.write_text(json.dumps(d))
    rc, _, err = _run(capsys, "--from-json", str(bad), "--report", str(tmp_path / "r.html"))
    assert rc == 2 and "schema_version" in _one_error_line(err)
    assert not (tmp_path / "r.html").exists()
    good = synthetic_result().save_json(tmp_path / "good.json")
    for extra in (["--no-report"], ["--json", str(tmp_path / "x.json")], ["--task", "identity"]):
        rc, _, err = _run(capsys, "--from-json", str(good), *extra)
        assert rc == 2 and "does not apply" in _one_error_line(err)


@pytest.fixture(scope="module")
def zoo_copy(tmp_path_factory) -> Path:
    from anchor_interp.models import zoo

    dst = tmp_path_factory.mktemp("ckpt") / "default"
    shutil.copytree(zoo.path("default"), dst)
    return dst


def test_corrupt_checkpoint_gives_one_line(capsys, tmp_path, zoo_copy):
    bad = tmp_path / "bad"
    shutil.copytree(zoo_copy, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    rc, out, err = _run(capsys, "--checkpoint", str(bad), "--report", str(tmp_path / "r.html"))
    assert rc == 2
    assert "corrupt" in _one_error_line(err)
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize(
    "extra, mentions",
    [
        (["--task", "recitation_forward"], "recitation_forward"),  # checkpoint trained on identity
        (["--task", "no_such_task"], "known tasks"),
        (["--device", "cuda:99"], "--device"),
    ],
)
def test_task_and_device_mismatch_give_one_line(capsys, tmp_path, zoo_copy, extra, mentions):
    rc, _, err = _run(capsys, "--checkpoint", str(zoo_copy), "--report", str(tmp_path / "r.html"), *extra)
    assert rc == 2
    line = _one_error_line(err)
    assert mentions in line
    assert "task=None" not in line  # command-line advice, not Python advice (#14 item 10)
    if extra[1] == "recitation_forward":
        assert "drop --task" in line


def test_default_model_task_mismatch(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = _run(capsys, "--task", "composition")
    assert rc == 2 and "--train or --checkpoint" in _one_error_line(err)


def test_no_arguments_analyses_the_default_model(capsys, tmp_path, monkeypatch):
    """The no-argument run: table on stdout, report + JSON + PNGs under out/find_heads, then no overwrite."""
    monkeypatch.chdir(tmp_path)
    rc, out, err = _run(capsys, "--quiet")
    assert rc == 0, err
    report = tmp_path / "out" / "find_heads" / "report.html"
    result = FindHeadsResult.load_json(report.with_suffix(".json"))
    n_heads = result.model["n_layers"] * result.model["n_heads"]
    assert len(result.heads) == n_heads
    for h in result.heads:  # the console table has a line per head
        assert any(line.startswith(h["name"] + " ") and h["label"] in line for line in out.splitlines())
    assert f"report: {Path('out/find_heads/report.html')}" in out
    assert report.stat().st_size < 3_000_000
    assert result.command == "anchor-find-heads --quiet"
    assert result.model["source"] == "zoo:default"
    assert result.history, "the default checkpoint carries its training history"
    assert (tmp_path / "out" / "find_heads" / "report_history.png").is_file()
    mtime = report.stat().st_mtime_ns
    rc, _, err = _run(capsys, "--quiet")
    assert rc == 2 and "--force" in _one_error_line(err)
    assert report.stat().st_mtime_ns == mtime


def test_train_then_analyse(capsys, tmp_path):
    """--train trains a fresh small model (1 epoch here) and analyses it; the JSON records how it was made."""
    js = tmp_path / "t.json"
    rc, out, err = _run(capsys, "--train", "--epochs", "1", "--seed", "2", "--n-samples", "64", "--json", str(js),
                        "--no-report", "--quiet")
    # one epoch does not solve the task: the outputs are written, no shift/broadcast label, exit status 3
    assert rc == 3 and err.count("\n") == 1 and "does not solve the task" in err and "--allow-unsolved" in err
    res = FindHeadsResult.load_json(js)
    assert res.model["source"].startswith("trained now (preset small, recipe fast, 1 epochs, seed 2)")
    assert [r["epoch"] for r in res.history] == [1]
    assert res.accuracy["n"] == 64 and res.seed == 2
    assert res.competence["solved"] is False and res.competence["accuracy"] < res.competence["floor"]
    assert all(h["label"] == "neither" for h in res.heads)
    assert not list(tmp_path.glob("*.html"))
    rc, out, err = _run(capsys, "--train", "--epochs", "1", "--seed", "2", "--n-samples", "64", "--json", str(js),
                        "--no-report", "--quiet", "--force", "--allow-unsolved")
    assert rc == 0, err
    assert FindHeadsResult.load_json(js).competence["allow_unsolved"] is True


def test_train_only_options_need_train(capsys, tmp_path):
    rc, _, err = _run(capsys, "--epochs", "3")
    assert rc == 2 and "--epochs applies only with --train" in _one_error_line(err)
    rc, _, err = _run(capsys, "--train", "--recipe", "nope", "--no-report", "--json", str(tmp_path / "t.json"))
    assert rc == 2 and "unknown recipe" in _one_error_line(err)
    assert not (tmp_path / "t.json").exists()


def test_existing_figure_blocks_the_run_before_any_work(capsys, tmp_path):
    (tmp_path / "r_history.png").write_bytes(b"mine")
    rc, _, err = _run(capsys, "--report", str(tmp_path / "r.html"))
    assert rc == 2 and "r_history.png" in _one_error_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r_history.png"]  # no JSON written either


def test_torch_free_recipe_names_and_field_values_match_the_trainer():
    import argparse

    from anchor_interp import training
    from anchor_interp.cli import RECIPE_NAMES, parse_field_values

    assert sorted(RECIPE_NAMES) == sorted(training.RECIPES)
    got = parse_field_values(["lr=3e-4", "epochs=5", "precision=bf16", "fused_adamw=True", "grad_clip=none"], "--set")
    assert got == {"lr": 3e-4, "epochs": 5, "precision": "bf16", "fused_adamw": True, "grad_clip": None}
    assert training.get_recipe("fast", **got).fused_adamw is True
    with pytest.raises(argparse.ArgumentTypeError, match="--set 'lr': expected FIELD=VALUE"):
        parse_field_values(["lr"], "--set")
