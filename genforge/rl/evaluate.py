"""Evaluation of agents: deterministic policies, the batched episode runner (behind the
recipe's `evaluate`, `genforge eval --episodes`, `genforge play` and bench/bench_rl.py),
GIF rendering of an episode and the plot of returns against env steps."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from genforge.config import ConfigError
from genforge.models.dqn import DQN
from genforge.models.policy import ActorCritic
from genforge.rl.envs import EnvSpec

Policy = Callable[[torch.Tensor], torch.Tensor]  # obs (B, obs_dim) -> actions (B,)


def greedy_policy(model: nn.Module) -> Policy:
    """obs (B, obs_dim) -> deterministic actions (B,): argmax Q for DQN, argmax pi for PG."""
    agent = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    if isinstance(agent, DQN):
        return lambda obs: agent.act(obs, epsilon=0.0)
    if not isinstance(agent, ActorCritic):
        raise TypeError(f"no greedy policy for {type(agent).__name__}; expected a DQN or an ActorCritic")
    return lambda obs: agent.act(obs, deterministic=True)


def run_episodes(policy: Policy | None, spec: EnvSpec, seeds: list[int],
                 device: torch.device | str = "cpu", max_parallel: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Run one episode per seed (batched over up to `max_parallel` environments).
    `policy=None` acts uniformly at random. Returns (returns, lengths) in seed order."""
    n = len(seeds)
    envs = [spec.make() for _ in range(min(n, max_parallel))]
    rng = np.random.default_rng(seeds[0] if seeds else 0)
    returns, lengths = np.zeros(n), np.zeros(n, dtype=np.int64)
    slot_ep = np.full(len(envs), -1)  # episode index running in each env, -1 = idle
    obs = np.zeros((len(envs), envs[0].observation_space.shape[0]), np.float32)
    nxt = 0
    for i, env in enumerate(envs):
        if nxt < n:
            obs[i], _ = env.reset(seed=seeds[nxt])
            slot_ep[i], nxt = nxt, nxt + 1
    while (slot_ep >= 0).any():
        idx = np.flatnonzero(slot_ep >= 0)
        if policy is None:
            acts = rng.integers(0, envs[0].action_space.n, len(idx))
        else:
            with torch.no_grad():
                acts = policy(torch.from_numpy(obs[idx]).to(device)).cpu().numpy()
        for i, a in zip(idx, acts):
            o, r, te, tr, _ = envs[i].step(int(a))
            ep = slot_ep[i]
            returns[ep] += r
            lengths[ep] += 1
            obs[i] = o
            if te or tr:
                if nxt < n:
                    obs[i], _ = envs[i].reset(seed=seeds[nxt])
                    slot_ep[i], nxt = nxt, nxt + 1
                else:
                    slot_ep[i] = -1
    for env in envs:
        env.close()
    return returns, lengths


def render_gif(policy: Policy, spec: EnvSpec, seed: int, path: Path,
               device: torch.device | str = "cpu") -> None:
    """Write one episode (seeded `seed`) as an animated GIF at `path` (needs pygame)."""
    try:
        env = spec.make(render_mode="rgb_array")
        obs, _ = env.reset(seed=seed)
        frames = [env.render()]
    except Exception as e:  # gymnasium raises DependencyNotInstalled without pygame
        raise ConfigError(f"rendering {spec.id!r} failed ({e}); `pip install pygame` to render") from None
    done = False
    while not done:
        a = policy(torch.from_numpy(np.asarray(obs, np.float32))[None].to(device))
        obs, _, te, tr, _ = env.step(int(a[0]))
        frames.append(env.render())
        done = te or tr
    env.close()
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f) for f in frames[::2]]  # every other frame keeps the file small
    images[0].save(path, save_all=True, append_images=images[1:], duration=40, loop=0)


def plot_returns(curve: list[tuple[int, float]], path: Path, title: str = "",
                 evals: list[tuple[float, float, float]] = ()) -> None:
    """Training episode returns (dots, running mean) and greedy evaluations (mean +- std)
    against env steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([s for s, _ in curve])
    rets = np.array([r for _, r in curve])
    window = max(1, min(100, len(rets) // 10))
    smooth = np.convolve(rets, np.ones(window) / window, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, rets, ".", ms=2, alpha=0.3, label="training episode return")
    ax.plot(steps[window - 1:], smooth, label=f"training, mean of last {window}")
    if evals:
        e = np.array(evals, dtype=float)  # (n, 3): env steps, mean, std
        ax.errorbar(e[:, 0], e[:, 1], yerr=e[:, 2], fmt="o-", ms=3, capsize=2,
                    label="greedy evaluation (mean +- std)")
    ax.set_xlabel("env steps")
    ax.set_ylabel("return")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
