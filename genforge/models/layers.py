"""Building blocks the model families share, written for speed on the CPU.

`Dropout` is `nn.Dropout` with a cheaper mask on the CPU: ATen's CPU dropout draws one
Bernoulli variate per element (about 11 ns each here, a tenth of a small CNN's training step);
this one takes 32 random bits per element from the same torch generator (64-bit draws split in
two) and compares them with a threshold, 3-4x faster for the same distribution (the keep
probability is exact to 2^-32). Other devices, and code under `torch.compile`, use ATen's.

`conv_stage` is conv (-> BN) -> activation (-> pool). With a max-pool and a non-decreasing
activation (ReLU, tanh, sigmoid) it pools first: act(max(x)) == max(act(x)) exactly, and the
gradients are the same, but the activation and its backward run on a quarter of the elements.
Modules without parameters are the only ones reordered, so checkpoint names do not change."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

# max-pooling commutes with these (non-decreasing) activations, values and gradients alike
_MONOTONE = (nn.ReLU, nn.Tanh, nn.Sigmoid)


class _MaskedScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        n = x.numel()
        bits = torch.empty((n + 1) // 2, dtype=torch.int64, device=x.device).random_(-2**63, None)
        keep = bits.view(torch.int32)[:n].view(x.shape) >= round(p * 2**32) - 2**31
        scale = 1.0 / (1.0 - p)
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x * keep * scale

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return grad * keep * ctx.scale, None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """F.dropout(x, p, training), with `Dropout`'s faster mask on the CPU."""
    if not training or p == 0.0:
        return x
    if p >= 1.0 or x.device.type != "cpu" or x.numel() == 0 or torch.compiler.is_compiling():
        return F.dropout(x, p, training)
    return _MaskedScale.apply(x, p)


class Dropout(nn.Dropout):
    """nn.Dropout (same arguments, state and repr) with the faster CPU mask above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            return super().forward(x)
        return dropout(x, self.p, self.training)


def conv_stage(cin: int, cout: int, act: nn.Module, batch_norm: bool = True,
               pool: nn.Module | None = None) -> list[nn.Module]:
    """[Conv3x3, (BN), act, (pool)] as modules for an nn.Sequential; a max-pool goes before a
    non-decreasing activation (same values and gradients, cheaper). Parameter names are
    those of the textbook order either way."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(cout))
    if pool is None:
        return layers + [act]
    if isinstance(pool, nn.MaxPool2d) and isinstance(act, _MONOTONE):
        return layers + [pool, act]
    return layers + [act, pool]
