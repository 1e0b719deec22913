"""Image captioning: a CNN encoder and a small Transformer decoder that reads the image
through cross-attention ("Show, Attend and Tell", Xu et al. 2015, with the decoder of
Vaswani et al. 2017).

The CNN's last feature map (B, C, h, w) becomes h*w memory tokens (plus a learned position
each); the decoder is pre-LN: causal self-attention over the words so far, cross-attention to
the memory, a GELU MLP. Greedy decoding keeps every layer's keys/values in a KVCache
(self-attention appends one position per step; the memory's keys/values are computed once
and kept in `cache.cross`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from genforge.models.attention import KVCache, MultiHeadAttention
from genforge.models.layers import Dropout, conv_stage


@dataclass
class CaptionerConfig:
    channels: tuple[int, ...] = (32, 64)  # CNN stages, 2x2 max-pool after each: 28 -> 7
    in_channels: int = 1  # filled from the data
    image_size: int = 28  # filled from the data
    vocab_size: int = 0  # filled from the caption vocabulary
    max_len: int = 24  # tokens per caption, <bos> and <eos> included
    d_model: int = 128
    n_layer: int = 2
    n_head: int = 4
    dropout: float = 0.1
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2


class DecoderBlock(nn.Module):
    def __init__(self, d: int, n_head: int, dropout: float):
        super().__init__()
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_attn = MultiHeadAttention(d, n_head, bias=True, dropout=dropout)
        self.cross_attn = MultiHeadAttention(d, n_head, bias=True, dropout=dropout, d_context=d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d), Dropout(dropout))

    def forward(self, x, memory, layer: int, cache: KVCache | None = None):
        x = x + self.self_attn(self.ln1(x), causal=True, cache=cache, layer=layer)
        x = x + self.cross_attn(self.ln2(x), memory, cache=cache, layer=layer)
        return x + self.mlp(self.ln3(x))


class Captioner(nn.Module):
    def __init__(self, cfg: CaptionerConfig):
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        c, side = cfg.in_channels, cfg.image_size
        for out in cfg.channels:
            layers += conv_stage(c, out, nn.ReLU(), pool=nn.MaxPool2d(2))
            c, side = out, side // 2
        self.encoder = nn.Sequential(*layers)
        d = cfg.d_model
        self.mem_proj = nn.Linear(c, d)
        self.mem_pos = nn.Parameter(torch.randn(side * side, d) * 0.02)
        self.tok = nn.Embedding(cfg.vocab_size, d)
        self.pos = nn.Parameter(torch.randn(cfg.max_len, d) * 0.02)
        self.blocks = nn.ModuleList(DecoderBlock(d, cfg.n_head, cfg.dropout) for _ in range(cfg.n_layer))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.vocab_size, bias=False)
        self.head.weight = self.tok.weight  # tied input/output embeddings (Press & Wolf 2017)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, C, H, W) -> memory (B, h*w, d)."""
        f = self.encoder(images)  # (B, C, h, w)
        return self.mem_proj(f.flatten(2).transpose(1, 2)) + self.mem_pos  # (B, hw, d)

    def decode(self, tokens, memory, cache: KVCache | None = None, start: int = 0) -> torch.Tensor:
        T = tokens.shape[1]
        x = self.tok(tokens) + self.pos[start:start + T]  # (B, T, d)
        for i, b in enumerate(self.blocks):
            x = b(x, memory, i, cache)
        if cache is not None:
            cache.advance(tokens)
        return self.head(self.ln(x))  # (B, T, vocab)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> dict:
        """tokens (B, T): <bos> w1 .. wn <eos> <pad>...; teacher-forced next-token loss."""
        tokens = tokens[:, : self.cfg.max_len]
        logits = self.decode(tokens[:, :-1], self.encode(images))
        target = tokens[:, 1:]
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                               ignore_index=self.cfg.pad_id)
        return {"loss": loss}

    @torch.no_grad()
    def generate(self, images: torch.Tensor, max_len: int | None = None,
                 use_cache: bool = True) -> torch.Tensor:
        """Greedy captions (B, <= max_len) without <bos>, <pad> after <eos>."""
        c = self.cfg
        max_len = min(max_len or c.max_len, c.max_len)
        memory = self.encode(images)
        B, dev = len(images), images.device
        d_head = c.d_model // c.n_head
        cache = KVCache(c.n_layer, B, c.n_head, max_len, d_head, dev, memory.dtype) if use_cache else None
        seq = torch.full((B, 1), c.bos_id, dtype=torch.long, device=dev)
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        for t in range(max_len - 1):
            if cache is not None:
                logits = self.decode(seq[:, -1:], memory, cache, start=t)[:, -1]
            else:
                logits = self.decode(seq, memory)[:, -1]
            nxt = logits.argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, c.pad_id), nxt)
            seq = torch.cat([seq, nxt[:, None]], 1)
            done |= nxt == c.eos_id
            if bool(done.all()):
                break
        return seq[:, 1:]
