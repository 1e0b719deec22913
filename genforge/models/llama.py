"""Llama: the decoder-only LLM family behind Llama 2/3, Mistral, Qwen2 and SmolLM.

The architecture (Touvron et al. 2023, "LLaMA: Open and Efficient Foundation Language
Models") is GPT's with four changes that every open LLM since has kept:

- pre-normalisation with RMSNorm (Zhang & Sennrich 2019): scale by the root mean square,
  no mean subtraction and no bias;
- rotary positions (Su et al. 2021, "RoFormer") on queries and keys instead of learned
  position embeddings, so the context can be rescaled (`rope_scaling`) after training;
- a SwiGLU MLP (Shazeer 2020, "GLU Variants Improve Transformer"): down(silu(gate(x)) * up(x));
- grouped-query attention (Ainslie et al. 2023): `n_kv_head` key/value heads shared by the
  query heads, which shrinks the KV cache by n_head / n_kv_head.

Mistral is the same network; Qwen2 adds biases to the q/k/v projections (`attn_bias`).
Attention is the shared `genforge.models.attention.MultiHeadAttention` (fused `qkv` =
[q heads | k heads | v heads], half-split rotary layout as in Hugging Face checkpoints), so
pretrained weights load with a concatenation and nothing else (genforge/pretrained/).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from genforge.models.attention import KVCache, MultiHeadAttention, Rotary
from genforge.models.decoding import CausalDecoder

# ---------------------------------------------------------------------------------------
# blocks


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, computed in float32 whatever the input dtype (in
    bf16 the mean of squares loses the precision the normalisation depends on)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.rms_norm(x.float(), (x.size(-1),), eps=self.eps)
        return self.weight * y.to(x.dtype)


class SwiGLU(nn.Module):
    def __init__(self, cfg: "LlamaConfig"):
        super().__init__()
        self.gate = nn.Linear(cfg.d_model, cfg.intermediate, bias=cfg.mlp_bias)
        self.up = nn.Linear(cfg.d_model, cfg.intermediate, bias=cfg.mlp_bias)
        self.down = nn.Linear(cfg.intermediate, cfg.d_model, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, cfg: "LlamaConfig", rotary: Rotary):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.rms_eps)
        # Qwen2: biases on q/k/v only, none on the output projection
        self.attn = MultiHeadAttention(cfg.d_model, cfg.n_head, cfg.n_kv_head, cfg.head_size,
                                       bias=cfg.attn_bias, out_bias=cfg.attn_out_bias,
                                       rotary=rotary)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.rms_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), causal=True, cache=cache, layer=layer)
        return x + self.mlp(self.mlp_norm(x))


# ---------------------------------------------------------------------------------------
# model


@dataclass
class LlamaConfig:
    vocab_size: Annotated[int, "[0, inf)"] = 0  # filled from the tokenizer by the recipe (imported runs: the checkpoint's)
    block_size: Annotated[int, "[1, inf)"] = 256  # context length in tokens (the checkpoint's max_position_embeddings)
    n_layer: Annotated[int, "[1, inf)"] = 4
    n_head: Annotated[int, "[1, inf)"] = 4
    n_kv_head: Annotated[int, "[1, inf)"] = 2  # key/value heads (grouped-query attention); = n_head: plain multi-head
    d_model: Annotated[int, "[1, inf)"] = 128  # hidden width
    intermediate: Annotated[int, "[1, inf)"] = 352  # SwiGLU width (Llama: about 8/3 * d_model)
    head_dim: Annotated[int, "[0, inf)"] = 0  # per-head width; 0 = d_model // n_head
    rope_theta: Annotated[float, "(0, inf)"] = 10000.0  # rotary base frequency
    rope_scaling: Any = None  # None, or a dict: {"rope_type": "linear" | "llama3", "factor": ...}
    rms_eps: Annotated[float, "(0, inf)"] = 1e-5
    tie_weights: bool = True  # head shares the token embedding (SmolLM2, Qwen2-0.5B; not Llama 2)
    attn_bias: bool = False  # biases on the q/k/v projections (Qwen2; Llama's attention_bias)
    attn_out_bias: bool = False  # bias on the attention output projection (Llama's attention_bias)
    mlp_bias: bool = False

    @property
    def head_size(self) -> int:
        return self.head_dim or self.d_model // self.n_head


class Llama(CausalDecoder, nn.Module):
    """Generation (`new_state`, `step`, the compiled one-token step) comes from
    `CausalDecoder`; the KV cache holds n_kv_head heads per layer, not n_head."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("LlamaConfig.vocab_size must be set (the recipe fills it from the tokenizer)")
        if not cfg.head_dim and cfg.d_model % cfg.n_head:
            raise ValueError(f"d_model ({cfg.d_model}) must be divisible by n_head ({cfg.n_head}), "
                             "or set head_dim")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.rotary = Rotary(cfg.head_size, cfg.rope_theta, cfg.rope_scaling)
        self.blocks = nn.ModuleList(Block(cfg, self.rotary) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.rms_eps)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.head.weight = self.tok_emb.weight
        self.apply(self._init_weights)
        # GPT-2's depth scaling of the residual projections, for training from scratch
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    @property
    def context_size(self) -> int:
        return self.cfg.block_size

    def cache_spec(self) -> tuple[int, int, int]:
        return self.cfg.n_layer, self.cfg.n_kv_head, self.cfg.head_size

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None,
                last_only: bool = False) -> torch.Tensor:
        """idx (B, T) token ids -> logits (B, T, vocab). With `cache`, idx follow the cached
        tokens (their rotary positions continue from the cache's) and their keys/values are
        appended to it."""
        b, t = idx.shape
        if cache is not None and not cache.static and cache.pos + t > self.cfg.block_size:
            raise ValueError(f"sequence of {cache.pos + t} tokens is longer than the context "
                             f"({self.cfg.block_size})")
        if cache is None and t > self.cfg.block_size:
            raise ValueError(f"sequence of {t} tokens is longer than the context ({self.cfg.block_size})")
        x = self.tok_emb(idx)  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        if cache is not None:
            cache.advance(idx)
        if last_only:  # generation needs the next token's logits only (a 512-token prompt's
            x = x[:, -1:]  # full logits are ~100 MB for a 49k vocabulary)
        return self.head(self.norm(x))  # (B, T or 1, vocab)

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy; idx, targets (B, T)."""
        logits = self(idx)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
