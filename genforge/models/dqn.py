"""Deep Q-Network (Mnih et al. 2015, "Human-level control through deep RL") with the
Double-DQN target (van Hasselt et al. 2016), a Huber loss, a hard or Polyak-averaged target
network and a linear epsilon-greedy schedule.

The replay buffer is data, not a part of the agent: it lives in genforge/rl/buffers.py and
is owned by the collector that fills it (stable-baselines3's split), so the weights stay
small and the buffer is saved with the trainer state. `buffer_size` stays in this config
because it is a setting of the algorithm (`model.buffer_size`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn as nn
import torch.nn.functional as F

from genforge.models.mlp import mlp

# ---------------------------------------------------------------------------------------
# helpers


def linear_schedule(start: float, end: float, duration: int, t: int) -> float:
    """`start` at t=0, linearly to `end` at t=duration, then constant."""
    if duration <= 0 or t >= duration:
        return end
    return start + (end - start) * t / duration


# ---------------------------------------------------------------------------------------
# config and agent


@dataclass
class DQNConfig:
    hidden: Annotated[tuple[int, ...], "[1, inf)"] = (64, 64)  # Q-network widths; CartPole needs no more
    gamma: Annotated[float, "[0, 1]"] = 0.99  # discount
    double: bool = True  # Double-DQN target: online net picks a', target net rates it
    huber_delta: Annotated[float, "(0, inf)"] = 1.0  # Huber (smooth L1) threshold; 0 = plain squared error
    target_update_every: Annotated[int, "[1, inf)"] = 128  # gradient steps between target syncs
    tau: Annotated[float, "(0, 1]"] = 1.0  # 1.0 = hard copy at each sync; < 1 = Polyak average at each sync
    eps_start: Annotated[float, "[0, 1]"] = 1.0  # epsilon-greedy exploration, linear in env steps
    eps_end: Annotated[float, "[0, 1]"] = 0.04
    eps_steps: Annotated[int, "[0, inf)"] = 8000  # env steps to anneal from eps_start to eps_end
    buffer_size: Annotated[int, "[1, inf)"] = 50_000  # replay capacity (transitions), used by the collector
    obs_dim: Annotated[int, "[0, inf)"] = 0  # filled from the environment by the recipe
    n_actions: Annotated[int, "[0, inf)"] = 0  # filled from the environment by the recipe


class DQN(nn.Module):
    """Online Q-network and target Q-network. `forward(obs)` -> Q (B, A)."""

    def __init__(self, cfg: DQNConfig):
        super().__init__()
        if cfg.obs_dim <= 0 or cfg.n_actions <= 0:
            raise ValueError("DQNConfig needs obs_dim and n_actions > 0 (the recipe fills them "
                             "from the environment)")
        if not 0.0 < cfg.tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {cfg.tau}")
        if cfg.buffer_size <= 0:  # checked here so a bad setting fails at build, not mid-run
            raise ValueError(f"replay buffer capacity must be positive, got {cfg.buffer_size}")
        self.cfg = cfg
        self.q = mlp([cfg.obs_dim, *cfg.hidden, cfg.n_actions], "relu")
        self.target = copy.deepcopy(self.q)
        self.target.requires_grad_(False)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.q(obs)  # (B, obs_dim) -> (B, n_actions)

    def epsilon(self, env_step: int) -> float:
        c = self.cfg
        return linear_schedule(c.eps_start, c.eps_end, c.eps_steps, env_step)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, epsilon: float = 0.0,
            generator: torch.Generator | None = None) -> torch.Tensor:
        """Epsilon-greedy actions (B,) for observations (B, obs_dim); epsilon=0 is greedy."""
        greedy = self.q(obs).argmax(-1)
        if epsilon <= 0:
            return greedy
        n = obs.shape[0]
        # drawn on the CPU (where `generator` lives), then moved next to the Q-values
        explore = (torch.rand(n, generator=generator) < epsilon).to(greedy.device)
        random = torch.randint(0, self.cfg.n_actions, (n,), generator=generator).to(greedy.device)
        return torch.where(explore, random, greedy)

    @torch.no_grad()
    def td_target(self, rewards: torch.Tensor, next_obs: torch.Tensor, terminated: torch.Tensor,
                  next_q_online: torch.Tensor | None = None) -> torch.Tensor:
        """y = r + gamma * (1 - terminated) * Q_target(s', a*), with
        a* = argmax_a Q_online(s', a) (Double DQN) or argmax_a Q_target(s', a) (DQN).
        `next_q_online` (B, A) may be passed when already computed."""
        next_q_target = self.target(next_obs)  # (B, A)
        if self.cfg.double:
            if next_q_online is None:
                next_q_online = self.q(next_obs)
            best = next_q_online.argmax(-1, keepdim=True)  # (B, 1) chosen by the online net
        else:
            best = next_q_target.argmax(-1, keepdim=True)
        next_v = next_q_target.gather(-1, best).squeeze(-1)  # (B,)
        return rewards + self.cfg.gamma * (1.0 - terminated) * next_v

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Huber TD loss on a batch of transitions (obs, actions, rewards, next_obs, terminated)."""
        obs, next_obs = batch["obs"], batch["next_obs"]
        if self.cfg.double:  # one online forward for s and s' (small nets: per-call overhead rules)
            q_all = self.q(torch.cat([obs, next_obs]))  # (2B, A)
            q_obs, next_q_online = q_all[:obs.shape[0]], q_all[obs.shape[0]:].detach()
        else:
            q_obs, next_q_online = self.q(obs), None
        y = self.td_target(batch["rewards"], next_obs, batch["terminated"], next_q_online)
        q = q_obs.gather(-1, batch["actions"].long().unsqueeze(-1)).squeeze(-1)  # (B,)
        if self.cfg.huber_delta > 0:
            loss = F.huber_loss(q, y, delta=self.cfg.huber_delta)
        else:
            loss = F.mse_loss(q, y)
        return {"loss": loss, "q_mean": q.detach().mean()}

    @torch.no_grad()
    def update_target(self) -> None:
        """Hard copy (tau=1) or Polyak average target <- tau * online + (1 - tau) * target."""
        if self.cfg.tau >= 1.0:
            self.target.load_state_dict(self.q.state_dict())
            return
        for pt, p in zip(self.target.parameters(), self.q.parameters()):
            pt.lerp_(p, self.cfg.tau)
