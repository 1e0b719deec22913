"""GPT: a decoder-only Transformer language model with a KV cache for generation.

The architecture is GPT-2's (Radford et al. 2019, "Language Models are Unsupervised
Multitask Learners"): learned token + position embeddings, a stack of pre-LayerNorm blocks
(LayerNorm -> causal self-attention -> residual, LayerNorm -> GELU MLP -> residual), a final
LayerNorm and a linear head whose weight is tied to the token embedding (Press & Wolf 2017,
"Using the Output Embedding to Improve Language Models").

Attention goes through `F.scaled_dot_product_attention` (fused kernels on CPU and CUDA);
`causal_attention` below is the same computation written out, kept as the readable
reference and as the oracle the tests compare the fused path against.

Generation: `step(idx, cache)` consumes new tokens only, appending their keys/values to a
`KVCache`, so each generated token costs one position instead of the whole context
(the cache is what makes sampling O(T) per token instead of O(T^2)).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     mask: torch.Tensor | None = None, dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v, written out (Vaswani et al. 2017, eq. 1).

    q: (B, nh, Tq, hs); k, v: (B, nh, Tk, hs). `mask` is a boolean (Tq, Tk) tensor, True where
    a query may attend; None means the usual causal mask with queries aligned to the *last*
    Tq keys (query i sits at absolute position Tk - Tq + i).
    """
    tq, tk = q.size(-2), k.size(-2)
    if mask is None:
        mask = causal_mask(tq, tk, q.device)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, nh, Tq, Tk)
    att = att.masked_fill(~mask, float("-inf"))
    att = F.softmax(att, dim=-1)
    if dropout_p > 0:
        att = F.dropout(att, p=dropout_p)
    return att @ v  # (B, nh, Tq, hs)


def causal_mask(tq: int, tk: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(tq, tk) boolean mask for queries at absolute positions tk-tq .. tk-1 over keys 0..tk-1.

    Not `is_causal=True`: with tq != tk, SDPA aligns its causal mask to the top-left, which is
    wrong for queries that follow cached keys."""
    q_pos = torch.arange(tk - tq, tk, device=device).unsqueeze(1)  # (tq, 1)
    k_pos = torch.arange(tk, device=device).unsqueeze(0)  # (1, tk)
    return k_pos <= q_pos


# ---------------------------------------------------------------------------------------
# KV cache


class KVCache:
    """Keys and values of every layer for the tokens seen so far, preallocated to the context
    length so that appending is a slice copy, not a `torch.cat` per token."""

    def __init__(self, n_layer: int, batch: int, n_head: int, max_len: int, head_size: int,
                 device: torch.device | str, dtype: torch.dtype):
        shape = (batch, n_head, max_len, head_size)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.max_len = max_len
        self.pos = 0  # number of positions filled
        # token ids seen so far: lets the model re-read the tail when the context is full
        self.tokens = torch.zeros(batch, 0, dtype=torch.long, device=device)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nh, T, hs) at positions pos..pos+T and return all keys/values so far."""
        t = k.size(2)
        self.k[layer][:, :, self.pos:self.pos + t] = k
        self.v[layer][:, :, self.pos:self.pos + t] = v
        end = self.pos + t
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, idx: torch.Tensor) -> None:
        """Record tokens idx (B, T) whose keys/values every layer has just stored."""
        self.pos += idx.size(1)
        self.tokens = torch.cat([self.tokens, idx], dim=1)


