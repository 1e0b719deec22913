"""Deep Q-Network (Mnih et al. 2015, "Human-level control through deep RL") with the
Double-DQN target (van Hasselt et al. 2016), a Huber loss, a hard or Polyak-averaged target
network, a linear epsilon-greedy schedule and a uniform replay buffer.

The agent carries its replay buffer (`agent.replay`) as plain CPU tensors, outside the
weights: checkpoints of the weights stay small, and the RL recipe saves the buffer with the
trainer state so that a resumed run keeps its experience.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------
# helpers


def mlp(sizes: list[int], activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear -> act -> ... -> Linear (no activation after the last layer)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def linear_schedule(start: float, end: float, duration: int, t: int) -> float:
    """`start` at t=0, linearly to `end` at t=duration, then constant."""
    if duration <= 0 or t >= duration:
        return end
    return start + (end - start) * t / duration


# ---------------------------------------------------------------------------------------
# replay buffer


class ReplayBuffer:
    """Fixed-capacity ring buffer of transitions (s, a, r, s', terminated), sampled uniformly
    (Lin 1992; Mnih et al. 2015). Kept on the CPU and out of the model's weights: it is data,
    saved with the trainer state (`state_dict`) so a resumed run keeps its experience.

    `terminated` is the true end of an episode (no bootstrap); a time-limit truncation is
    stored with terminated=0 and the real final observation as s', so the target still
    bootstraps from it (Pardo et al. 2018, "Time limits in reinforcement learning")."""

    FIELDS = ("obs", "actions", "rewards", "next_obs", "terminated")

    def __init__(self, capacity: int, obs_dim: int):
        if capacity <= 0:
            raise ValueError(f"replay buffer capacity must be positive, got {capacity}")
        self.capacity = capacity
        self.obs = torch.zeros(capacity, obs_dim)
        self.actions = torch.zeros(capacity, dtype=torch.long)
        self.rewards = torch.zeros(capacity)
        self.next_obs = torch.zeros(capacity, obs_dim)
        self.terminated = torch.zeros(capacity)
        self.pos = 0  # next slot to write
        self.size = 0  # filled slots: [0, size)

    def __len__(self) -> int:
        return self.size

    @torch.no_grad()
    def add(self, obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
            next_obs: torch.Tensor, terminated: torch.Tensor) -> None:
        """Append a batch of n transitions: obs/next_obs (n, obs_dim), the rest (n,)."""
        n = obs.shape[0]
        values = [obs, actions, rewards, next_obs, terminated]
        if n > self.capacity:  # only the newest `capacity` would survive the wrap-around
            values = [v[-self.capacity:] for v in values]
            n = self.capacity
        first = min(n, self.capacity - self.pos)  # contiguous part before the wrap
        for name, v in zip(self.FIELDS, values):
            dst = getattr(self, name)
            dst[self.pos:self.pos + first] = v[:first]
            dst[:n - first] = v[first:]
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.capacity, self.size + n)

    def sample_indices(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer; add transitions first")
        # uniform over the filled slots [0, size): unfilled slots are never returned
        return torch.randint(0, self.size, (n,), generator=generator)

    def sample(self, n: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        idx = self.sample_indices(n, generator)
        return {name: getattr(self, name)[idx] for name in self.FIELDS}

    def state_dict(self) -> dict:
        """Only the filled part is stored (a fresh run's checkpoint stays small)."""
        return {"pos": self.pos, "size": self.size, "capacity": self.capacity,
                **{name: getattr(self, name)[:self.size].clone() for name in self.FIELDS}}

    def load_state_dict(self, state: dict) -> None:
        if state["capacity"] != self.capacity:
            raise ValueError(f"saved replay buffer holds {state['capacity']} transitions but "
                             f"this one {self.capacity}; keep model.buffer_size when resuming")
        self.pos, self.size = int(state["pos"]), int(state["size"])
        for name in self.FIELDS:
            getattr(self, name)[:self.size] = state[name]


# ---------------------------------------------------------------------------------------
# config and agent


@dataclass
class DQNConfig:
    hidden: tuple[int, ...] = (64, 64)  # Q-network widths; CartPole needs no more
    gamma: float = 0.99  # discount
    double: bool = True  # Double-DQN target: online net picks a', target net rates it
    huber_delta: float = 1.0  # Huber (smooth L1) threshold; 0 = plain squared error
    target_update_every: int = 128  # gradient steps between target syncs
    tau: float = 1.0  # 1.0 = hard copy at each sync; < 1 = Polyak average at each sync
    eps_start: float = 1.0  # epsilon-greedy exploration, linear in env steps
    eps_end: float = 0.04
    eps_steps: int = 8000  # env steps to anneal from eps_start to eps_end
    buffer_size: int = 50_000  # replay capacity (transitions)
    obs_dim: int = 0  # filled from the environment by the recipe
    n_actions: int = 0  # filled from the environment by the recipe


class DQN(nn.Module):
    """Online Q-network, target Q-network and replay buffer. `forward(obs)` -> Q (B, A)."""

    def __init__(self, cfg: DQNConfig):
        super().__init__()
        if cfg.obs_dim <= 0 or cfg.n_actions <= 0:
            raise ValueError("DQNConfig needs obs_dim and n_actions > 0 (the recipe fills them "
                             "from the environment)")
        if not 0.0 < cfg.tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {cfg.tau}")
        self.cfg = cfg
        self.q = mlp([cfg.obs_dim, *cfg.hidden, cfg.n_actions])
        self.target = copy.deepcopy(self.q)
        self.target.requires_grad_(False)
        self.replay = ReplayBuffer(cfg.buffer_size, cfg.obs_dim)  # not a module: not saved as weights

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
