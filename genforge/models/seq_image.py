"""Images as sequences: an RNN/LSTM/GRU reads an image one pixel row per time step.

The classic "MNIST as a sequence" task (row-by-row variant; Le et al. 2015 and the pixel-by-pixel
variant use the same idea): an H x W grey image is a length-H sequence of W-dimensional rows.
The last hidden state (both directions' when bidirectional) goes through a linear head.
All sequences have the same length, so no packing is needed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn as nn
import torch.nn.functional as F

from genforge.models.layers import Dropout

_CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


@dataclass
class SeqImageConfig:
    cell: str = "gru"  # rnn | lstm | gru
    in_channels: Annotated[int, "[0, inf)"] = 1  # channels are concatenated per row: input size = channels * width
    width: Annotated[int, "[0, inf)"] = 28  # filled from the data
    hidden: Annotated[int, "[1, inf)"] = 128
    n_layers: Annotated[int, "[1, inf)"] = 1
    bidirectional: bool = False
    dropout: Annotated[float, "[0, 1)"] = 0.0  # between stacked layers and before the head
    n_classes: Annotated[int, "[0, inf)"] = 10


class RowSequenceClassifier(nn.Module):
    def __init__(self, cfg: SeqImageConfig):
        super().__init__()
        if cfg.cell not in _CELLS:
            raise ValueError(f"unknown cell {cfg.cell!r}; choose one of: {', '.join(_CELLS)}")
        self.cfg = cfg
        self.rnn = _CELLS[cfg.cell](
            cfg.in_channels * cfg.width, cfg.hidden, num_layers=cfg.n_layers, batch_first=True,
            bidirectional=cfg.bidirectional, dropout=cfg.dropout if cfg.n_layers > 1 else 0.0)
        dirs = 2 if cfg.bidirectional else 1
        self.drop = Dropout(cfg.dropout)
        self.fc = nn.Linear(cfg.hidden * dirs, cfg.n_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) or (B, H, W) -> logits (B, n_classes)."""
        if images.dim() == 3:
            images = images.unsqueeze(1)
        B, C, H, W = images.shape
        rows = images.permute(0, 2, 1, 3).reshape(B, H, C * W)  # (B, H, C*W): one row per step
        _, h = self.rnn(rows)
        if isinstance(h, tuple):  # LSTM: (h_n, c_n)
            h = h[0]
        dirs = 2 if self.cfg.bidirectional else 1
        h = h[-dirs:].transpose(0, 1).reshape(B, -1)  # (B, dirs*hidden): top layer's last states
        return self.fc(self.drop(h))

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(images), labels)
