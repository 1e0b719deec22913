"""Experience collection: the acting state of a training run (`Collector`) and the three
streams the RL recipe trains on. Each stream acts with the agent's current weights and
yields what its algorithm learns from:

  replay_stream    DQN: n_envs * rollout_steps env steps into the replay buffer, then
                   gradient_steps minibatches of batch_size transitions, (G, B, ...)
  rollout_stream   A2C: fixed-length rollouts (T=rollout_steps, N=n_envs)
  episode_stream   REINFORCE: one complete episode per environment, padded, with a mask

All sampling (exploration, actions on the CPU, replay minibatches) draws from the
collector's generator, whose state is saved with the run: resume is deterministic.
"""
from __future__ import annotations

from collections import deque
from typing import Iterator

import numpy as np
import torch

from genforge.models.dqn import DQN
from genforge.models.policy import A2C, Reinforce
from genforge.rl.buffers import ReplayBuffer
from genforge.rl.envs import EnvPool, EnvSpec


def stream_seed(seed: int, start_step: int) -> int:
    """Seed of the environments and the sampling RNG of a stream starting at `start_step`:
    a function of (seed, step), so a resumed run is deterministic too."""
    return (seed * 1_000_003 + start_step * 7919) % (2**31)


class Collector:
    """Acting state of a training run: environments, sampling RNG, env-step counter, return
    history and, for off-policy agents, the replay buffer. The recipe attaches it to the
    agent (`agent.collector`) so that evaluation and the saved trainer state can reach it."""

    def __init__(self, spec: EnvSpec, n_envs: int, seed: int, replay: ReplayBuffer | None = None):
        self.pool = EnvPool(spec, n_envs, seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.replay = replay
        self.env_steps = 0
        self.episodes = 0
        self.recent = deque(maxlen=100)  # returns of the last 100 training episodes
        self.curve: list[tuple[int, float]] = []  # (env steps, training episode return)

    def harvest(self) -> None:
        for ret, _ in self.pool.finished:
            self.episodes += 1
            self.recent.append(ret)
            self.curve.append((self.env_steps, ret))
        self.pool.finished.clear()

    def stats(self) -> dict[str, float]:
        out = {"env_steps": float(self.env_steps), "episodes": float(self.episodes)}
        if self.recent:
            out["episode_return"] = float(np.mean(self.recent))
        return out

    def state_dict(self) -> dict:
        """Counters, return history and RNG; the replay buffer has its own state_dict."""
        curve = torch.tensor(self.curve, dtype=torch.float64).reshape(-1, 2)
        return {"env_steps": self.env_steps, "episodes": self.episodes,
                "recent": torch.tensor(list(self.recent), dtype=torch.float64),
                "curve": curve, "gen": self.gen.get_state()}

    def load_state_dict(self, st: dict) -> None:
        self.env_steps, self.episodes = int(st["env_steps"]), int(st["episodes"])
        self.recent = deque(st["recent"].tolist(), maxlen=100)
        self.curve = [(int(s), float(r)) for s, r in st["curve"].tolist()]
        self.gen.set_state(st["gen"])


def _device(agent: torch.nn.Module) -> torch.device:
    return next(agent.parameters()).device


def replay_stream(agent: DQN, col: Collector, rollout_steps: int, gradient_steps: int,
                  batch_size: int, learning_starts: int) -> Iterator[dict]:
    """After a uniformly random warm-up of `learning_starts` env steps: act epsilon-greedily
    for rollout_steps steps in every environment, then sample gradient_steps minibatches."""
    replay, dev, n_envs = col.replay, _device(agent), len(col.pool.envs)
    if replay is None:
        raise ValueError("replay_stream needs a Collector with a replay buffer")

    def store(obs, actions, rewards, next_obs, term, trunc):
        # truncation is not termination: s' is the real final obs and the target bootstraps
        replay.add(torch.from_numpy(obs), torch.from_numpy(actions), torch.from_numpy(rewards),
                   torch.from_numpy(next_obs), torch.from_numpy(term.astype(np.float32)))
        col.env_steps += len(obs)

    while True:
        while len(replay) < max(learning_starts, batch_size):  # uniform warm-up
            acts = torch.randint(0, agent.cfg.n_actions, (n_envs,), generator=col.gen)
            store(*col.pool.step(acts.numpy()))
        for _ in range(rollout_steps):
            obs = torch.from_numpy(col.pool.obs).to(dev)
            acts = agent.act(obs, agent.epsilon(col.env_steps), generator=col.gen)
            store(*col.pool.step(acts.cpu().numpy()))
        col.harvest()
        n, b = gradient_steps, batch_size
        sample = replay.sample(n * b, generator=col.gen)
        batch = {k: v.reshape(n, b, *v.shape[1:]) for k, v in sample.items()}  # (G, B, ...)
        yield {**batch, "stats": {**col.stats(), "epsilon": agent.epsilon(col.env_steps)}}


def rollout_stream(agent: A2C, col: Collector, rollout_steps: int) -> Iterator[dict]:
    """Fixed-length rollouts (T=rollout_steps, N=n_envs) for A2C."""
    dev, n_envs = _device(agent), len(col.pool.envs)
    while True:
        steps = []
        for _ in range(rollout_steps):
            obs = torch.from_numpy(col.pool.obs).to(dev)
            # the CPU generator cannot drive sampling on another device
            acts = agent.act(obs, generator=None if dev.type != "cpu" else col.gen).cpu().numpy()
            steps.append(col.pool.step(acts))
            col.env_steps += n_envs
        col.harvest()
        obs, acts, rew, nxt, term, trunc = (np.stack(x) for x in zip(*steps))  # each (T, N, ...)
        yield {"obs": torch.from_numpy(obs), "actions": torch.from_numpy(acts).long(),
               "rewards": torch.from_numpy(rew), "next_obs": torch.from_numpy(nxt),
               "terminated": torch.from_numpy(term.astype(np.float32)),
               "done": torch.from_numpy((term | trunc).astype(np.float32)), "stats": col.stats()}


def episode_stream(agent: Reinforce, col: Collector) -> Iterator[dict]:
    """One complete episode per environment, padded to the longest: (T, N, ...) + mask."""
    dev, n = _device(agent), len(col.pool.envs)
    while True:
        active = np.ones(n, dtype=bool)
        obs_l, act_l, rew_l, mask_l = [], [], [], []
        while active.any():
            idx = np.flatnonzero(active)
            obs_t = torch.from_numpy(col.pool.obs[idx]).to(dev)
            acts = agent.act(obs_t, generator=None if dev.type != "cpu" else col.gen).cpu().numpy()
            obs, _, rew, _, term, trunc = col.pool.step(acts, idx)
            o = np.zeros((n, obs.shape[1]), np.float32)
            a, r, m = np.zeros(n, np.int64), np.zeros(n, np.float32), np.zeros(n, np.float32)
            o[idx], a[idx], r[idx], m[idx] = obs, acts, rew, 1.0
            obs_l.append(o), act_l.append(a), rew_l.append(r), mask_l.append(m)
            col.env_steps += len(idx)
            active[idx[term | trunc]] = False
        col.harvest()
        yield {"obs": torch.from_numpy(np.stack(obs_l)), "actions": torch.from_numpy(np.stack(act_l)),
               "rewards": torch.from_numpy(np.stack(rew_l)), "mask": torch.from_numpy(np.stack(mask_l)),
               "stats": col.stats()}
