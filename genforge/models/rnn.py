"""Recurrent language models: embedding -> RNN / LSTM / GRU layers -> linear head.

One module for the three cells, chosen by `RNNConfig.cell`:
- `rnn`: Elman's tanh recurrence (Elman 1990, "Finding Structure in Time"),
- `lstm`: Hochreiter & Schmidhuber 1997 (with a forget gate, Gers et al. 2000),
- `gru`: Cho et al. 2014, fewer gates than the LSTM and often as good on characters.
Dropout between layers and on the embeddings/outputs follows Zaremba et al. 2014
("Recurrent Neural Network Regularization"); tying the head to the embedding follows
Press & Wolf 2017 and Inan et al. 2017 (it needs hidden_size == embed_size, or a projection,
which is what `proj` is for).

Generation carries the hidden state: `step(idx, state)` consumes only the new tokens, so the
prompt is read once and each generated token costs one cell update.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from genforge.models.layers import Dropout

_CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}

# an LSTM carries (h, c), the others h: each (n_layer, B, hidden)
State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


@dataclass
class RNNConfig:
    """Defaults: the gru-shakespeare preset's size, which trains in minutes on 2 CPU cores."""

    vocab_size: Annotated[int, "[0, inf)"] = 0  # filled from the tokenizer by the recipe
    cell: Literal["rnn", "lstm", "gru"] = "gru"
    embed_size: Annotated[int, "[1, inf)"] = 64
    hidden_size: Annotated[int, "[1, inf)"] = 256
    n_layer: Annotated[int, "[1, inf)"] = 2
    dropout: Annotated[float, "[0, 1)"] = 0.0
    tie_weights: bool = False  # adds a hidden -> embed projection when sizes differ
    block_size: Annotated[int, "[1, inf)"] = 128  # training window length (truncated backprop through time)


class RNNLM(nn.Module):
    def __init__(self, cfg: RNNConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("RNNConfig.vocab_size must be set (the recipe fills it from the tokenizer)")
        if cfg.cell not in _CELLS:
            raise ValueError(f"unknown cell {cfg.cell!r}; choose one of: {', '.join(_CELLS)}")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.embed_size)
        self.drop = Dropout(cfg.dropout)
        self.rnn = _CELLS[cfg.cell](
            cfg.embed_size, cfg.hidden_size, num_layers=cfg.n_layer, batch_first=True,
            dropout=cfg.dropout if cfg.n_layer > 1 else 0.0,
        )
        out_size = cfg.hidden_size
        self.proj = None
        if cfg.tie_weights and cfg.hidden_size != cfg.embed_size:
            self.proj = nn.Linear(cfg.hidden_size, cfg.embed_size, bias=False)
            out_size = cfg.embed_size
        self.head = nn.Linear(out_size, cfg.vocab_size)
        if cfg.tie_weights:
            self.head.weight = self.tok_emb.weight

    @property
    def context_size(self) -> int:
        return self.cfg.block_size

    def forward(self, idx: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """idx (B, T) -> logits (B, T, vocab) and the hidden state after the last token."""
        x = self.drop(self.tok_emb(idx))  # (B, T, E)
        out, state = self.rnn(x, state)  # out (B, T, H); state (n_layer, B, H) [x2 for lstm]
        out = self.drop(out)
        if self.proj is not None:
            out = self.proj(out)  # (B, T, E)
        return self.head(out), state

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy over windows that start from a zero state."""
        logits, _ = self(idx)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))

    # -- generation ---------------------------------------------------------------------

    def new_state(self, batch: int = 1) -> None:
        return None  # nn.RNN/LSTM/GRU start from zeros when given None

    @torch.no_grad()
    def step(self, idx: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Feed new tokens idx (B, T); return logits of the last one (B, vocab) and the state."""
        logits, state = self(idx, state)
        return logits[:, -1, :], state
