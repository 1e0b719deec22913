"""The RL recipe on real gymnasium environments: learning beats a random policy, evaluation
is deterministic, resume restores the replay buffer and the exploration state."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from genforge.config import ConfigError, make_config
from genforge.recipes import get_recipe
from genforge.train import checkpoint as ckpt
from genforge.train.trainer import fit

rl = get_recipe("reinforce")
TINY = dict(rl.TEST_CONFIG)


def _train(cfg, steps: int):
    model = rl.build(cfg)
    opts = rl.optimizers(model, cfg)
    it = rl.batches(cfg, "train", 0, model=model)
    for step in range(steps):
        rl.update(model, next(it), opts, step, cfg)
    return model


def test_a2c_training_beats_random_policy_on_cartpole():
    # 16 envs x 8 steps x 160 updates = 20k env steps (the preset learns slowly at first: SGD)
    cfg = make_config(rl, {**rl.PRESETS["a2c-cartpole"][0], "seed": 1, "eval_episodes": 20})
    random = rl.random_baseline(cfg, episodes=20)["return_mean"]
    torch.manual_seed(1)
    model = _train(cfg, 160)
    trained = rl.evaluate(model, cfg)["return_mean"]
    assert random < 40  # CartPole's random policy lasts ~20 steps
    assert trained > 3 * random, (trained, random)


def test_dqn_training_beats_random_policy_on_cartpole():
    cfg = make_config(rl, {**rl.PRESETS["dqn-cartpole"][0], "seed": 0, "eval_episodes": 20})
    random = rl.random_baseline(cfg, episodes=20)["return_mean"]
    torch.manual_seed(0)
    model = _train(cfg, 20)  # 1000 + 20 * 256 = 6.1k env steps, 2560 gradient steps
    trained = rl.evaluate(model, cfg)["return_mean"]
    assert trained > 3 * random, (trained, random)


def test_evaluation_is_deterministic_and_uses_distinct_episodes():
    cfg = make_config(rl, {**TINY, "max_episode_steps": 0})
    torch.manual_seed(0)
    model = rl.build(cfg)
    a = rl.evaluate(model, cfg, episodes=7)
    b = rl.evaluate(model, cfg, episodes=7)
    assert a == b and a["episodes"] == 7
    returns, lengths = rl.run_episodes(rl.greedy_policy(model), cfg, rl._eval_seeds(cfg, "val", 7))
    assert (returns == lengths).all()  # CartPole pays 1 per step
    assert np.mean(returns) == pytest.approx(a["return_mean"])
    assert np.std(returns) == pytest.approx(a["return_std"])
    # one episode per seed, in seed order, independent of how many run in parallel
    r1, _ = rl.run_episodes(rl.greedy_policy(model), cfg, list(range(7)), max_parallel=7)
    r2, _ = rl.run_episodes(rl.greedy_policy(model), cfg, list(range(7)), max_parallel=2)
    assert r1.tolist() == r2.tolist()


@pytest.mark.parametrize("model_name", ["dqn", "a2c", "reinforce"])
def test_batches_shapes(model_name):
    tiny = {k: v for k, v in TINY.items() if not k.startswith("model.")}  # DQN's own keys
    cfg = make_config(rl, {**tiny, "model": model_name, "model.hidden": (16,)})
    model = rl.build(cfg)
    batch = next(rl.batches(cfg, "train", 0, model=model))
    n, t = cfg.n_envs, cfg.rollout_steps
    if model_name == "dqn":
        assert batch["obs"].shape == (cfg.gradient_steps, cfg.batch_size, 4)
        assert batch["actions"].shape == (cfg.gradient_steps, cfg.batch_size)
        assert batch["stats"]["env_steps"] == cfg.learning_starts + n * t
    elif model_name == "a2c":
        assert batch["obs"].shape == (t, n, 4) and batch["next_obs"].shape == (t, n, 4)
        assert batch["done"].shape == (t, n)
    else:
        mask = batch["mask"]
        assert batch["obs"].shape[1:] == (n, 4) and mask.shape[1] == n
        # each column is one whole episode: ones then zeros, and the last real step ends it
        lengths = mask.sum(0).long()
        assert all(mask[: int(L), j].all() and not mask[int(L):, j].any() for j, L in enumerate(lengths))
        assert batch["stats"]["episodes"] == n
    opts = rl.optimizers(model, cfg)
    logs = rl.update(model, batch, opts, 0, cfg)
    assert np.isfinite(float(logs["loss"]))


def test_resume_restores_replay_buffer_and_exploration(tmp_path):
    cfg = make_config(rl, {**TINY, "max_steps": 6, "eval_every": 3, "plots": False})
    run = tmp_path / "run"
    fit("reinforce", cfg, run, stop_at=3, log=lambda s: None)
    state = ckpt.load_trainer_state(run / "trainer_state.pt")
    saved_replay, saved_col = state["extra"]["replay"], state["extra"]["collector"]
    assert saved_replay["size"] == cfg.learning_starts + 3 * cfg.n_envs * cfg.rollout_steps
    assert saved_col["env_steps"] == saved_replay["size"]

    # what the trainer does on resume: new model + stream, then the extra state
    _, _, cfg2 = ckpt.read_config(run)
    model = rl.build(cfg2)
    rl.batches(cfg2, "train", start_step=3, model=model)
    rl.load_extra_state(model, cfg2, state["extra"])
    replay = model.collector.replay
    assert len(replay) == saved_replay["size"]
    assert torch.equal(replay.obs[: len(replay)], saved_replay["obs"])
    assert model.collector.env_steps == saved_col["env_steps"]
    assert model.epsilon(model.collector.env_steps) < cfg2.model_cfg.eps_start  # not restarted

    # resuming twice from the same checkpoint gives the same run (deterministic in seed, step)
    shutil.copytree(run, tmp_path / "copy")
    fit("reinforce", cfg2, run, resume=True, log=lambda s: None)
    fit("reinforce", cfg2, tmp_path / "copy", resume=True, log=lambda s: None)
    _, _, m1 = ckpt.load_run(run, "last")
    _, _, m2 = ckpt.load_run(tmp_path / "copy", "last")
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    end = ckpt.load_trainer_state(run / "trainer_state.pt")["extra"]["collector"]["env_steps"]
    assert end == saved_col["env_steps"] + 3 * cfg.n_envs * cfg.rollout_steps  # no refill


def test_returns_plot_written(tmp_path):
    cfg = make_config(rl, {**TINY, "max_steps": 40, "eval_every": 40, "plots": False})
    run = fit("reinforce", cfg, tmp_path / "run", log=lambda s: None)
    assert (run / "plots" / "returns.png").stat().st_size > 1000


def test_bad_environment_messages():
    with pytest.raises(ConfigError, match="unknown gymnasium environment"):
        rl.build(make_config(rl, {"data": "NoSuchEnv-v0"}))
    with pytest.raises(ConfigError, match="discrete action spaces only"):
        rl.build(make_config(rl, {"data": "Pendulum-v1"}))


def test_play_prints_returns_and_gif_needs_pygame(tmp_path, capsys):
    cfg = make_config(rl, {**TINY, "max_episode_steps": 0})
    torch.manual_seed(0)
    model = rl.build(cfg)
    rl.cli_play(model, cfg, None, episodes=3)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[:3]] == ["episode 1", "episode 2", "episode 3"]
    assert lines[3].startswith("mean ") and "over 3 episodes (dqn on CartPole-v1)" in lines[3]
    assert rl.play(model, cfg, episodes=3) == rl.play(model, cfg, episodes=3)  # fixed seeds
    gif = tmp_path / "play.gif"
    try:
        import pygame  # noqa: F401  (gymnasium's renderer)
    except ImportError:
        with pytest.raises(ConfigError, match="pip install pygame"):
            rl.play(model, cfg, episodes=1, render=str(gif))
    else:
        rl.play(model, cfg, episodes=1, render=str(gif))
        assert gif.read_bytes()[:6] == b"GIF89a"
