"""GPT: a decoder-only Transformer language model with a KV cache for generation.

The architecture is GPT-2's (Radford et al. 2019, "Language Models are Unsupervised
Multitask Learners"): learned token + position embeddings, a stack of pre-LayerNorm blocks
(LayerNorm -> causal self-attention -> residual, LayerNorm -> GELU MLP -> residual), a final
LayerNorm and a linear head whose weight is tied to the token embedding (Press & Wolf 2017,
"Using the Output Embedding to Improve Language Models").

Attention is the shared `MultiHeadAttention` (models/attention.py: fused SDPA kernels, or its
written-out `reference_attention` with `fused_attention=False`).

Generation (`CausalDecoder`, models/decoding.py): `step(idx, cache)` consumes new tokens
only, appending their keys/values to a `KVCache`, so each generated token costs one position
instead of the whole context (the cache is what makes sampling O(T) per token instead of
O(T^2)); `step(..., compiled=True)` runs the same forward over a static view of the cache
through torch.compile.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn as nn
import torch.nn.functional as F

from genforge.models.attention import KVCache, MultiHeadAttention
from genforge.models.decoding import CausalDecoder
from genforge.models.layers import Dropout


# ---------------------------------------------------------------------------------------
# blocks


class MLP(nn.Module):
    def __init__(self, cfg: "GPTConfig"):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(F.gelu(self.fc(x)))
        return self.dropout(y) if self.training else y


class Block(nn.Module):
    """Pre-LN block (Xiong et al. 2020, "On Layer Normalization in the Transformer
    Architecture"): normalising before each sublayer keeps gradients well-scaled without a
    long warmup."""

    def __init__(self, cfg: "GPTConfig"):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        # parameter names attn.qkv / attn.proj, as GPT's own attention had: old runs still load
        self.attn = MultiHeadAttention(cfg.n_embd, cfg.n_head, bias=cfg.bias, dropout=cfg.dropout,
                                       fused=cfg.fused_attention)
        self.resid_dropout = Dropout(cfg.dropout)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        a = self.attn(self.ln_1(x), causal=True, cache=cache, layer=layer)
        # no dropout call at all in eval: generation runs this once per token and layer
        x = x + (self.resid_dropout(a) if self.training else a)
        return x + self.mlp(self.ln_2(x))


# ---------------------------------------------------------------------------------------
# model


@dataclass
class GPTConfig:
    """Defaults: the gpt-shakespeare preset's size (0.8M parameters), which trains in minutes
    on 2 CPU cores; nanoGPT's Shakespeare size is n_layer=6 n_head=6 n_embd=384 block_size=256."""

    vocab_size: Annotated[int, "[0, inf)"] = 0  # filled from the tokenizer by the recipe
    block_size: Annotated[int, "[1, inf)"] = 128  # context length (number of learned positions)
    n_layer: Annotated[int, "[1, inf)"] = 4
    n_head: Annotated[int, "[1, inf)"] = 4
    n_embd: Annotated[int, "[1, inf)"] = 128
    dropout: Annotated[float, "[0, 1)"] = 0.0
    bias: bool = False  # biases in Linear/LayerNorm; without them is as good and a bit faster
    tie_weights: bool = True
    # F.scaled_dot_product_attention; False = the written-out `reference_attention` (slower;
    # also kept because config.json of older runs carries this field)
    fused_attention: bool = True


class GPT(CausalDecoder, nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("GPTConfig.vocab_size must be set (the recipe fills it from the tokenizer)")
        if cfg.n_embd % cfg.n_head != 0:
            raise ValueError(f"n_embd ({cfg.n_embd}) must be divisible by n_head ({cfg.n_head})")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.head.weight = self.tok_emb.weight
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layer) so the residual stream's
        # variance does not grow with depth
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    @property
    def context_size(self) -> int:
        return self.cfg.block_size

    def cache_spec(self) -> tuple[int, int, int]:
        c = self.cfg
        return c.n_layer, c.n_head, c.n_embd // c.n_head

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None,
                last_only: bool = False) -> torch.Tensor:
        """idx (B, T) token ids -> logits (B, T, vocab). With `cache`, idx are the tokens that
        follow the cached ones and their keys/values are appended to it."""
        b, t = idx.shape
        if cache is not None and cache.static:  # compiled decoding: position is a tensor
            pos = self.pos_emb(cache.positions(t, idx.device))  # (T, C)
        else:
            start = cache.pos if cache is not None else 0
            if start + t > self.cfg.block_size:
                raise ValueError(
                    f"sequence of {start + t} tokens is longer than the context ({self.cfg.block_size})"
                )
            pos = self.pos_emb.weight[start:start + t]  # (T, C)
        x = self.tok_emb(idx) + pos  # (B, T, C)
        if self.training:
            x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        if cache is not None:
            cache.advance(idx)
        if last_only:  # generation needs the next token's logits only (a 512-token prompt's
            x = x[:, -1:]  # full logits are ~100 MB for a 49k vocabulary)
        return self.head(self.ln_f(x))  # (B, T or 1, vocab)

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy; idx, targets (B, T)."""
        logits = self(idx)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
