"""Audio classifiers over log-mel spectrograms (B, 1, n_mels, frames).

`AudioCNN` treats the spectrogram as an image: conv-BN-ReLU-pool blocks, then the frequency
axis is kept and time is averaged (a word's identity is in its spectral shape; where it
starts in the clip matters less), then a dense head. `AudioGRU` reads the frames in order:
a bidirectional GRU over per-frame mel vectors, mean- and max-pooled over time. Both take the
same input, so training, evaluation and saliency (`genforge explain`) treat them alike.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn as nn
import torch.nn.functional as F

from genforge.models.layers import Dropout, conv_stage


@dataclass
class AudioCNNConfig:
    channels: Annotated[tuple[int, ...], "[1, inf)"] = (16, 32, 64)  # one 3x3 conv block per entry, 2x2 max-pool after each
    dense: Annotated[int, "[1, inf)"] = 64  # hidden width of the head
    dropout: Annotated[float, "[0, 1)"] = 0.2  # before and after the dense layer (training only)
    n_mels: Annotated[int, "[0, inf)"] = 0  # filled by the recipe
    n_classes: Annotated[int, "[0, inf)"] = 0  # filled from the data


class AudioCNN(nn.Module):
    def __init__(self, cfg: AudioCNNConfig):
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        c, m = 1, cfg.n_mels
        for out in cfg.channels:
            halve = m >= 2  # too few mel bins left to halve: pool time only
            layers += conv_stage(c, out, nn.ReLU(), pool=nn.MaxPool2d(2 if halve else (1, 2)))
            m = m // 2 if halve else m
            c = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(Dropout(cfg.dropout), nn.Linear(c * m, cfg.dense), nn.ReLU(),
                                  Dropout(cfg.dropout), nn.Linear(cfg.dense, cfg.n_classes))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, n_mels, T) -> (B, dense): the penultimate features (FID's feature space)."""
        h = self.features(x).mean(dim=3)  # (B, c, m): average over time
        return self.head[:3](h.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head[3:](self.embed(x))  # (B, n_classes)


@dataclass
class AudioGRUConfig:
    hidden: Annotated[int, "[1, inf)"] = 96  # GRU width per direction
    layers: Annotated[int, "[1, inf)"] = 2
    bidirectional: bool = True
    dropout: Annotated[float, "[0, 1)"] = 0.1  # between GRU layers and before the head
    n_mels: Annotated[int, "[0, inf)"] = 0  # filled by the recipe
    n_classes: Annotated[int, "[0, inf)"] = 0  # filled from the data


class AudioGRU(nn.Module):
    def __init__(self, cfg: AudioGRUConfig):
        super().__init__()
        self.cfg = cfg
        self.norm = nn.LayerNorm(cfg.n_mels)
        self.gru = nn.GRU(cfg.n_mels, cfg.hidden, cfg.layers, batch_first=True,
                          bidirectional=cfg.bidirectional, dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        width = cfg.hidden * (2 if cfg.bidirectional else 1)
        self.drop = Dropout(cfg.dropout)
        self.out = nn.Linear(2 * width, cfg.n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, n_mels, T) -> (B, 2 * width): mean and max of the GRU states over time."""
        frames = self.norm(x[:, 0].transpose(1, 2))  # (B, T, n_mels)
        h, _ = self.gru(frames)  # (B, T, width)
        return torch.cat([h.mean(dim=1), h.amax(dim=1)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(self.embed(x)))

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(x), y)
