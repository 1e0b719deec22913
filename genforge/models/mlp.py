"""Multi-layer perceptron: the one MLP builder (`mlp`), used by the image classifier below
(the classic Dense 64-64-10 network and its variants) and by the RL agents' networks."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from genforge.models.layers import Dropout

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


def mlp(sizes: list[int], activation: str = "relu", dropout: float = 0.0) -> nn.Sequential:
    """[Linear -> act -> (dropout)] for each hidden width, then a last Linear with no
    activation. sizes = [in, *hidden, out]. The Sequential's indices are the parameter
    names saved in checkpoints (net.0.weight, q.2.bias, ...): keep this layout."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of: {', '.join(ACTIVATIONS)}")
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(Dropout(dropout))
    return nn.Sequential(*layers)


@dataclass
class MLPConfig:
    hidden: Annotated[tuple[int, ...], "[1, inf)"] = (64, 64)  # widths of the hidden layers; depth = len(hidden)
    activation: Literal["relu", "gelu", "tanh", "sigmoid"] = "relu"
    dropout: Annotated[float, "[0, 1)"] = 0.0  # dropout probability after each hidden layer (training only)
    in_features: Annotated[int, "[0, inf)"] = 0  # filled from the data by the recipe (C*H*W)
    n_classes: Annotated[int, "[0, inf)"] = 0  # filled from the data by the recipe


class MLP(nn.Module):
    """Flatten -> [Linear -> act -> dropout] * depth -> Linear. Returns logits; softmax is
    applied by the loss (cross-entropy) and by `predict_proba`."""

    def __init__(self, cfg: MLPConfig):
        super().__init__()
        self.cfg = cfg
        self.net = mlp([cfg.in_features, *cfg.hidden, cfg.n_classes], cfg.activation, cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))  # (B, C*H*W) -> (B, n_classes)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(x), y)
