"""The batched trainer: forward equivalence, batched == separate, exact resume, early stop, errors."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from anchor_interp import training
from anchor_interp.models import make_model, model_config
from anchor_interp.models.checkpoint import CheckpointError, load_checkpoint, read_meta
from anchor_interp.tasks import make_task
from anchor_interp.training import (
    RECIPES,
    TrainingDiverged,
    get_recipe,
    stack_models,
    stacked_forward,
    train,
    train_many,
)

# a tiny run: 200 sequences, batch 50 -> 4 steps per epoch
TINY = dict(n_train=200, batch_size=50, n_test=200, epochs=3, warmup_epochs=1, cosine_epochs=2, lr=1e-2)


def tiny_model(task, seed=0, **over):
    cfg = model_config("small", task, **{"d_model": 32, "d_head": 8, **over})
    return make_model(cfg, task, seed=seed)


def weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    "over",
    [
        dict(),
        dict(attention_dir="bidirectional", n_heads=1, d_head=32),
        dict(attn_only=False, d_mlp=48, act_fn="relu", n_layers=3),
        dict(normalization_type=None),
    ],
)
def test_stacked_forward_matches_hooked_transformer(identity_task, over):
    models = [tiny_model(identity_task, seed=s, **over) for s in (0, 1, 2)]
    for m in models:  # non-trivial biases and norms
        with torch.no_grad():
            for n, p in m.named_parameters():
                if n.endswith(("b_Q", "b_K", "b_V", "b_O", "b_U", ".b", "b_in", "b_out")):
                    p.normal_(0, 0.3)
    tokens = torch.stack([identity_task.sample(16, seed=s).tokens for s in (0, 1, 2)])
    out = stacked_forward(stack_models(models), models[0].cfg, tokens)
    with torch.no_grad():
        ref = torch.stack([m(t)[:, -1] for m, t in zip(models, tokens, strict=True)])
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)


def test_training_learns_and_is_deterministic(identity_task):
    m1, m2 = tiny_model(identity_task), tiny_model(identity_task)
    r1 = train(m1, identity_task, "fast", seed=5, progress=False, **TINY)
    r2 = train(m2, identity_task, "fast", seed=5, progress=False, **TINY)
    assert r1.step == 12 and r1.epoch == 3 and len(r1.history) == 3
    assert r1.history[0]["train_loss"] > 0.95 * math.log(identity_task.vocab_size)  # chance level at first
    assert r1.history[-1]["train_loss"] < r1.history[0]["train_loss"] - 1.0
    for n, p in weights(m1).items():
        assert torch.equal(p, weights(m2)[n]), n
    assert r1.history == [{**r, "time_s": r1.history[i]["time_s"]} for i, r in enumerate(r2.history)]
    m3 = tiny_model(identity_task)
    train(m3, identity_task, "fast", seed=6, progress=False, **TINY)
    assert not torch.equal(m3.W_Q, m1.W_Q)  # the seed chooses the data and its order


def test_batched_equals_separate_runs(identity_task):
    seeds = [0, 1, 2]
    together = [tiny_model(identity_task, seed=s) for s in seeds]
    rs = train_many(together, identity_task, "fast", seeds=seeds, progress=False, **TINY)
    for s, m_batched, r in zip(seeds, together, rs, strict=True):
        alone = tiny_model(identity_task, seed=s)
        r_alone = train(alone, identity_task, "fast", seed=s, progress=False, **TINY)
        for n, p in weights(alone).items():
            if n.endswith("attn.b_K"):
                # b_K adds the same score to every key of a row: softmax ignores it, its true gradient is 0,
                # and Adam turns float rounding noise (~1e-9) into lr-sized steps. It changes no output.
                continue
            torch.testing.assert_close(weights(m_batched)[n], p, atol=1e-6, rtol=1e-5, msg=n)
        tokens = identity_task.sample(64, split="test", seed=9).tokens
        with torch.no_grad():
            torch.testing.assert_close(m_batched(tokens), alone(tokens), atol=1e-5, rtol=1e-5)
        assert r.history[-1]["test_acc"] == pytest.approx(r_alone.history[-1]["test_acc"], abs=0.01)
    assert not torch.equal(together[0].W_Q, together[1].W_Q)


def test_per_model_gradient_clipping(identity_task):
    # clipping one model's huge gradient must not scale the other model's gradient
    ms = [tiny_model(identity_task, seed=s) for s in (0, 1)]
    params = {n: t.requires_grad_(True) for n, t in stack_models(ms).items()}
    for p in params.values():
        p.grad = torch.ones_like(p)
        p.grad[0] *= 1000.0
    opt = training.StackedAdamW(params, get_recipe("fast", grad_clip=1.0))
    norms = opt.clip_()
    after = torch.stack([sum(p.grad[i].pow(2).sum() for p in params.values()).sqrt() for i in (0, 1)])
    assert float(after[0]) == pytest.approx(1.0, rel=1e-4)
    assert float(after[1]) == pytest.approx(min(1.0, float(norms[1])), rel=1e-4)


@pytest.mark.parametrize("recipe", ["fast", "quick"])  # quick: bf16 mixed precision + fused AdamW
def test_resume_mid_epoch_gives_identical_weights(identity_task, tmp_path, recipe):
    full = tiny_model(identity_task)
    r_full = train(full, identity_task, recipe, seed=1, progress=False, out_dir=tmp_path / "full", **TINY)
    part = tiny_model(identity_task)
    r_part = train(part, identity_task, recipe, seed=1, progress=False, out_dir=tmp_path / "run",
                   stop_after_step=6, **TINY)  # step 6 = middle of epoch 2 (4 steps per epoch)
    assert r_part.step == 6
    meta = read_meta(tmp_path / "run")
    assert meta["resume"]["global_step"] == 6 and (tmp_path / "run" / meta["tensors"]["optimizer"]).exists()
    fresh = tiny_model(identity_task, seed=99)  # resumed weights come from the checkpoint, not this init
    r_res = train(fresh, identity_task, recipe, seed=1, progress=False, out_dir=tmp_path / "run", resume=True, **TINY)
    assert r_res.step == r_full.step == 12
    for n, p in weights(full).items():
        assert torch.equal(weights(fresh)[n], p), n
    strip = [{k: v for k, v in r.items() if k != "time_s"} for r in r_full.history]
    assert [{k: v for k, v in r.items() if k != "time_s"} for r in r_res.history] == strip
    # the finished folder is a loadable checkpoint without optimizer state, plus history files
    loaded, _ = load_checkpoint(tmp_path / "run")
    assert torch.equal(loaded.W_Q, full.W_Q)
    assert not (tmp_path / "run" / "optimizer.safetensors").exists()
    rows = list(csv.DictReader(open(tmp_path / "run" / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3] and "test_acc/all" in rows[0]
    assert (tmp_path / "run" / "history.png").read_bytes()[:4] == b"\x89PNG"


def test_resume_errors(identity_task, tmp_path):
    m = tiny_model(identity_task)
    train(m, identity_task, "fast", seed=1, progress=False, out_dir=tmp_path / "a", stop_after_step=2, **TINY)
    with pytest.raises(CheckpointError, match="is from task"):
        train(tiny_model(make_task("identity_key_before")), make_task("identity_key_before"), "fast", seed=1,
              progress=False, out_dir=tmp_path / "a", resume=True, **TINY)
    with pytest.raises(CheckpointError, match="another recipe.*batch_size"):
        train(tiny_model(identity_task), identity_task, "fast", seed=1, progress=False, out_dir=tmp_path / "a",
              resume=True, **{**TINY, "batch_size": 20})
    with pytest.raises(CheckpointError, match="seed 1, not 2"):
        train(tiny_model(identity_task), identity_task, "fast", seed=2, progress=False, out_dir=tmp_path / "a",
              resume=True, **TINY)
    with pytest.raises(CheckpointError, match="does not exist|missing"):
        train(tiny_model(identity_task), identity_task, "fast", seed=1, progress=False, out_dir=tmp_path / "b",
              resume=True, **TINY)


def test_early_stop_per_model_in_a_batch(identity_task):
    # model 0 stops at its first evaluation; model 1 (target unreachable for it) trains on
    rec = get_recipe("fast", **TINY, early_stop_acc=0.999)
    ms = [tiny_model(identity_task, seed=s) for s in (0, 1)]
    rs = train_many(ms, identity_task, rec, seeds=[0, 1], progress=False)
    assert [r.stopped_early for r in rs] == [False, False]
    ms = [tiny_model(identity_task, seed=s) for s in (0, 1)]
    rs = train_many(ms, identity_task, rec.replace(early_stop_acc=1e-9), seeds=[0, 1], progress=False)
    assert all(r.stopped_early and r.step == 4 and len(r.history) == 1 for r in rs)
    alone = tiny_model(identity_task, seed=1)
    train(alone, identity_task, rec.replace(early_stop_acc=1e-9), seed=1, progress=False)
    torch.testing.assert_close(alone.W_Q, ms[1].W_Q, atol=1e-5, rtol=1e-4)


def test_fresh_data_option(identity_task):
    a, b = tiny_model(identity_task), tiny_model(identity_task)
    train(a, identity_task, "fast", seed=0, progress=False, data="fresh", **TINY)
    train(b, identity_task, "fast", seed=0, progress=False, **TINY)
    assert not torch.equal(a.W_Q, b.W_Q)
    c = tiny_model(identity_task)
    train(c, identity_task, "fast", seed=0, progress=False, data="fresh", **TINY)
    assert torch.equal(a.W_Q, c.W_Q)


def test_masked_groups_reported_not_trained(tmp_path):
    task = make_task("composition")
    masked = [g.name for g in task.groups if g.masked]
    assert masked
    r = train(tiny_model(task), task, "fast", seed=0, progress=False, **{**TINY, "epochs": 1})
    row = r.history[-1]
    for g in task.groups:
        assert f"test_acc/{g.name}" in row
    assert 0.0 <= row["test_acc_masked"] <= 1.0


def test_paper_recipe_schedule():
    rec = RECIPES["paper"]
    assert (rec.batch_size, rec.epochs, rec.weight_decay, rec.grad_clip, rec.n_test) == (50, 4000, 0.01, 1.0, 500)
    assert rec.lr_at(0) == pytest.approx(2e-5)
    assert rec.lr_at(200) == pytest.approx(1.1e-4)
    assert rec.lr_at(200.9) == rec.lr_at(200)  # stepped per epoch
    assert rec.lr_at(400) == pytest.approx(2e-4)
    assert rec.lr_at(4000) == pytest.approx(2.44e-5, rel=0.01)  # the spec: ~2.4e-5 when the run stops


def test_divergence_keeps_last_good_checkpoint(identity_task, tmp_path, monkeypatch):
    real = training.stacked_forward
    calls = {"n": 0}

    def poisoned(params, cfg, tokens):
        out = real(params, cfg, tokens)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] >= 6:
                return out * float("nan")
        return out

    monkeypatch.setattr(training, "stacked_forward", poisoned)
    with pytest.raises(TrainingDiverged, match="non-finite at step 6.*last good checkpoint \\(step 4\\)") as e:
        train(tiny_model(identity_task), identity_task, "fast", seed=0, progress=False, out_dir=tmp_path,
              checkpoint_every_steps=2, **TINY)
    assert e.value.step == 6
    assert read_meta(tmp_path)["resume"]["global_step"] == 4


def test_bad_input(identity_task, tmp_path):
    m = tiny_model(identity_task)
    with pytest.raises(ValueError, match="unknown recipe 'slow'.*fast.*paper"):
        train(m, identity_task, "slow", seed=0)
    with pytest.raises(ValueError, match="unknown recipe field.*lr_max"):
        train(m, identity_task, "fast", seed=0, lr_max=1.0)
    with pytest.raises(ValueError, match="data='random'"):
        get_recipe("fast", data="random")
    with pytest.raises(ValueError, match="precision='fp16'.*'fp32', 'bf16'"):
        get_recipe("fast", precision="fp16")
    with pytest.raises(ValueError, match="different config"):
        train_many([m, make_model("small", identity_task, seed=0)], identity_task, seeds=[0, 1])
    with pytest.raises(ValueError, match="one int per model"):
        train_many([m], identity_task, seeds=[0, 1])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="cannot be created"):
        train(m, identity_task, seed=0, out_dir=blocker / "sub", progress=False, **TINY)
    with pytest.raises(ValueError, match="n_ctx=9 is shorter than task .identity. seq_len=12"):
        train(tiny_model(identity_task), make_task("identity", seq_len=12), seed=0)


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_saves_a_resumable_checkpoint(identity_task, tmp_path, monkeypatch, sig):
    import signal

    from anchor_interp.training import TrainingInterrupted

    signum = getattr(signal, sig)
    # A process started in the background (nohup, some CI runners) inherits SIGINT ignored: start this
    # test from Python's usual handler, and put the inherited one back afterwards.
    mine = signal.default_int_handler if sig == "SIGINT" else signal.SIG_DFL
    inherited = signal.signal(signum, mine)
    real = training.stacked_forward
    calls = {"n": 0}

    def interrupting(params, cfg, tokens):
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == 6:  # what Ctrl-C / kill does during step 6: call the signal's handler
                signal.getsignal(signum)(signum, None)
        return real(params, cfg, tokens)

    monkeypatch.setattr(training, "stacked_forward", interrupting)
    name = "Ctrl-C" if sig == "SIGINT" else "SIGTERM"
    with pytest.raises(TrainingInterrupted, match=rf"interrupted \({name}\) at step 6") as info:
        train(tiny_model(identity_task), identity_task, "fast", seed=2, progress=False, out_dir=tmp_path, **TINY)
    assert info.value.signum == signum and isinstance(info.value, KeyboardInterrupt)
    assert read_meta(tmp_path)["resume"]["global_step"] == 6  # step 6 finished before stopping
    restored = signal.signal(signum, inherited)
    assert restored is mine  # training put back the handler it found
    monkeypatch.setattr(training, "stacked_forward", real)
    resumed = tiny_model(identity_task)
    train(resumed, identity_task, "fast", seed=2, progress=False, out_dir=tmp_path, resume=True, **TINY)
    full = tiny_model(identity_task)
    train(full, identity_task, "fast", seed=2, progress=False, **TINY)
    assert torch.equal(resumed.W_Q, full.W_Q) and torch.equal(resumed.W_U, full.W_U)


@pytest.mark.parametrize("every_s, saved_at", [(1e-9, list(range(1, 12)) + [12]), (None, [12]), (3600.0, [12])])
def test_checkpoints_by_wall_time(identity_task, tmp_path, monkeypatch, every_s, saved_at):
    from anchor_interp.training import loop

    steps, real = [], loop.write_checkpoint

    def recording(run, i, *, resumable):
        steps.append(run.step)
        return real(run, i, resumable=resumable)

    monkeypatch.setattr(loop, "write_checkpoint", recording)
    train(tiny_model(identity_task), identity_task, "fast", seed=2, progress=False, out_dir=tmp_path,
          checkpoint_every_s=every_s, **TINY)
    assert steps == saved_at and training.DEFAULT_CHECKPOINT_EVERY_S == 300.0


def _run_train_cli(argv):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "analyses" / "train.py"
    spec = importlib.util.spec_from_file_location("analyses_train", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main(argv)


def test_train_cli_batched_seeds(tmp_path, capsys):
    argv = ["--model-set", "d_model=32", "--model-set", "d_head=8", "--n-train", "200", "--epochs", "2",
            "--set", "batch_size=50", "--seeds", "0", "1", "--out", str(tmp_path), "--no-progress", "--device", "cpu"]
    assert _run_train_cli(argv) == 0
    out = capsys.readouterr().out
    assert "2 model(s) on cpu" in out and "seed 1: epoch 2 step 8" in out
    for s in (0, 1):
        model, task = load_checkpoint(tmp_path / f"seed_{s}")
        assert model.cfg.d_model == 32 and task.name == "identity"
        assert (tmp_path / f"seed_{s}" / "history.csv").exists()


def test_train_cli_bad_input(tmp_path, capsys):
    assert _run_train_cli(["--set", "lr_max=1", "--out", str(tmp_path)]) == 2
    assert "unknown recipe field" in capsys.readouterr().err
    assert _run_train_cli(["--task", "nope", "--out", str(tmp_path)]) == 2
    assert "nope" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _run_train_cli(["--preset", "huge", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        _run_train_cli(["--init-gamma", "big", "--out", str(tmp_path)])
    assert "'big': use a number" in capsys.readouterr().err


def test_train_cli_help_does_not_import_torch():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "analyses" / "train.py"
    code = (f"import runpy, sys\nsys.argv = ['train.py', '--help']\ntry:\n    runpy.run_path({str(script)!r}, "
            f"run_name='__main__')\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "--n-train" in out.stdout and out.stdout.strip().endswith("False")


def test_reproduce_identity_curve_toy(tmp_path, capsys):
    """The script writes the sweep file of its options and prints the commands (one stack per N); --run runs
    them (here --together: every run in one stack, in this process) and plots the curve."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "analyses" / "reproduce_identity_curve.py"
    spec = importlib.util.spec_from_file_location("reproduce_identity_curve", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    argv = ["--sizes", "100", "200", "--seeds", "2", "--epochs", "2", "--out", str(tmp_path), "--no-progress",
            "--set", "batch_size=50", "--tag", "toy", "--device", "cpu"]
    assert mod.main(argv) == 0  # writes the sweep file and prints the commands, trains nothing
    out = capsys.readouterr().out
    assert f"sweep.py run {tmp_path / 'identity_curve_toy.toml'} --out {tmp_path / 'identity_curve_toy'}" in out
    assert "--max-stack 2" in out
    assert not (tmp_path / "identity_curve_toy").exists()
    argv += ["--together", "--run"]
    assert mod.main(argv) == 0
    folder = tmp_path / "identity_curve_toy"
    runs = list(csv.DictReader(open(folder / "table.csv")))
    assert [(r["n_train"], r["seed"]) for r in runs] == [("100", "0"), ("100", "1"), ("200", "0"), ("200", "1")]
    assert [r["steps"] for r in runs] == ["4", "4", "8", "8"]  # 2 epochs of N / 50 steps
    assert [r["stack_size"] for r in runs] == ["4"] * 4  # --together: one stack
    assert [r["recipe.eval_every"] for r in runs] == ["2"] * 4  # --eval-every 0: only at the end
    assert (folder / "accuracy_vs_n.png").read_bytes()[:4] == b"\x89PNG"
    # a second call finds every run done and trains nothing new
    assert mod.main(argv) == 0
    assert "4 done (0 stack(s) trained" in capsys.readouterr().out


def test_fast_recipe_cosine_follows_epochs():
    rec = get_recipe("fast", epochs=20)
    assert rec.lr_at(0) == pytest.approx(1e-4) and rec.lr_at(2) == pytest.approx(1e-3)
    assert rec.lr_at(11) == pytest.approx((1e-3 + 1e-5) / 2)  # half-way through the cosine
    assert rec.lr_at(20) == pytest.approx(1e-5)
    assert rec.lr_at(2.5) < rec.lr_at(2.25)  # stepped per step, not per epoch


def test_history_train_metrics_cover_the_rows_epoch_only(identity_task):
    every = train(tiny_model(identity_task), identity_task, "fast", seed=3, progress=False, **TINY)
    sparse = train(tiny_model(identity_task), identity_task, "fast", seed=3, progress=False, **{**TINY, "eval_every": 3})
    assert [r["epoch"] for r in sparse.history] == [3]
    last, only = every.history[-1], sparse.history[-1]
    assert (only["train_loss"], only["train_acc"], only["test_acc"]) == (last["train_loss"], last["train_acc"], last["test_acc"])


def test_quick_recipe_mixed_precision_learns_deterministically(identity_task):
    """bf16 autocast in the training steps: weights stay float32, the loss falls, same seed same bits."""
    assert RECIPES["quick"].precision == "bf16" and RECIPES["quick"].fused_adamw
    m1, m2 = tiny_model(identity_task), tiny_model(identity_task)
    r1 = train(m1, identity_task, "quick", seed=5, progress=False, **TINY)
    train(m2, identity_task, "quick", seed=5, progress=False, **TINY)
    assert all(p.dtype == torch.float32 for p in m1.parameters())
    assert r1.history[-1]["train_loss"] < r1.history[0]["train_loss"] - 1.0
    for n, p in weights(m1).items():
        assert torch.equal(p, weights(m2)[n]), n
    m3 = tiny_model(identity_task)  # the same recipe in fp32 takes other (nearby) steps
    train(m3, identity_task, "quick", seed=5, progress=False, precision="fp32", **TINY)
    assert not torch.equal(m3.W_Q, m1.W_Q)
    assert r1.recipe["precision"] == "bf16"


def test_fused_adamw_matches_the_unfused_update(identity_task):
    ms = [tiny_model(identity_task, seed=s) for s in (0, 1)]
    opts, params = [], []
    for fused in (False, True):
        ps = {n: t.clone().requires_grad_(True) for n, t in stack_models(ms).items()}
        params.append(ps)
        opts.append(training.StackedAdamW(ps, get_recipe("fast", fused_adamw=fused, weight_decay=0.1)))
    gen = torch.Generator().manual_seed(0)
    for step in range(5):
        grads = {n: torch.randn(p.shape, generator=gen) for n, p in params[0].items()}
        for ps, opt in zip(params, opts, strict=True):
            for n, p in ps.items():
                p.grad = grads[n].clone()
            opt.step(1e-2 * (step + 1))
    assert opts[1].step_count == 5
    for n in params[0]:
        torch.testing.assert_close(params[1][n], params[0][n], atol=1e-6, rtol=1e-6, msg=n)
        torch.testing.assert_close(opts[1].exp_avg_sq[n], opts[0].exp_avg_sq[n], atol=1e-9, rtol=1e-5)


def test_resume_a_checkpoint_written_before_new_recipe_fields(identity_task, tmp_path):
    """A checkpoint whose recipe lacks fields added later (precision, fused_adamw) resumes with their defaults."""
    import json

    part = tiny_model(identity_task)
    train(part, identity_task, "fast", seed=1, progress=False, out_dir=tmp_path / "run", stop_after_step=6, **TINY)
    meta_path = tmp_path / "run" / "checkpoint.json"
    meta = json.loads(meta_path.read_text())
    for field_name in ("precision", "fused_adamw"):
        del meta["recipe"][field_name]
    meta_path.write_text(json.dumps(meta))
    r = train(tiny_model(identity_task), identity_task, "fast", seed=1, progress=False, out_dir=tmp_path / "run",
              resume=True, **TINY)
    assert r.step == 12
    train(tiny_model(identity_task), identity_task, "fast", seed=1, progress=False, out_dir=tmp_path / "run2",
          stop_after_step=6, **TINY)
    with pytest.raises(CheckpointError, match="fields differ: \\['precision'\\]"):
        train(tiny_model(identity_task), identity_task, "fast", seed=1, progress=False, out_dir=tmp_path / "run2",
              resume=True, precision="bf16", **TINY)


def _assert_same_model(a, b, atol=1e-6):
    for n, p in weights(b).items():
        if n.endswith("attn.b_K"):  # no effect on any output; see test_batched_equals_separate_runs
            continue
        torch.testing.assert_close(weights(a)[n], p, atol=atol, rtol=1e-5, msg=n)


@pytest.mark.parametrize("sizes", [(200, 300), (200, 230)])  # 230: a short last batch (30 of 50 rows)
def test_models_with_different_training_set_sizes_train_together(identity_task, sizes):
    """n_train per model: each keeps its own epochs, lr schedule and evaluations, as if trained alone."""
    seeds = [0, 1]
    over = {k: v for k, v in TINY.items() if k != "n_train"}
    together = [tiny_model(identity_task, seed=s) for s in seeds]
    rs = train_many(together, identity_task, "fast", seeds=seeds, progress=False, n_train=list(sizes), **over)
    for s, n, m, r in zip(seeds, sizes, together, rs, strict=True):
        alone = tiny_model(identity_task, seed=s)
        r_alone = train(alone, identity_task, "fast", seed=s, progress=False, n_train=n, **over)
        _assert_same_model(m, alone)
        assert r.step == r_alone.step == 3 * math.ceil(n / 50) and r.epoch == 3 and not r.stopped_early
        assert [(h["epoch"], h["step"]) for h in r.history] == [(h["epoch"], h["step"]) for h in r_alone.history]
        assert [h["lr"] for h in r.history] == pytest.approx([h["lr"] for h in r_alone.history])
        assert r.recipe["n_train"] == n
    with pytest.raises(ValueError, match="one int per model \\(2\\); got 3 sizes"):
        train_many(together, identity_task, "fast", seeds=seeds, n_train=[200, 300, 400], **over)


def test_different_sizes_resume_exactly_after_the_smaller_model_finished(identity_task, tmp_path):
    over = {k: v for k, v in TINY.items() if k != "n_train"}
    dirs = [tmp_path / "a", tmp_path / "b"]
    full = [tiny_model(identity_task, seed=s) for s in (0, 1)]
    train_many(full, identity_task, "fast", seeds=[0, 1], progress=False, n_train=[200, 300], **over)
    part = [tiny_model(identity_task, seed=s) for s in (0, 1)]
    # model 0 finishes its 12 steps; the interruption comes at step 14 of model 1's 18
    train_many(part, identity_task, "fast", seeds=[0, 1], progress=False, n_train=[200, 300], out_dirs=dirs,
               stop_after_step=14, **over)
    assert read_meta(dirs[0])["resume"]["done"] and not read_meta(dirs[1])["resume"]["done"]
    assert read_meta(dirs[0])["n_train"] == 200 and read_meta(dirs[1])["n_train"] == 300
    resumed = [tiny_model(identity_task, seed=9) for _ in range(2)]
    rs = train_many(resumed, identity_task, "fast", seeds=[0, 1], progress=False, n_train=[200, 300],
                    out_dirs=dirs, resume=True, **over)
    assert [r.step for r in rs] == [12, 18] and [r.stopped_early for r in rs] == [False, False]
    for a, b in zip(resumed, full, strict=True):
        for n, p in weights(b).items():
            assert torch.equal(weights(a)[n], p), n


def test_per_model_learning_rates_in_one_update(identity_task):
    """StackedAdamW.step with a (k,) lr equals each model updated with its own scalar lr (fused or not)."""
    ms = [tiny_model(identity_task, seed=s) for s in (0, 1)]
    gen = torch.Generator().manual_seed(0)
    grads = [{n: torch.randn((2, *p.shape), generator=gen) for n, p in ms[0].named_parameters()} for _ in range(3)]
    lrs = torch.tensor([1e-2, 3e-3])
    results = []
    for fused in (False, True):
        ps = {n: t.clone().requires_grad_(True) for n, t in stack_models(ms).items()}
        opt = training.StackedAdamW(ps, get_recipe("fast", fused_adamw=fused))
        for g in grads:
            for n, p in ps.items():
                p.grad = g[n].clone()
            opt.step(lrs)
        results.append(ps)
    for i in (0, 1):
        ps = {n: t[i : i + 1].clone().requires_grad_(True) for n, t in stack_models(ms).items()}
        opt = training.StackedAdamW(ps, get_recipe("fast"))
        for g in grads:
            for n, p in ps.items():
                p.grad = g[n][i : i + 1].clone()
            opt.step(float(lrs[i]))
        for stacked in results:
            for n in ps:
                torch.testing.assert_close(stacked[n][i], ps[n][0], atol=1e-7, rtol=1e-6, msg=n)



def test_foreach_adamw_matches_the_loop(identity_task):
    """The multi-tensor update (the GPU default) is the loop's formula: same weights to float rounding,
    with one learning rate per model and with frozen parameters."""
    from anchor_interp.training.optim import StackedAdamW

    torch.manual_seed(0)
    rec = get_recipe("fast", weight_decay=0.1, grad_clip=0.5)
    base = {"a": torch.randn(3, 4, 5), "b": torch.randn(3, 7), "c": torch.randn(3, 2)}
    outs = []
    for foreach in (False, True):
        params = {n: t.clone().requires_grad_(True) for n, t in base.items()}
        opt = StackedAdamW(params, rec, foreach=foreach)
        for step in range(3):
            g = torch.Generator().manual_seed(step)
            for n, p in params.items():
                p.grad = None if n == "c" else torch.randn(p.shape, generator=g) * 3
            norms = opt.clip_()
            opt.step(torch.tensor([1e-2, 2e-2, 3e-2]) if step else 1e-2)
        outs.append((norms, {n: p.detach().clone() for n, p in params.items()}))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    for n in base:
        torch.testing.assert_close(outs[0][1][n], outs[1][1][n], rtol=1e-6, atol=1e-7)
    assert torch.equal(outs[1][1]["c"], base["c"])  # frozen: no grad, no step, no decay
