"""Replay buffer for off-policy agents (DQN)."""
from __future__ import annotations

import torch


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
