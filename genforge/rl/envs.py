"""Gymnasium environments: one by id with clear errors, and a pool stepped in lockstep."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from genforge.config import ConfigError


def make_env(env_id: str, max_episode_steps: int = 0, render_mode: str | None = None):
    """One gymnasium environment (discrete actions, flat vector observations), with a
    clear error when it cannot be made. max_episode_steps=0 keeps the env's own limit."""
    import gymnasium as gym

    kwargs = {"max_episode_steps": max_episode_steps} if max_episode_steps > 0 else {}
    try:
        env = gym.make(env_id, render_mode=render_mode, **kwargs)
    except gym.error.DependencyNotInstalled as e:
        raise ConfigError(f"environment {env_id!r} needs an extra package: {e}") from None
    except gym.error.Error as e:
        raise ConfigError(f"unknown gymnasium environment {env_id!r} ({e}); try CartPole-v1, "
                          "Acrobot-v1, MountainCar-v0 or LunarLander-v3") from None
    if not isinstance(env.action_space, gym.spaces.Discrete):
        raise ConfigError(f"environment {env_id!r} has {env.action_space} actions; the RL "
                          "recipe supports discrete action spaces only")
    shape = env.observation_space.shape
    if shape is None or len(shape) != 1:
        raise ConfigError(f"environment {env_id!r} has observations of shape {shape}; the RL "
                          "recipe supports flat vector observations only")
    return env


@dataclass(frozen=True)
class EnvSpec:
    """What is needed to make the same environment again: for the pool, the evaluation
    episodes and the GIF, each of which makes its own copies."""
    id: str
    max_episode_steps: int = 0  # 0 = the environment's own time limit

    def make(self, render_mode: str | None = None):
        return make_env(self.id, self.max_episode_steps, render_mode)

    def spaces(self) -> tuple[int, int]:
        """(observation size, number of actions)."""
        env = self.make()
        dims = (int(env.observation_space.shape[0]), int(env.action_space.n))
        env.close()
        return dims


class EnvPool:
    """n environments stepped in lockstep. An environment whose episode ends is reset in the
    same step; its real final observation is returned as `next_obs` (for bootstrapping
    after a time-limit truncation) while `obs` already holds the new episode's first one."""

    def __init__(self, spec: EnvSpec, n: int, seed: int):
        self.envs = [spec.make() for _ in range(n)]
        self.obs = np.stack([e.reset(seed=seed + i)[0] for i, e in enumerate(self.envs)]).astype(np.float32)
        self.ep_return = np.zeros(n)
        self.ep_length = np.zeros(n, dtype=np.int64)
        self.finished: list[tuple[float, int]] = []  # (return, length) of ended episodes

    def step(self, actions: np.ndarray, idx: np.ndarray | None = None):
        """Step environments `idx` (default all) with `actions`; returns, for those,
        (obs, actions, rewards, next_obs, terminated, truncated) as float32/bool arrays."""
        idx = np.arange(len(self.envs)) if idx is None else idx
        obs = self.obs[idx].copy()
        next_obs = np.empty_like(obs)
        rewards = np.empty(len(idx), dtype=np.float32)
        term = np.zeros(len(idx), dtype=bool)
        trunc = np.zeros(len(idx), dtype=bool)
        for k, (i, a) in enumerate(zip(idx, actions)):
            o, r, te, tr, _ = self.envs[i].step(int(a))
            next_obs[k], rewards[k], term[k], trunc[k] = o, r, te, tr
            self.ep_return[i] += r
            self.ep_length[i] += 1
            if te or tr:
                self.finished.append((float(self.ep_return[i]), int(self.ep_length[i])))
                self.ep_return[i], self.ep_length[i] = 0.0, 0
                o, _ = self.envs[i].reset()
            self.obs[i] = o
        return obs, np.asarray(actions), rewards, next_obs, term, trunc
