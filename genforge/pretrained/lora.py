"""LoRA: low-rank adapters on a frozen model (Hu et al. 2021, "LoRA: Low-Rank Adaptation of
Large Language Models").

A target linear layer y = W x + b becomes y = W x + b + (alpha / r) * B A dropout(x), with
A (r, in) random and B (out, r) zero, so training starts from the base model's outputs
exactly and only A and B (r * (in + out) numbers per layer) learn. `merge` folds B A into W.

Targets (`lora_targets`) are names of projections: `q`, `k`, `v` (the query, key and value
parts of attention's fused `qkv` layer), `o` (attention's output `proj`), and any other name
matches linear layers whose own name is that (`gate`, `up`, `down` of Llama's SwiGLU).

Fused qkv: genforge keeps one `qkv` Linear where Hugging Face has q_proj/k_proj/v_proj. A
single adapter on the fused weight would share one A between q, k and v (rank r in total),
which is not the LoRA that PEFT and the paper train. So each targeted part gets its own
(A, B) pair of rank r, and its update lands only on that part's rows of the fused output:
the same model as LoRA on separate q/k/v projections, with the fused matmul kept.

Adapted layers keep their parameter names (`blocks.0.attn.qkv.weight`), so the base
model's checkpoint loads into them unchanged; adapters add `...qkv.lora_a.0`,
`...qkv.lora_b.0` and so on. Pure torch; no model code changes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from genforge.config import ConfigError
from genforge.models.layers import Dropout

DEFAULT_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
ADAPTER_MARK = ".lora_"  # every adapter parameter's name holds this


class LoRAError(ConfigError):
    """A LoRA setting or target does not fit the model."""


@dataclass(frozen=True)
class LoRASettings:
    r: int
    alpha: float
    dropout: float
    targets: tuple[str, ...]

    @property
    def scale(self) -> float:
        return self.alpha / self.r


class LoRALinear(nn.Linear):
    """nn.Linear plus adapters on row blocks of its output. `parts`: (start, stop) output
    rows of each adapted block (one block = the whole output for an ordinary projection;
    the q, k and/or v rows for a fused qkv layer)."""

    def __init__(self, base: nn.Linear, parts: list[tuple[int, int]], s: LoRASettings):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias  # the same Parameters: names unchanged
        self.parts, self.scale = parts, s.scale
        dev, dt = base.weight.device, base.weight.dtype
        self.lora_a = nn.ParameterList()
        self.lora_b = nn.ParameterList()
        for start, stop in parts:
            a = torch.empty(s.r, self.in_features, device=dev, dtype=dt)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # nn.Linear's init, as the paper's code
            self.lora_a.append(nn.Parameter(a))
            self.lora_b.append(nn.Parameter(torch.zeros(stop - start, s.r, device=dev, dtype=dt)))
        self.dropout = Dropout(s.dropout) if s.dropout > 0 else nn.Identity()

    def delta_weight(self) -> torch.Tensor:
        """scale * B A in the layout of `weight` (zero rows outside the adapted parts)."""
        delta = torch.zeros_like(self.weight)
        for (start, stop), a, b in zip(self.parts, self.lora_a, self.lora_b):
            delta[start:stop] = self.scale * (b @ a)
        return delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        h = self.dropout(x)
        pieces, pos = [], 0
        for (start, stop), a, b in zip(self.parts, self.lora_a, self.lora_b):
            if start > pos:  # rows without an adapter
                pieces.append(y.new_zeros(*y.shape[:-1], start - pos))
            pieces.append(F.linear(F.linear(h, a), b) * self.scale)  # (..., stop - start)
            pos = stop
        if pos < self.out_features:
            pieces.append(y.new_zeros(*y.shape[:-1], self.out_features - pos))
        return y + torch.cat(pieces, dim=-1)


def _qkv_rows(attn: nn.Module) -> dict[str, tuple[int, int]]:
    """Output rows of q, k and v in a fused `qkv` layer: [q heads | k heads | v heads]."""
    q = attn.n_head * attn.head_dim
    kv = attn.n_kv_head * attn.head_dim
    return {"q": (0, q), "k": (q, q + kv), "v": (q + kv, q + 2 * kv)}


def _plan(model: nn.Module, targets: tuple[str, ...]) -> dict[str, list[tuple[int, int]]]:
    """{linear layer name: adapted row blocks} for `targets`."""
    plan: dict[str, list[tuple[int, int]]] = {}
    used: set[str] = set()
    qkv_parts = [t for t in targets if t in ("q", "k", "v")]
    for name, mod in model.named_modules():
        qkv = getattr(mod, "qkv", None)
        if isinstance(qkv, nn.Linear) and qkv_parts and hasattr(mod, "n_kv_head"):
            rows = _qkv_rows(mod)
            plan[f"{name}.qkv" if name else "qkv"] = sorted(rows[t] for t in qkv_parts)
            used.update(qkv_parts)
        proj = getattr(mod, "proj", None)
        if "o" in targets and isinstance(proj, nn.Linear) and hasattr(mod, "n_kv_head"):
            plan[f"{name}.proj" if name else "proj"] = [(0, proj.out_features)]
            used.add("o")
    others = [t for t in targets if t not in ("q", "k", "v", "o")]
    for name, mod in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in others and isinstance(mod, nn.Linear):
            plan[name] = [(0, mod.out_features)]
            used.add(leaf)
    missing = [t for t in targets if t not in used]
    if missing:
        raise LoRAError(f"lora_targets {', '.join(missing)} match no linear layer of this model; "
                        f"q, k, v, o name the attention projections, other names match linear layers "
                        f"by their own name (Llama: gate, up, down); default: {','.join(DEFAULT_TARGETS)}")
    return plan


def settings(cfg) -> LoRASettings:
    if cfg.lora_r < 0:
        raise LoRAError(f"lora_r must be >= 0 (0 = full fine-tuning), got {cfg.lora_r}")
    if not 0 <= cfg.lora_dropout < 1:
        raise LoRAError(f"lora_dropout must be in [0, 1), got {cfg.lora_dropout}")
    targets = tuple(t.strip() for t in cfg.lora_targets.split(",") if t.strip())
    if not targets:
        raise LoRAError("lora_targets is empty; name projections, e.g. q,k,v,o,gate,up,down")
    return LoRASettings(cfg.lora_r, cfg.lora_alpha or float(cfg.lora_r), cfg.lora_dropout, targets)


def apply(model: nn.Module, s: LoRASettings, keep_trainable: set[str] = frozenset()) -> list[str]:
    """Adapt `model` in place: freeze every parameter except the new adapters and the ones
    named in `keep_trainable` (parameters the base run did not provide). Returns the adapted
    layer names."""
    plan = _plan(model, s.targets)
    for name, parts in plan.items():
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, leaf, LoRALinear(getattr(parent, leaf), parts, s))
    for name, p in model.named_parameters():
        p.requires_grad_(ADAPTER_MARK in name or name in keep_trainable)
    return list(plan)


def is_adapted(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


def adapter_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters() if ADAPTER_MARK in n]


@torch.no_grad()
def merge(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight (W + scale * B A) and put plain nn.Linear layers
    back: the result has the base model's parameter names and computes the same outputs."""
    for name, mod in list(model.named_modules()):
        if isinstance(mod, LoRALinear):
            plain = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None,
                              device=mod.weight.device, dtype=mod.weight.dtype)
            plain.weight.copy_(mod.weight + mod.delta_weight())
            if mod.bias is not None:
                plain.bias.copy_(mod.bias)
            parent_name, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, leaf, plain)
    for p in model.parameters():
        p.requires_grad_(True)
    return model
