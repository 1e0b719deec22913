"""Trainer behaviour: exact resume, regularisation, schedules, early stopping, safety."""
import math
import re

import pytest
import torch
from safetensors.torch import load_file

from genforge.config import make_config
from genforge.recipes import get_recipe
from genforge.train import checkpoint as ckpt
from genforge.train.optim import lr_factor, penalty
from genforge.train.trainer import fit, fit_model

IC = get_recipe("image-classify")
QUIET = dict(log=lambda s: None)


def _cfg(**kw):
    base = {"model": "cnn", "data": "fashion-mnist", "train_limit": 512, "batch_size": 16,
            "model.channels": (4, 8), "model.dense": 16, "model.dropout": 0.3, "model.batch_norm": True,
            "crop_pad": 2, "flip": True, "max_steps": 8, "eval_every": 2, "eval_batches": 2,
            "warmup_steps": 2, "schedule": "cosine", "plots": False, "l2": 1e-4, "grad_clip": 1.0}
    base.update(kw)
    return make_config(IC, base)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_resume_is_exact(tmp_path, optimizer):
    """N steps in one go == N/2 steps, stop, resume N/2 (dropout, BN, augmentation, cosine)."""
    fit("image-classify", _cfg(optimizer=optimizer), tmp_path / "full", **QUIET)
    fit("image-classify", _cfg(optimizer=optimizer), tmp_path / "split", stop_at=4, **QUIET)
    state = torch.load(tmp_path / "split" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 4
    fit("image-classify", _cfg(optimizer=optimizer), tmp_path / "split", resume=True, **QUIET)
    a = load_file(tmp_path / "full" / "model.safetensors")
    b = load_file(tmp_path / "split" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [r["step"] for r in ckpt.read_metrics(tmp_path / "split")]
    full = [r["step"] for r in ckpt.read_metrics(tmp_path / "full")]
    assert steps == full


def test_existing_run_is_never_overwritten(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(b"precious")
    with pytest.raises(ckpt.RunError, match="already exists"):
        fit("image-classify", _cfg(), run, **QUIET)
    assert (run / "model.safetensors").read_bytes() == b"precious"


def test_resume_without_checkpoint_is_clear(tmp_path):
    with pytest.raises(ckpt.RunError, match="cannot resume"):
        fit("image-classify", _cfg(), tmp_path / "empty", resume=True, **QUIET)


def test_penalties_match_formula():
    m = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    w = [m[0].weight, m[1].weight]
    expect = sum(0.1 * p.abs().sum() + 0.01 * p.pow(2).sum() for p in w)
    assert torch.allclose(penalty(m, 0.1, 0.01), expect)
    assert penalty(m, 0.0, 0.0) is None


def test_schedules():
    cfg = _cfg(lr=1.0, warmup_steps=10, min_lr=0.1)
    assert lr_factor(0, cfg, 110) == pytest.approx(0.1)
    assert lr_factor(9, cfg, 110) == pytest.approx(1.0)
    assert lr_factor(60, cfg, 110) == pytest.approx(0.55)
    assert lr_factor(110, cfg, 110) == pytest.approx(0.1)
    cfg = _cfg(schedule="step", warmup_steps=0, step_size=5, gamma=0.5)
    assert [lr_factor(s, cfg, 100) for s in (0, 4, 5, 10)] == [1.0, 1.0, 0.5, 0.25]


def test_early_stopping_and_best_checkpoint(tmp_path):
    # lr=0: the metric never improves after the first evaluation -> stop after `patience` evals
    cfg = _cfg(lr=0.0, max_steps=40, eval_every=2, patience=2, warmup_steps=0, l2=0.0)
    run = fit("image-classify", cfg, tmp_path / "run", **QUIET)
    state = torch.load(run / "trainer_state.pt", weights_only=True)
    assert state["step"] == 6
    assert (run / "best.safetensors").is_file()


def test_curves_png_and_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    run = fit("image-classify", _cfg(plots=True, tensorboard=True, log_every=2), tmp_path / "run", **QUIET)
    png = run / "plots" / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any((run / "tensorboard").iterdir())


def test_ema_follows_its_formula():
    from genforge.train.ema import EMA

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = EMA(m, 0.9)
    expect = [p.detach().clone() for p in m.parameters()]
    for t in range(1, 30):
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn_like(p))
        m.train()(torch.randn(4, 3))  # moves BatchNorm's running statistics
        ema.update(m)
        d = min(0.9, (1 + t) / (10 + t))
        expect = [d * e + (1 - d) * p.detach() for e, p in zip(expect, m.parameters())]
    for e, a in zip(expect, ema.model.parameters()):
        assert torch.allclose(e, a, atol=1e-6)
    # buffers are copied, not averaged
    assert torch.equal(ema.model[1].running_mean, m[1].running_mean)
    assert ema.model[0].weight.requires_grad is False


def test_ema_run_is_evaluated_saved_and_resumed_exactly(tmp_path):
    cfg = lambda: _cfg(ema=0.9)  # noqa: E731
    full = fit("image-classify", cfg(), tmp_path / "full", **QUIET)
    fit("image-classify", cfg(), tmp_path / "split", stop_at=4, **QUIET)
    fit("image-classify", cfg(), tmp_path / "split", resume=True, **QUIET)
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(full / name), load_file(tmp_path / "split" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    raw, avg = load_file(full / "model.safetensors"), load_file(full / "ema.safetensors")
    weights = [k for k in raw if k.endswith("weight")]
    assert weights and all(not torch.equal(raw[k], avg[k]) for k in weights)
    # the run's "last" model is the average
    _, _, model = ckpt.load_run(full, "last")
    for k, v in model.state_dict().items():
        if k in avg:
            assert torch.equal(v, avg[k]), k
    assert ckpt.weights_path(full, "last").name == "ema.safetensors"


def test_ema_errors_are_clear(tmp_path):
    from genforge.config import ConfigError

    with pytest.raises(ConfigError, match="ema=1.5"):
        fit("image-classify", _cfg(ema=1.5), tmp_path / "bad", **QUIET)
    assert not (tmp_path / "bad").exists()  # nothing written
    plain = tmp_path / "plain"
    fit("image-classify", _cfg(), plain, stop_at=2, **QUIET)
    saved = (plain / "config.json").read_text()
    with pytest.raises(ckpt.RunError, match="without a weight average"):
        fit("image-classify", _cfg(ema=0.9), plain, resume=True, **QUIET)
    assert (plain / "config.json").read_text() == saved  # a refused resume changes nothing
    fit("image-classify", _cfg(), plain, resume=True, **QUIET)  # its own setting still resumes
    averaged = tmp_path / "averaged"
    fit("image-classify", _cfg(ema=0.9), averaged, stop_at=2, **QUIET)
    with pytest.raises(ckpt.RunError, match="with a weight average"):
        fit("image-classify", _cfg(), averaged, resume=True, **QUIET)
    # recipes whose evaluation must use the acting weights refuse it up front
    rl = make_config(get_recipe("reinforce"), {"model": "dqn", "ema": 0.99})
    with pytest.raises(ConfigError, match="ema does not apply to the reinforce recipe"):
        fit("reinforce", rl, tmp_path / "rl", **QUIET)
    assert not (tmp_path / "rl").exists()


def test_bad_model_setting_is_a_config_error_and_leaves_no_run(tmp_path):
    from genforge.config import ConfigError

    with pytest.raises(ConfigError, match=r"model.dropout=-1.0 is out of range: model.dropout must be in \[0, 1\)"):
        fit("image-classify", _cfg(**{"model.dropout": -1.0}), tmp_path / "bad", **QUIET)
    assert not (tmp_path / "bad").exists()


def test_time_fraction_drives_the_cosine_schedule():
    """The cosine decay follows whichever of steps and wall-clock budget is further along."""
    cfg = _cfg(lr=1.0, warmup_steps=10, min_lr=0.0)
    assert lr_factor(5, cfg, 110, time_frac=0.9) == pytest.approx(0.6)  # warmup stays step-based
    assert lr_factor(10, cfg, 110, time_frac=0.5) == pytest.approx(0.5)  # time ahead of steps
    assert lr_factor(85, cfg, 110, time_frac=0.1) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.75)))
    assert lr_factor(10, cfg, 110, time_frac=1.7) == pytest.approx(0.0)  # budget spent: the floor


