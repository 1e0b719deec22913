"""Multi-layer perceptron classifier: the classic Dense 64-64-10 network and its variants."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


@dataclass
class MLPConfig:
    hidden: tuple[int, ...] = (64, 64)  # widths of the hidden layers; depth = len(hidden)
    activation: Literal["relu", "gelu", "tanh", "sigmoid"] = "relu"
    dropout: float = 0.0
    in_features: int = 0  # filled from the data by the recipe (C*H*W)
    n_classes: int = 0  # filled from the data by the recipe


class MLP(nn.Module):
    """Flatten -> [Linear -> act -> dropout] * depth -> Linear. Returns logits; softmax is
    applied by the loss (cross-entropy) and by `predict_proba`."""

    def __init__(self, cfg: MLPConfig):
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        width = cfg.in_features
        for h in cfg.hidden:
            layers += [nn.Linear(width, h), ACTIVATIONS[cfg.activation]()]
            if cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
            width = h
        layers.append(nn.Linear(width, cfg.n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))  # (B, C*H*W) -> (B, n_classes)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(x), y)
