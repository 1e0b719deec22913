"""Convolutional image classifiers.

`CNN` is the textbook conv-pool-conv-pool-dense network (the Keras/TensorFlow CIFAR-10
tutorial shape). `ResNet` is a small residual network (He et al. 2016, "Deep Residual
Learning") with batch norm, strong enough for >92% on Fashion-MNIST in minutes on a CPU."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn as nn
import torch.nn.functional as F

from genforge.models.layers import Dropout, conv_stage
from genforge.models.mlp import ACTIVATIONS


@dataclass
class CNNConfig:
    channels: Annotated[tuple[int, ...], "[1, inf)"] = (32, 64, 64)  # one 3x3 conv per entry; pool after all but the last
    dense: Annotated[int, "[1, inf)"] = 64  # width of the hidden dense layer after the convolutions
    activation: str = "relu"  # relu | gelu | tanh | sigmoid
    batch_norm: bool = False  # BatchNorm after each conv (Ioffe & Szegedy 2015)
    dropout: Annotated[float, "[0, 1)"] = 0.0  # dropout probability before and after the dense layer (training only)
    in_channels: Annotated[int, "[0, inf)"] = 0  # filled from the data
    image_size: Annotated[int, "[0, inf)"] = 0  # filled from the data (square side)
    n_classes: Annotated[int, "[0, inf)"] = 0  # filled from the data


class CNN(nn.Module):
    def __init__(self, cfg: CNNConfig):
        super().__init__()
        self.cfg = cfg
        act = ACTIVATIONS[cfg.activation]
        layers: list[nn.Module] = []
        c, side = cfg.in_channels, cfg.image_size
        for i, out in enumerate(cfg.channels):
            # 'same' padding keeps small inputs (8x8 digits) from vanishing
            pool = i < len(cfg.channels) - 1 and side >= 4
            layers += conv_stage(c, out, act(), cfg.batch_norm, nn.MaxPool2d(2) if pool else None)
            side = side // 2 if pool else side
            c = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(), Dropout(cfg.dropout), nn.Linear(c * side * side, cfg.dense), act(),
            Dropout(cfg.dropout), nn.Linear(cfg.dense, cfg.n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, C, H, W) -> (B, n_classes)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(x), y)


@dataclass
class ResNetConfig:
    widths: Annotated[tuple[int, ...], "[1, inf)"] = (32, 64, 128)  # one stage per entry; stride 2 between stages
    blocks: Annotated[int, "[1, inf)"] = 1  # residual blocks per stage
    dropout: Annotated[float, "[0, 1)"] = 0.0  # dropout probability on the pooled features (training only)
    label_smoothing: Annotated[float, "[0, 1)"] = 0.0  # target mass spread over all classes (Szegedy et al. 2016)
    in_channels: Annotated[int, "[0, inf)"] = 0  # filled from the data
    image_size: Annotated[int, "[0, inf)"] = 0
    n_classes: Annotated[int, "[0, inf)"] = 0


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.skip(x))


class ResNet(nn.Module):
    def __init__(self, cfg: ResNetConfig):
        super().__init__()
        self.cfg = cfg
        w0 = cfg.widths[0]
        self.stem = nn.Sequential(nn.Conv2d(cfg.in_channels, w0, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(w0), nn.ReLU())
        stages, c = [], w0
        for i, w in enumerate(cfg.widths):
            for b in range(cfg.blocks):
                stride = 2 if (i > 0 and b == 0) else 1
                stages.append(ResidualBlock(c, w, stride))
                c = w
        self.stages = nn.Sequential(*stages)
        self.drop = Dropout(cfg.dropout)
        self.fc = nn.Linear(c, cfg.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stages(self.stem(x))  # (B, C, H', W')
        h = h.mean(dim=(2, 3))  # global average pool -> (B, C)
        return self.fc(self.drop(h))

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(x), y, label_smoothing=self.cfg.label_smoothing)