def test_time_budget_ends_the_run_with_the_lr_at_its_floor(tmp_path):
    budget_s = 1.5
    cfg = _cfg(max_steps=100_000, max_minutes=budget_s / 60, eval_every=100_000, log_every=1,
               warmup_steps=0, lr=1e-2)
    run = fit("image-classify", cfg, tmp_path / "run", **QUIET)
    state = torch.load(run / "trainer_state.pt", weights_only=True)
    assert 1 <= state["step"] < 100_000
    assert state["elapsed_s"] >= budget_s
    recs = ckpt.read_metrics(run)
    train = [r for r in recs if "lr" in r]
    assert train[-1]["step"] == state["step"]
    assert train[-1]["lr"] < 0.05 * 1e-2 < train[0]["lr"]  # decayed with time, not with steps
    assert any("val_loss" in r and r["step"] == state["step"] for r in recs)  # evaluated at the end
    assert (run / "model.safetensors").is_file()


def test_negative_time_budget_is_a_config_error_and_leaves_no_run(tmp_path):
    from genforge.config import ConfigError

    with pytest.raises(ConfigError, match="max_minutes must be >= 0"):
        fit("image-classify", _cfg(max_minutes=-1.0), tmp_path / "bad", **QUIET)
    assert not (tmp_path / "bad").exists()


