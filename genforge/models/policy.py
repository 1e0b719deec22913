"""Policy-gradient agents for discrete actions: REINFORCE with a learned baseline
(Williams 1992; Sutton & Barto 2018, sec. 13.4) and advantage actor-critic, A2C (the
synchronous variant of Mnih et al. 2016, "Asynchronous methods for deep RL") with an
entropy bonus and optional generalised advantage estimation (Schulman et al. 2016, GAE).

Both own their loss: `loss(batch)` takes a rollout collected by genforge/rl/rollout.py and
returns the policy, value and entropy terms.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn as nn
import torch.nn.functional as F

from genforge.models.mlp import mlp

# ---------------------------------------------------------------------------------------
# helpers


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """Reward-to-go G_t = sum_k gamma^k r_{t+k} within each episode.
    rewards, mask: (T, N), one complete episode per column, mask=1 on its real steps."""
    T = rewards.shape[0]
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])  # (N,)
    for t in reversed(range(T)):
        running = rewards[t] * mask[t] + gamma * running * mask[t]
        out[t] = running
    return out


def gae(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor,
        terminated: torch.Tensor, done: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """Generalised advantage estimates A_t = sum_k (gamma*lam)^k delta_{t+k}, with
    delta_t = r_t + gamma * (1 - terminated_t) * V(s'_t) - V(s_t). All (T, N).
    `done` (terminated or truncated) cuts the sum at episode ends; `terminated` alone stops
    the bootstrap, so a time-limit truncation still bootstraps from V(final obs).
    lam=1 gives the n-step (Monte-Carlo within the rollout) advantage of plain A2C."""
    delta = rewards + gamma * (1.0 - terminated) * next_values - values  # (T, N)
    adv = torch.zeros_like(delta)
    running = torch.zeros_like(delta[0])  # (N,)
    for t in reversed(range(delta.shape[0])):
        running = delta[t] + gamma * lam * (1.0 - done[t]) * running
        adv[t] = running
    return adv


# ---------------------------------------------------------------------------------------
# configs


@dataclass
class PolicyConfig:
    hidden: Annotated[tuple[int, ...], "[1, inf)"] = (64, 64)  # widths of the actor and of the critic MLPs
    gamma: Annotated[float, "[0, 1]"] = 0.99
    ent_coef: Annotated[float, "[0, inf)"] = 0.0  # entropy bonus weight (exploration)
    vf_coef: Annotated[float, "[0, inf)"] = 0.5  # value/baseline loss weight
    normalize_advantages: bool = False
    obs_dim: Annotated[int, "[0, inf)"] = 0  # filled from the environment by the recipe
    n_actions: Annotated[int, "[0, inf)"] = 0  # filled from the environment by the recipe


@dataclass
class ReinforceConfig(PolicyConfig):
    normalize_advantages: bool = True  # per-batch whitening of G - b(s): a cheap variance cut


@dataclass
class A2CConfig(PolicyConfig):
    gae_lambda: Annotated[float, "[0, 1]"] = 1.0  # 1.0 = plain n-step advantages; e.g. 0.95 = GAE


# ---------------------------------------------------------------------------------------
# agents


class ActorCritic(nn.Module):
    """Separate actor (logits) and critic (state value) MLPs on the same observation."""

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        if cfg.obs_dim <= 0 or cfg.n_actions <= 0:
            raise ValueError("policy config needs obs_dim and n_actions > 0 (the recipe fills "
                             "them from the environment)")
        self.cfg = cfg
        self.actor = mlp([cfg.obs_dim, *cfg.hidden, cfg.n_actions], "tanh")
        self.critic = mlp([cfg.obs_dim, *cfg.hidden, 1], "tanh")
        # small last policy layer: near-uniform initial policy (Andrychowicz et al. 2021)
        nn.init.orthogonal_(self.actor[-1].weight, gain=0.01)
        nn.init.zeros_(self.actor[-1].bias)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor(obs)  # (B, obs_dim) -> (B, n_actions) logits

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs).squeeze(-1)  # (..., obs_dim) -> (...)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False,
            generator: torch.Generator | None = None) -> torch.Tensor:
        logits = self.actor(obs)
        if deterministic:
            return logits.argmax(-1)
        probs = torch.softmax(logits, -1).reshape(-1, logits.shape[-1])  # (B, A) for multinomial
        return torch.multinomial(probs, 1, generator=generator).reshape(logits.shape[:-1])

    def _policy_terms(self, obs: torch.Tensor, actions: torch.Tensor):
        logp_all = F.log_softmax(self.actor(obs), -1)  # (..., A)
        logp = logp_all.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        return logp, entropy


class Reinforce(ActorCritic):
    """REINFORCE with a learned state-value baseline b(s): the gradient of
    E[log pi(a|s) (G - b(s))] is unbiased for any b, and a good b cuts its variance."""

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """batch: obs (T, N, obs_dim), actions/rewards/mask (T, N): N complete episodes,
        padded to the longest (mask=0 on padding)."""
        mask = batch["mask"]
        returns = discounted_returns(batch["rewards"], mask, self.cfg.gamma)  # (T, N)
        baseline = self.value(batch["obs"])  # (T, N)
        adv = returns - baseline.detach()
        n = mask.sum().clamp(min=1)
        if self.cfg.normalize_advantages:
            mean = (adv * mask).sum() / n
            std = (((adv - mean) ** 2 * mask).sum() / n).sqrt()
            adv = (adv - mean) / (std + 1e-8)
        logp, entropy = self._policy_terms(batch["obs"], batch["actions"])
        policy_loss = -(logp * adv * mask).sum() / n
        value_loss = (((baseline - returns) ** 2) * mask).sum() / n
        ent = (entropy * mask).sum() / n
        loss = policy_loss + self.cfg.vf_coef * value_loss - self.cfg.ent_coef * ent
        return {"loss": loss, "policy_loss": policy_loss.detach(),
                "value_loss": value_loss.detach(), "entropy": ent.detach()}


class A2C(ActorCritic):
    """Advantage actor-critic on fixed-length rollouts from parallel environments."""

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """batch: obs/next_obs (T, N, obs_dim) where next_obs is the real successor (the final
        observation at an episode end), actions/rewards/terminated/done (T, N)."""
        values = self.value(batch["obs"])  # (T, N)
        with torch.no_grad():
            next_values = self.value(batch["next_obs"])  # (T, N)
            adv = gae(batch["rewards"], values.detach(), next_values, batch["terminated"],
                      batch["done"], self.cfg.gamma, self.cfg.gae_lambda)
            returns = adv + values.detach()
            if self.cfg.normalize_advantages:
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        logp, entropy = self._policy_terms(batch["obs"], batch["actions"])
        policy_loss = -(logp * adv).mean()
        value_loss = F.mse_loss(values, returns)
        ent = entropy.mean()
        loss = policy_loss + self.cfg.vf_coef * value_loss - self.cfg.ent_coef * ent
        return {"loss": loss, "policy_loss": policy_loss.detach(),
                "value_loss": value_loss.detach(), "entropy": ent.detach()}
