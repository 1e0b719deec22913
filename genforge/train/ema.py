"""Exponential moving average of a model's weights (Polyak averaging), the weights that
diffusion models and GAN generators are usually sampled from (DDPM uses decay 0.9999).

    ema_t = d * ema_{t-1} + (1 - d) * w_t,   d_t = min(decay, (1 + t) / (10 + t))

The warm-up of d (as in TensorFlow's ExponentialMovingAverage with num_updates) keeps the
first averages from being dominated by the random initial weights. Buffers (BatchNorm running
statistics) are copied, not averaged. The average lives in its own copy of the model, which
is what the trainer evaluates, samples from and saves as `ema.safetensors`.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from genforge.config import ConfigError
from genforge.train.checkpoint import unwrap


def check_decay(decay: float) -> None:
    if not 0.0 < decay < 1.0:
        raise ConfigError(f"ema={decay} is not a decay in (0, 1): use e.g. ema=0.999 (or 0 for "
                          "no weight average)")


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        check_decay(decay)
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(unwrap(model)).eval().requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.current_decay()
        src = unwrap(model)
        # parameters() skips tied duplicates the same way in both copies
        avg = [p for p in self.model.parameters() if p.is_floating_point()]
        cur = [p.detach() for p in src.parameters() if p.is_floating_point()]
        torch._foreach_lerp_(avg, cur, 1.0 - d)
        for b_avg, b in zip(self.model.buffers(), src.buffers()):
            b_avg.copy_(b)