# ---------------------------------------------------------------------------------------
# blocks


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: "GPTConfig"):
        super().__init__()
        if cfg.n_embd % cfg.n_head != 0:
            raise ValueError(f"n_embd ({cfg.n_embd}) must be divisible by n_head ({cfg.n_head})")
        self.n_head = cfg.n_head
        self.fused = cfg.fused_attention
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.attn_dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        b, t, c = x.shape
        # one view + permute instead of a split and three view/transpose pairs: generation
        # runs this once per token, where every op's dispatch cost counts
        q, k, v = self.qkv(x).view(b, t, 3, self.n_head, c // self.n_head).permute(2, 0, 3, 1, 4).unbind(0)
        if cache is not None:
            k, v = cache.append(layer, k, v)  # (B, nh, pos+T, hs)
        p = self.attn_dropout if self.training else 0.0
        tk = k.size(2)
        if self.fused:
            if tk == t:  # no cached prefix: the plain causal case, SDPA's fastest path
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
            elif t == 1:  # one new token sees every cached key
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
            else:
                mask = causal_mask(t, tk, x.device)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        else:
            y = causal_attention(q, k, v, dropout_p=p)
        y = y.transpose(1, 2).reshape(b, t, c)  # (B, T, C)
        y = self.proj(y)
        return self.resid_dropout(y) if self.training else y


class MLP(nn.Module):
    def __init__(self, cfg: "GPTConfig"):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

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
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


# ---------------------------------------------------------------------------------------
# model


@dataclass
class GPTConfig:
    vocab_size: int = 0  # filled from the tokenizer by the recipe
    block_size: int = 256  # context length (number of learned positions)
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.2
    bias: bool = False  # biases in Linear/LayerNorm; without them is as good and a bit faster
    tie_weights: bool = True
    fused_attention: bool = True  # F.scaled_dot_product_attention; False = `causal_attention`


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("GPTConfig.vocab_size must be set (the recipe fills it from the tokenizer)")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
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

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """idx (B, T) token ids -> logits (B, T, vocab). With `cache`, idx are the tokens that
        follow the cached ones and their keys/values are appended to it."""
        b, t = idx.shape
        start = cache.pos if cache is not None else 0
        if start + t > self.cfg.block_size:
            raise ValueError(
                f"sequence of {start + t} tokens is longer than the context ({self.cfg.block_size})"
            )
        x = self.tok_emb(idx) + self.pos_emb.weight[start:start + t]  # (B, T, C)
        if self.training:
            x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        if cache is not None:
            cache.advance(idx)
        return self.head(self.ln_f(x))  # (B, T, vocab)

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy; idx, targets (B, T)."""
        logits = self(idx)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))

    # -- generation ---------------------------------------------------------------------

    def new_state(self, batch: int = 1) -> KVCache:
        p = self.tok_emb.weight
        c = self.cfg
        return KVCache(c.n_layer, batch, c.n_head, c.block_size, c.n_embd // c.n_head,
                       p.device, p.dtype)

    def _decode_one(self, tok: torch.Tensor, pos: torch.Tensor, ks: list[torch.Tensor],
                    vs: list[torch.Tensor]) -> torch.Tensor:
        """One new token per row, tok (B, 1), at position `pos` (a 0-d tensor), over the
        whole preallocated cache with the unfilled tail masked out: every shape is fixed, so
        torch.compile builds it once and fuses the ~100 small ops of a decode step (on a CPU
        their per-op dispatch, not arithmetic, is most of a token's cost)."""
        b = tok.size(0)
        c, nh = self.cfg.n_embd, self.cfg.n_head
        x = self.tok_emb(tok) + self.pos_emb(pos.view(1, 1))  # (B, 1, C)
        slots = ks[0].size(2)
        visible = (torch.arange(slots, device=tok.device) <= pos).view(1, 1, 1, slots)  # filled
        for i, block in enumerate(self.blocks):
            h = block.ln_1(x)
            q, k, v = block.attn.qkv(h).view(b, 1, 3, nh, c // nh).permute(2, 0, 3, 1, 4).unbind(0)
            ks[i].index_copy_(2, pos.view(1), k)
            vs[i].index_copy_(2, pos.view(1), v)
            y = F.scaled_dot_product_attention(q, ks[i], vs[i], attn_mask=visible)
            x = x + block.attn.proj(y.transpose(1, 2).reshape(b, 1, c))
            x = x + block.mlp(block.ln_2(x))
        return self.head(self.ln_f(x))[:, -1, :]

    @torch.no_grad()
    def step(self, idx: torch.Tensor, state: KVCache | None = None,
             compiled: bool = False) -> tuple[torch.Tensor, KVCache]:
        """Feed new tokens idx (B, T); return logits of the last one (B, vocab) and the cache.

        When the context is full the cache is rebuilt from the last half of the context
        (positions are absolute, so old keys cannot simply be shifted); this costs one
        half-context forward every block_size/2 tokens instead of one per token.

        `compiled=True` runs single-token steps through `compiled_decode_one()` (the same
        computation, compiled once; the first call takes seconds)."""
        if state is None:
            state = self.new_state(idx.size(0))
        if state.pos + idx.size(1) > self.cfg.block_size:
            keep = max(self.cfg.block_size // 2 - idx.size(1), 0)
            tail = torch.cat([state.tokens, idx], dim=1)[:, -(keep + idx.size(1)):]
            tail = tail[:, -self.cfg.block_size:]
            state = self.new_state(idx.size(0))
            idx = tail
        if compiled and idx.size(1) == 1 and not self.training:
            from torch._dynamo.exc import FailOnRecompileLimitHit

            pos = torch.tensor(state.pos, device=idx.device)
            try:
                logits = compiled_decode_one()(self, idx, pos, state.k, state.v)
            except FailOnRecompileLimitHit:
                pass  # one graph per batch size / model shape up to dynamo's limit; then eager
            else:
                state.advance(idx)
                return logits, state
        logits = self(idx, state)
        return logits[:, -1, :], state


@functools.cache
def compiled_decode_one():
    """`GPT._decode_one` through torch.compile, shared by every GPT (parameters are inputs of
    the compiled graph); compiled on first use for each batch size and model shape."""
    return torch.compile(GPT._decode_one, dynamic=False, fullgraph=True)