def test_a_resumed_run_counts_the_time_it_already_spent(tmp_path):
    run = fit("image-classify", _cfg(max_minutes=10.0), tmp_path / "run", stop_at=2, **QUIET)
    spent = torch.load(run / "trainer_state.pt", weights_only=True)["elapsed_s"]
    assert spent > 0
    # resumed with a budget that the first two steps already used up: one more step, then stop
    fit("image-classify", _cfg(max_minutes=spent / 60), run, resume=True, **QUIET)
    state = torch.load(run / "trainer_state.pt", weights_only=True)
    assert state["step"] == 3 < _cfg().max_steps
    assert state["elapsed_s"] > spent


def _mlp_cfg(**kw):
    """No dropout, batch norm or augmentation: a step's gradient depends only on its examples."""
    base = {"model": "mlp", "data": "fashion-mnist", "train_limit": 256, "model.hidden": (16,),
            "max_steps": 4, "eval_every": 4, "eval_batches": 1, "log_every": 2, "plots": False,
            "schedule": "constant", "l2": 1e-4, "grad_clip": 1.0}
    base.update(kw)
    return make_config(IC, base)


def test_grad_accum_matches_the_larger_batch(tmp_path):
    """2 micro-batches of 8 per update == batches of 16: same weights, same examples counted."""
    big = fit("image-classify", _mlp_cfg(batch_size=16), tmp_path / "big", **QUIET)
    acc = fit("image-classify", _mlp_cfg(batch_size=8, grad_accum=2), tmp_path / "acc", **QUIET)
    a, b = load_file(big / "model.safetensors"), load_file(acc / "model.safetensors")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    train = [r for r in ckpt.read_metrics(acc) if "examples_per_s" in r]
    assert [r["examples"] for r in train] == [2 * 16, 4 * 16]
    # the logged speed and example counts give back the pure training time, which cannot
    # exceed the run's wall time (a speed counting half the examples would give twice it)
    seconds, steps = ckpt.logged_training_time(acc, _mlp_cfg(batch_size=8, grad_accum=2))
    assert steps == 4 and 0 < seconds <= torch.load(acc / "trainer_state.pt", weights_only=True)["elapsed_s"]


