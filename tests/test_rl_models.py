"""Oracle tests for the RL models: Double-DQN target, returns and GAE, network layout.
(The replay buffer, now in genforge/rl/, is tested in tests/test_rl_buffers.py.)"""
from __future__ import annotations

import pytest
import torch

from genforge.models.dqn import DQN, DQNConfig, linear_schedule
from genforge.models.mlp import MLP, MLPConfig
from genforge.models.policy import A2C, A2CConfig, Reinforce, ReinforceConfig, discounted_returns, gae


def _linear_dqn(double: bool, gamma: float = 0.9) -> DQN:
    """A DQN whose nets are single linear maps we set by hand: Q_online(s) = s,
    Q_target(s) = diag(1, 5) s."""
    agent = DQN(DQNConfig(obs_dim=2, n_actions=2, hidden=(), gamma=gamma, double=double,
                          buffer_size=8))
    with torch.no_grad():
        agent.q[0].weight.copy_(torch.eye(2))
        agent.q[0].bias.zero_()
        agent.target[0].weight.copy_(torch.diag(torch.tensor([1.0, 5.0])))
        agent.target[0].bias.zero_()
    return agent


def test_double_dqn_target_matches_hand_computation():
    rewards = torch.tensor([1.0, 0.5, 2.0])
    next_obs = torch.tensor([[3.0, 1.0], [1.0, 2.0], [4.0, 9.0]])
    terminated = torch.tensor([0.0, 0.0, 1.0])
    # row 0: online Q(s') = [3, 1] -> a* = 0; target Q(s') = [3, 5] -> 3; y = 1 + 0.9 * 3
    # row 1: online [1, 2] -> a* = 1; target [1, 10] -> 10; y = 0.5 + 0.9 * 10
    # row 2: terminated -> y = r = 2
    expected_double = torch.tensor([1 + 0.9 * 3, 0.5 + 0.9 * 10, 2.0])
    y = _linear_dqn(double=True).td_target(rewards, next_obs, terminated)
    torch.testing.assert_close(y, expected_double)
    # vanilla DQN takes the max of the target net: row 0 -> max(3, 5) = 5
    expected_vanilla = torch.tensor([1 + 0.9 * 5, 0.5 + 0.9 * 10, 2.0])
    y = _linear_dqn(double=False).td_target(rewards, next_obs, terminated)
    torch.testing.assert_close(y, expected_vanilla)


def test_dqn_huber_loss_and_gradient_only_on_online_net():
    agent = _linear_dqn(double=True)
    batch = {"obs": torch.tensor([[1.0, 0.0], [0.0, 4.0]]), "actions": torch.tensor([0, 1]),
             "rewards": torch.tensor([1.0, 0.5]), "next_obs": torch.tensor([[3.0, 1.0], [1.0, 2.0]]),
             "terminated": torch.tensor([0.0, 0.0])}
    out = agent.loss(batch)
    # Q(s, a) = [1, 4]; y = [3.7, 9.5]; errors 2.7 and 5.5, both > delta=1: |e| - 0.5
    torch.testing.assert_close(out["loss"], torch.tensor(((2.7 - 0.5) + (5.5 - 0.5)) / 2))
    out["loss"].backward()
    assert agent.q[0].weight.grad is not None
    assert all(p.grad is None for p in agent.target.parameters())


def test_target_update_hard_and_polyak():
    agent = _linear_dqn(double=True)
    agent.update_target()  # tau = 1: hard copy
    torch.testing.assert_close(agent.target[0].weight, torch.eye(2))
    agent = DQN(DQNConfig(obs_dim=2, n_actions=2, hidden=(), tau=0.25, buffer_size=4))
    with torch.no_grad():
        agent.q[0].weight.fill_(1.0)
        agent.target[0].weight.fill_(0.0)
    agent.update_target()
    torch.testing.assert_close(agent.target[0].weight, torch.full((2, 2), 0.25))


def test_epsilon_schedule_and_greedy_action():
    assert linear_schedule(1.0, 0.1, 100, 0) == 1.0
    assert linear_schedule(1.0, 0.1, 100, 50) == pytest.approx(0.55)
    assert linear_schedule(1.0, 0.1, 100, 1000) == 0.1
    agent = _linear_dqn(double=True)
    obs = torch.tensor([[3.0, 1.0], [1.0, 2.0]])
    assert agent.act(obs, epsilon=0.0).tolist() == [0, 1]
    g = torch.Generator().manual_seed(0)
    acts = agent.act(obs.repeat(2000, 1), epsilon=1.0, generator=g)
    assert 0.45 < acts.float().mean().item() < 0.55  # uniformly random when epsilon = 1


