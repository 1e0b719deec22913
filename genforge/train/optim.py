"""Optimisers (parameter groups: no weight decay on biases/norms), LR schedules, penalties."""
from __future__ import annotations

import math
import re
from typing import Callable

import torch
import torch.nn as nn

from genforge.config import ConfigError


_LAYER = re.compile(r"(?:^|\.)(?:blocks|layers|layer|h)\.(\d+)\.")  # blocks.3.attn... -> 3


def layer_depths(model: nn.Module) -> tuple[dict[str, int], int]:
    """Each parameter's depth for layer-wise lr decay, and the top depth: a parameter of
    numbered layer N (`blocks.N.`, `layers.N.`, `h.N.`) is at N + 1, those registered before
    the first numbered layer (embeddings) at 0, those after it (final norm, head) at the top,
    n_layers + 1. A model with no numbered layers is an error (nothing to decay by depth)."""
    names = [n for n, _ in model.named_parameters()]
    layers = {n: int(m.group(1)) for n in names if (m := _LAYER.search(n))}
    if not layers:
        raise ConfigError(f"layer_lr_decay needs numbered layers (blocks.N, layers.N) and "
                          f"{type(model).__name__} has none; leave layer_lr_decay=1")
    top = max(layers.values()) + 2
    first = names.index(next(iter(layers)))
    return {n: layers[n] + 1 if n in layers else (0 if i < first else top)
            for i, n in enumerate(names)}, top


def _split_decay(params: list, weight_decay: float, **extra) -> list[dict]:
    """[matrices and kernels with weight decay, the 1-d rest (if any) without], each group
    also holding `extra` (its lr)."""
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay, **extra}]
    if no_decay := [p for p in params if p.dim() < 2]:
        groups.append({"params": no_decay, "weight_decay": 0.0, **extra})
    return groups


def param_groups(model: nn.Module, weight_decay: float, lr: float | None = None,
                 layer_lr_decay: float = 1.0) -> list[dict]:
    """Decay matrices and conv kernels; never biases, norm scales or embeddings' 1-d params
    (the usual AdamW practice, e.g. nanoGPT `configure_optimizers`). With `layer_lr_decay`
    < 1, one such pair of groups per depth (`layer_depths`), each with its own lr, the top
    (full lr) first."""
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if layer_lr_decay == 1.0:
        return _split_decay([p for _, p in trained], weight_decay)
    depths, top = layer_depths(model)
    return [g for depth in range(top, -1, -1)
            for g in _split_decay([p for n, p in trained if depths[n] == depth], weight_decay,
                                  lr=lr * layer_lr_decay ** (top - depth))
            if g["params"]]


def make_optimizer(model: nn.Module, cfg, fused: bool = True) -> torch.optim.Optimizer:
    """fused=False: the multi-tensor (foreach) kernels, for parameters the fused kernels do
    not take (FSDP's DTensor shards)."""
    groups = param_groups(model, cfg.weight_decay, cfg.lr, cfg.layer_lr_decay)
    fused = fused or None  # None: torch's own choice
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "adam":
        # Adam's weight_decay is coupled L2 (added to the gradient), unlike AdamW's
        return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=fused)
    # fused: one kernel for all parameters (measured ~10% faster per GPT step on this CPU)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=fused)


def lr_factor(step: int, cfg, total_steps: int, time_frac: float | None = None) -> float:
    """Multiplier of cfg.lr at optimizer step `step` (0-based). `time_frac`: the part of a
    wall-clock budget already spent (cfg.max_minutes); the schedule follows whichever of
    steps and time is further along. Warmup is `warmup_steps` updates, or else the first
    `warmup_ratio` of the run (in the same steps-or-time progress as the cosine)."""
    ratio = 0.0 if cfg.warmup_steps else getattr(cfg, "warmup_ratio", 0.0)
    total = max(1, total_steps)
    if ratio:
        done = step / total  # the part of the run behind this update
        ahead = (step + 1) / total  # ... and after it: the first update gets a nonzero LR
        if time_frac is not None:
            done, ahead = max(done, time_frac), max(ahead, time_frac)
        if done < ratio:
            return min(1.0, ahead / ratio)
    elif cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        return cfg.gamma ** (step // max(1, cfg.step_size))
    # warmup + cosine decay to min_lr (Loshchilov & Hutter 2017, without restarts)
    if ratio:
        progress = (done - ratio) / (1 - ratio)
    else:
        span = max(1, total_steps - cfg.warmup_steps)
        progress = (step - cfg.warmup_steps) / span
        if time_frac is not None:
            progress = max(progress, time_frac)
    progress = min(1.0, progress)
    floor = cfg.min_lr / cfg.lr if cfg.lr > 0 else 0.0
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_note(cfg, total_steps: int) -> str | None:
    """A warning when the warmup is longer than the run: the LR would never reach `lr`."""
    if cfg.warmup_steps and cfg.warmup_steps > total_steps:
        budget = f" (or fewer: max_minutes={cfg.max_minutes:g})" if cfg.max_minutes else ""
        return (f"warning: warmup_steps={cfg.warmup_steps} is longer than the run's "
                f"{total_steps} steps{budget}: the learning rate never reaches lr={cfg.lr:g}; "
                "lower warmup_steps, or set warmup_steps=0 and warmup_ratio (e.g. 0.05)")
    return None


def make_scheduler(opt: torch.optim.Optimizer, cfg, total_steps: int,
                   time_frac: Callable[[], float] | None = None):
    """`time_frac()`: the spent part of the run's time budget, read at every LR update."""
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, cfg, total_steps, time_frac() if time_frac else None))


def penalty(model: nn.Module, l1: float, l2: float) -> torch.Tensor | None:
    """Explicit regularisation term l1 * sum|w| + l2 * sum w^2 over weight matrices/kernels
    (J + lambda * sum w^2, as in the textbooks; biases are not penalised)."""
    if not l1 and not l2:
        return None
    total = None
    for p in model.parameters():
        if p.requires_grad and p.dim() >= 2:
            term = 0
            if l1:
                term = term + l1 * p.abs().sum()
            if l2:
                term = term + l2 * p.pow(2).sum()
            total = term if total is None else total + term
    return total