def test_grad_accum_resume_is_exact(tmp_path):
    """The batch iterator counts micro-batches: a resumed run continues at step * grad_accum."""
    cfg = lambda: _cfg(batch_size=8, grad_accum=2)  # noqa: E731
    full = fit("image-classify", cfg(), tmp_path / "full", **QUIET)
    fit("image-classify", cfg(), tmp_path / "split", stop_at=4, **QUIET)
    split = fit("image-classify", cfg(), tmp_path / "split", resume=True, **QUIET)
    a, b = load_file(full / "model.safetensors"), load_file(split / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("rname,overrides", [
    ("image-generate", {"model": "gan"}),
    ("reinforce", {"model": "dqn"}),
])
def test_grad_accum_is_refused_by_a_recipe_whose_update_ignores_it(tmp_path, rname, overrides):
    from genforge.config import ConfigError

    cfg = make_config(get_recipe(rname), {**overrides, "grad_accum": 2})
    with pytest.raises(ConfigError, match=f"grad_accum=2 does not apply to the {rname} recipe"):
        fit(rname, cfg, tmp_path / "run", **QUIET)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_grad_accum_below_one_is_refused(tmp_path):
    from genforge.config import ConfigError

    with pytest.raises(ConfigError, match="grad_accum must be >= 1"):
        fit("image-classify", _cfg(grad_accum=0), tmp_path / "run", **QUIET)
    assert not (tmp_path / "run").exists()


def test_read_metrics_skips_a_line_cut_short_by_a_kill(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "train_loss": 2.0}\n\n{"step": 2, "val_lo')
    assert ckpt.read_metrics(tmp_path) == [{"step": 1, "train_loss": 2.0}]
    assert ckpt.read_metrics(tmp_path / "missing") == []
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "tr\n{"step": 2}\n')
    with pytest.raises(ckpt.RunError, match="line 1 is not a JSON record"):
        ckpt.read_metrics(tmp_path)


def test_resume_after_a_kill_mid_write_drops_the_cut_line(tmp_path):
    run = fit("image-classify", _cfg(log_every=1), tmp_path / "run", stop_at=2, **QUIET)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "train_lo')  # the process died here
    fit("image-classify", _cfg(log_every=1), run, resume=True, **QUIET)
    steps = [r["step"] for r in ckpt.read_metrics(run) if "lr" in r]
    assert steps == list(range(1, _cfg().max_steps + 1))


def _accumulating_recipe():
    """image-classify with its own update that declares UPDATE_ACCUMULATES: each train batch
    holds grad_accum micro-batches, and the update accumulates over them."""
    import dataclasses
    import types

    from genforge.train.optim import make_optimizer

    mod = types.ModuleType("accumulating_recipe")
    mod.Config, mod.MODELS, mod.build, mod.evaluate = IC.Config, IC.MODELS, IC.build, IC.evaluate
    mod.TEST_CONFIG, mod.UPDATE_ACCUMULATES = {}, True

    def batches(cfg, split, start_step=0, model=None):
        if split != "train":
            return IC.batches(cfg, split)
        return IC.batches(dataclasses.replace(cfg, batch_size=cfg.batch_size * cfg.grad_accum), split, start_step)

    def update(model, batch, opts, step, cfg):
        opt = opts["main"]
        for x, y in zip(batch[0].chunk(cfg.grad_accum), batch[1].chunk(cfg.grad_accum)):
            out = IC.loss(model, (x, y))
            (out["loss"] / cfg.grad_accum).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return {"loss": out["loss"].detach()}

    mod.batches, mod.update = batches, update
    mod.optimizers = lambda model, cfg: {"main": make_optimizer(model, cfg)}
    return mod


def test_an_update_that_declares_grad_accum_gets_it(tmp_path, monkeypatch):
    import sys

    from genforge.recipes import RECIPES
    from genforge.recipes.contract import check_recipe

    mod = _accumulating_recipe()
    check_recipe(mod)
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(RECIPES, "accumulating", mod.__name__)
    cfg = lambda: _mlp_cfg(batch_size=8, grad_accum=2, l2=0.0, grad_clip=0.0)  # noqa: E731
    own = fit("accumulating", cfg(), tmp_path / "own", **QUIET)
    ref = fit("image-classify", cfg(), tmp_path / "ref", **QUIET)
    a, b = load_file(own / "model.safetensors"), load_file(ref / "model.safetensors")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    assert [r["examples"] for r in ckpt.read_metrics(own) if "examples" in r] == [2 * 16, 4 * 16]


# ---------------------------------------------------------------------------------------
# issue 17: recoverable runs, schedules that fit short runs, what is being built


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_folder(tmp_path):
    from genforge.config import ConfigError

    run = tmp_path / "run"
    with pytest.raises(ConfigError, match="val_nope"):  # fails at the first evaluation
        fit("image-classify", _cfg(metric="val_nope"), run, **QUIET)
    assert not run.exists()
    fit("image-classify", _cfg(max_steps=2), run, **QUIET)  # the same --out works again
    assert ckpt.latest_dir(run) is not None


def test_overwrite_restarts_and_a_failing_restart_loses_nothing(tmp_path):
    from genforge.config import ConfigError

    run = tmp_path / "run"
    fit("image-classify", _cfg(max_steps=2), run, **QUIET)
    old = (run / "model.safetensors").read_bytes()
    with pytest.raises(ConfigError):
        fit("image-classify", _cfg(metric="val_nope"), run, overwrite=True, **QUIET)
    assert (run / "model.safetensors").read_bytes() == old  # the old run is back
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    lines = []
    fit("image-classify", _cfg(max_steps=4), run, overwrite=True, log=lines.append)
    assert torch.load(ckpt.latest_dir(run) / "trainer_state.pt", weights_only=True)["step"] == 4
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # the old one is gone
    assert any("--overwrite" in s for s in lines)


def test_config_built_in_python_out_of_range_writes_nothing(tmp_path):
    from genforge.config import ConfigError

    cfg = _cfg()
    cfg.batch_size = 0
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        fit("image-classify", cfg, tmp_path / "run", **QUIET)
    assert not (tmp_path / "run").exists()


def test_warmup_ratio_is_a_fraction_of_steps():
    """0.025 of 8000 steps is gpt-shakespeare's old 200 warmup steps: the same schedule."""
    by_ratio = make_config(IC, {"warmup_steps": 0, "warmup_ratio": 0.025, "min_lr": 1e-4})
    by_steps = make_config(IC, {"warmup_steps": 200, "min_lr": 1e-4})
    for step in (0, 1, 99, 199, 200, 201, 4000, 7999):
        assert lr_factor(step, by_ratio, 8000) == pytest.approx(lr_factor(step, by_steps, 8000)), step
    assert lr_factor(0, by_ratio, 60) == pytest.approx(1 / 1.5)  # 60 steps: warmup of 1.5 steps
    assert lr_factor(2, by_ratio, 60) < 1.0 and lr_factor(59, by_ratio, 60) < 0.11  # at the floor (0.1)


def test_warmup_ratio_follows_time_when_time_is_further_along():
    cfg = make_config(IC, {"warmup_ratio": 0.1, "min_lr": 0.0})
    # 93 of 8000 steps done but 5% of the time budget spent: half way through the warmup
    assert lr_factor(93, cfg, 8000, time_frac=0.05) == pytest.approx(0.5)
    assert lr_factor(93, cfg, 8000, time_frac=0.1) == pytest.approx(1.0)  # warmup over
    mid = lr_factor(93, cfg, 8000, time_frac=0.55)  # half of the decay: (0.55 - 0.1) / 0.9
    assert mid == pytest.approx(0.5)
    assert lr_factor(93, cfg, 8000, time_frac=1.0) == pytest.approx(0.0)  # the floor at the end


def test_warmup_longer_than_the_run_is_warned_about(tmp_path):
    lines = []
    fit("image-classify", _cfg(max_steps=2, warmup_steps=100), tmp_path / "r", log=lines.append)
    assert any("warmup_steps=100" in s and "never reaches" in s for s in lines)


def test_resume_with_a_longer_run_says_the_schedule_is_stretched(tmp_path):
    fit("image-classify", _cfg(max_steps=4, warmup_steps=0), tmp_path / "r", **QUIET)
    lines = []
    fit("image-classify", _cfg(max_steps=8, warmup_steps=0), tmp_path / "r", resume=True,
        log=lines.append)
    assert any("planned for 4 steps" in s and "stretched" in s for s in lines)


def test_training_prints_what_it_found_and_builds(tmp_path):
    lines = []
    fit("image-classify", _cfg(max_steps=2), tmp_path / "r", log=lines.append)
    text = "\n".join(lines)
    assert "parameters, on cpu" in text
    assert re.search(r"data: fashion-mnist: train [\d,]+, val [\d,]+, test [\d,]+ images of 1x28x28", text)
    assert re.search(r"data: 10 classes, training images per class: t-shirt \d+, trouser", text)
    assert "model.n_classes=10" in text and "classes=t-shirt,trouser" in text  # filled values


def test_progress_lines_without_a_terminal():
    from genforge.train.trainer import _NoBar

    lines = []
    bar = _NoBar(total=100, initial=10, log=lines.append, every_s=0.0)
    bar.update(1)
    assert lines and lines[0].startswith("progress: step 11/100")


def test_counts_stay_integers_in_the_log(tmp_path):
    rl = get_recipe("reinforce")
    cfg = make_config(rl, {**rl.TEST_CONFIG, "eval_episodes": 2})
    lines = []
    fit("reinforce", cfg, tmp_path / "r", log=lines.append)
    ev = [s for s in lines if s.startswith("eval ")]
    assert ev and "val_episodes=2 " in ev[-1] + " "


def test_channels_last_trains_the_same_model_in_nhwc_layout(tmp_path):
    """channels_last (the default) keeps conv weights NHWC while training and in load_run; the
    run's weights file is the same model either way (plain tensors, within float tolerance),
    and channels_last=false keeps PyTorch's layout."""
    runs = {}
    for on in (True, False):
        _, model = fit_model("image-classify", _cfg(channels_last=on), tmp_path / str(on), **QUIET)
        conv = model.features[4].weight  # the second conv (4 -> 8 channels: the layouts differ)
        assert conv.is_contiguous(memory_format=torch.channels_last) == on
        assert conv.is_contiguous() == (not on)
        _, _, loaded = ckpt.load_run(tmp_path / str(on))
        assert loaded.features[4].weight.is_contiguous(memory_format=torch.channels_last) == on
        runs[on] = load_file(tmp_path / str(on) / "model.safetensors")
    for k in runs[True]:
        assert torch.allclose(runs[True][k], runs[False][k], atol=1e-4), k


def test_group_by_length_keeps_every_row_once_and_batches_similar_lengths():
    """Each epoch of grouped batches visits the same rows as the plain shuffle (whole batches
    only), once each; a batch's rows come from one length-sorted window; the batches are a
    function of (seed, step), so a stream started at step s continues the full stream."""
    from genforge.data.batching import ShuffledBatches

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 60, (203,), generator=g)
    rows = torch.arange(203)
    plain = ShuffledBatches((rows,), 10, seed=3)
    grouped = ShuffledBatches((rows,), 10, seed=3, lengths=lengths, window=4)
    for epoch in range(2):
        a = torch.cat([next(plain)[0] for _ in range(plain.steps_per_epoch)])
        b = [next(grouped)[0] for _ in range(grouped.steps_per_epoch)]
        assert sorted(a.tolist()) == sorted(torch.cat(b).tolist())  # same 200 rows, once each
        # padding a batch to its longest row: grouping wastes far less of it
        waste = lambda bs: sum(int(lengths[x].max() * len(x) - lengths[x].sum()) for x in bs)
        assert waste(b) < 0.5 * waste(list(a.split(10)))
    later = ShuffledBatches((rows,), 10, seed=3, start_step=27, lengths=lengths, window=4)
    again = ShuffledBatches((rows,), 10, seed=3, lengths=lengths, window=4)
    for _ in range(27):
        next(again)
    for _ in range(30):
        assert torch.equal(next(later)[0], next(again)[0])
    with pytest.raises(ValueError, match="lengths has 5 entries for 203 rows"):
        ShuffledBatches((rows,), 10, seed=3, lengths=lengths[:5], window=4)


def test_grouped_text_batches_resume_exactly(tmp_path):
    """text-classify with group_by_length: the resumed run equals the one-go run."""
    cfg = lambda: make_config(get_recipe("text-classify"), {
        "model": "cnn", "data": "rt-polarity", "train_limit": 200, "batch_size": 8, "max_len": 30,
        "model.emb_dim": 8, "model.n_filters": 4, "max_steps": 6, "eval_every": 3,
        "eval_batches": 1, "group_by_length": 4, "plots": False})
    fit("text-classify", cfg(), tmp_path / "full", **QUIET)
    fit("text-classify", cfg(), tmp_path / "split", stop_at=3, **QUIET)
    fit("text-classify", cfg(), tmp_path / "split", resume=True, **QUIET)
    a, b = (load_file(tmp_path / r / "model.safetensors") for r in ("full", "split"))
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_layer_lr_decay_gives_each_depth_its_rate():
    """layer_lr_decay d: the head trains at lr, numbered layer N of L at lr * d^(L - N), the
    embeddings below at lr * d^(L + 1); biases and norms still skip weight decay; the
    schedule scales every group; a model with no numbered layers is refused by name."""
    from genforge.config import ConfigError
    from genforge.train.optim import make_optimizer, make_scheduler

    lm = get_recipe("language-model")
    cfg = make_config(lm, {"model": "gpt", "model.n_layer": 3, "model.n_head": 2,
                           "model.n_embd": 8, "model.block_size": 8, "lr": 1e-2,
                           "weight_decay": 0.1, "layer_lr_decay": 0.5, "warmup_steps": 2})
    cfg.model_cfg.vocab_size = 11
    model = lm.MODELS["gpt"][1](cfg.model_cfg)
    opt = make_optimizer(model, cfg)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-2)  # the top first: what the log shows
    for name, p in model.named_parameters():
        lr, wd = lr_of[id(p)]
        m = re.search(r"blocks\.(\d+)\.", name)
        depth = int(m.group(1)) + 1 if m else (0 if "emb" in name else 4)
        assert lr == pytest.approx(1e-2 * 0.5 ** (4 - depth)), name
        assert wd == (0.1 if p.dim() >= 2 else 0.0), name
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    sched = make_scheduler(opt, cfg, 10)
    opt.step(); sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx(
        [g["initial_lr"] * lr_factor(1, cfg, 10) for g in opt.param_groups])
    with pytest.raises(ConfigError, match="numbered layers.*layer_lr_decay=1"):
        make_optimizer(IC.build(_cfg(layer_lr_decay=0.5)), _cfg(layer_lr_decay=0.5))
