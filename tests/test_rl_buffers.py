"""The replay buffer (genforge/rl/buffers.py): uniform sampling over filled slots,
wrap-around, save/load round trip."""
from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from genforge.rl.buffers import ReplayBuffer


def test_replay_sampling_is_uniform_over_filled_slots():
    buf = ReplayBuffer(capacity=100, obs_dim=1)
    n_filled = 40
    ids = torch.arange(1, n_filled + 1, dtype=torch.float32)  # transition i carries obs = i
    buf.add(ids[:, None], torch.zeros(n_filled), torch.zeros(n_filled), ids[:, None],
            torch.zeros(n_filled))
    g = torch.Generator().manual_seed(123)
    obs = buf.sample(40_000, generator=g)["obs"].squeeze(1)
    assert obs.min().item() >= 1, "sampled an unfilled slot (obs = 0)"
    counts = torch.bincount(obs.long(), minlength=n_filled + 1)[1:]
    assert counts.shape[0] == n_filled
    assert chisquare(counts.numpy()).pvalue > 1e-3  # uniform over the 40 filled slots


def test_replay_wraps_around_and_keeps_newest():
    buf = ReplayBuffer(capacity=10, obs_dim=1)
    for start in range(0, 25, 5):  # 25 transitions, numbered 1..25, in chunks of 5
        ids = torch.arange(start + 1, start + 6, dtype=torch.float32)
        buf.add(ids[:, None], torch.zeros(5), ids, ids[:, None], torch.zeros(5))
    assert len(buf) == 10
    assert sorted(buf.obs.squeeze(1).tolist()) == list(range(16, 26))
    g = torch.Generator().manual_seed(0)
    s = buf.sample(5000, generator=g)
    assert set(s["obs"].squeeze(1).long().tolist()) == set(range(16, 26))
    torch.testing.assert_close(s["obs"].squeeze(1), s["rewards"])  # fields stay aligned
    # save/load round trip keeps content and write position
    other = ReplayBuffer(capacity=10, obs_dim=1)
    other.load_state_dict(buf.state_dict())
    assert (other.obs == buf.obs).all() and other.pos == buf.pos and len(other) == 10
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer(capacity=4, obs_dim=1).sample(1)