def test_discounted_returns_hand_computed():
    rewards = torch.tensor([[1.0, 1.0], [2.0, 1.0], [3.0, 0.0]])  # (T=3, N=2)
    mask = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])  # episode 2 has 2 steps
    g = 0.5
    expected = torch.tensor([[1 + g * 2 + g * g * 3, 1 + g * 1], [2 + g * 3, 1.0], [3.0, 0.0]])
    torch.testing.assert_close(discounted_returns(rewards, mask, g), expected)


def test_gae_hand_computed_and_lambda_one_is_n_step_return():
    r = torch.tensor([[1.0], [1.0], [1.0]])
    v = torch.tensor([[0.5], [0.2], [0.1]])
    nv = torch.tensor([[0.2], [0.1], [0.7]])  # V(s_{t+1}); the last one bootstraps
    zeros = torch.zeros(3, 1)
    g, lam = 0.9, 0.8
    d = r + g * nv - v
    a2 = d[2]
    a1 = d[1] + g * lam * a2
    a0 = d[0] + g * lam * a1
    torch.testing.assert_close(gae(r, v, nv, zeros, zeros, g, lam), torch.stack([a0, a1, a2]))
    # lam = 1: A_0 = r0 + g r1 + g^2 r2 + g^3 V(s_3) - V(s_0)
    a = gae(r, v, nv, zeros, zeros, g, 1.0)
    assert a[0, 0].item() == pytest.approx(1 + g + g * g + g ** 3 * 0.7 - 0.5)
    # termination at t=1: no bootstrap and no credit flowing back across the boundary
    term = torch.tensor([[0.0], [1.0], [0.0]])
    a = gae(r, v, nv, term, term, g, lam)
    assert a[1, 0].item() == pytest.approx(1.0 - 0.2)
    assert a[0, 0].item() == pytest.approx((1 + g * 0.2 - 0.5) + g * lam * (1.0 - 0.2))
    # truncation at t=1: still bootstraps from V(final obs) but cuts the trace
    a = gae(r, v, nv, zeros, term, g, lam)
    assert a[1, 0].item() == pytest.approx(1.0 + g * 0.1 - 0.2)


@pytest.mark.parametrize("cls,cfg_cls", [(A2C, A2CConfig), (Reinforce, ReinforceConfig)])
def test_policy_losses_backward(cls, cfg_cls):
    torch.manual_seed(0)
    agent = cls(cfg_cls(obs_dim=3, n_actions=2, ent_coef=0.01))
    T, N = 5, 4
    batch = {"obs": torch.randn(T, N, 3), "next_obs": torch.randn(T, N, 3),
             "actions": torch.randint(0, 2, (T, N)), "rewards": torch.ones(T, N),
             "terminated": torch.zeros(T, N), "done": torch.zeros(T, N), "mask": torch.ones(T, N)}
    out = agent.loss(batch)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert all(p.grad is not None for p in agent.parameters())
    # near-uniform initial policy: entropy close to log 2
    assert out["entropy"].item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=0.01)


def test_reinforce_gradient_raises_probability_of_rewarded_action():
    torch.manual_seed(0)
    agent = Reinforce(ReinforceConfig(obs_dim=1, n_actions=2, normalize_advantages=False))
    opt = torch.optim.Adam(agent.parameters(), lr=0.05)
    obs = torch.ones(1, 64, 1)
    for _ in range(30):  # one-step bandit: action 1 pays 1, action 0 pays 0
        actions = agent.act(obs)
        batch = {"obs": obs, "actions": actions, "rewards": actions.float(), "mask": torch.ones(1, 64)}
        opt.zero_grad()
        agent.loss(batch)["loss"].backward()
        opt.step()
    p1 = torch.softmax(agent(torch.ones(1, 1)), -1)[0, 1].item()
    assert p1 > 0.9


def test_networks_keep_their_checkpoint_parameter_names():
    """The RL nets and the image MLP share models/mlp.py's builder; checkpoints written
    before it (q.0/q.2, actor.0/actor.2/actor.4, net.0/net.3/net.6) must still load."""
    dqn = DQN(DQNConfig(obs_dim=4, n_actions=2, hidden=(8, 8)))
    assert list(dqn.state_dict()) == [f"{net}.{i}.{p}" for net in ("q", "target")
                                      for i in (0, 2, 4) for p in ("weight", "bias")]
    assert isinstance(dqn.q[1], torch.nn.ReLU)
    pg = A2C(A2CConfig(obs_dim=4, n_actions=2, hidden=(8, 8)))
    assert list(pg.state_dict()) == [f"{net}.{i}.{p}" for net in ("actor", "critic")
                                     for i in (0, 2, 4) for p in ("weight", "bias")]
    assert isinstance(pg.actor[1], torch.nn.Tanh) and isinstance(pg.critic[3], torch.nn.Tanh)
    mlp = MLP(MLPConfig(hidden=(8, 8), dropout=0.1, in_features=4, n_classes=3))
    assert [k for k in mlp.state_dict()] == [f"net.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")]
    assert isinstance(mlp.net[2], torch.nn.Dropout) and len(mlp.net) == 7
