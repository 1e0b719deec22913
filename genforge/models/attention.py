"""The one multi-head attention of genforge, used by every family that attends.

softmax(q k^T / sqrt(d) + mask) v (Vaswani et al. 2017, eq. 1) through
`F.scaled_dot_product_attention` (fused kernels on CPU and CUDA), with

- masks: causal (queries aligned to the *last* keys, so new tokens after a cache see the whole
  prefix), key padding (B, Tk) and any extra boolean mask, combined; cross attention
  (queries from `x`, keys/values from `context`, e.g. an encoder's states);
- grouped-query attention (Ainslie et al. 2023, "GQA"): `n_kv_head` key/value heads shared by
  `n_head // n_kv_head` query heads each (`n_kv_head == 1` is multi-query attention);
- rotary positions (Su et al. 2021, "RoFormer"), in the half-split layout Hugging Face Llama
  checkpoints use, with Llama-3 / linear frequency scaling;
- a `KVCache` of preallocated per-layer buffers with append, truncate and reorder-by-index
  (beam search), plus a static mode for compiled decoding: one token over the whole buffer with
  the unfilled tail masked, every shape fixed, so `torch.compile` builds the step once.

`reference_attention` is the same computation written out: the readable definition and the
oracle the tests compare the fused path against.

Parameter names follow GPT's: self-attention has one fused `qkv` projection laid out as
[q heads | k heads | v heads]; cross attention has `q` and `kv`; the output is `proj`.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from genforge.models.layers import dropout

# torch >= 2.5 shares key/value heads inside SDPA without materialising the repeats; probe once
try:
    F.scaled_dot_product_attention(torch.zeros(1, 2, 1, 2), torch.zeros(1, 1, 1, 2),
                                   torch.zeros(1, 1, 1, 2), enable_gqa=True)
    _SDPA_GQA = True
except (TypeError, RuntimeError):
    _SDPA_GQA = False


# ---------------------------------------------------------------------------------------
# masks and the written-out reference


def causal_mask(tq: int, tk: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(tq, tk) boolean mask, True where a query may attend, for queries at absolute positions
    tk-tq .. tk-1 over keys 0..tk-1.

    Not SDPA's `is_causal=True` when tq != tk: that aligns the mask to the top-left, which is
    wrong for queries that follow cached keys."""
    q_pos = torch.arange(tk - tq, tk, device=device).unsqueeze(1)  # (tq, 1)
    k_pos = torch.arange(tk, device=device).unsqueeze(0)  # (1, tk)
    return k_pos <= q_pos


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, n_kv, T, hs) -> (B, n_kv * n_rep, T, hs): each key/value head serves n_rep query
    heads, consecutive query heads sharing one (the grouping every GQA checkpoint uses)."""
    if n_rep == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, t, d).reshape(b, h * n_rep, t, d)


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        mask: torch.Tensor | None = None, dropout_p: float = 0.0,
                        return_weights: bool = False):
    """softmax(q k^T / sqrt(d) + mask) v written out. q (B, nh, Tq, hs); k, v (B, nkv, Tk, hs)
    with nkv dividing nh; `mask` boolean, broadcastable to (B, nh, Tq, Tk), True = may attend.
    Returns (B, nh, Tq, hs), and the weights (B, nh, Tq, Tk) with `return_weights`."""
    n_rep = q.size(1) // k.size(1)
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, nh, Tq, Tk)
    if mask is not None:
        att = att.masked_fill(~mask, float("-inf"))
    att = F.softmax(att, dim=-1)
    weights = att
    if dropout_p > 0:
        att = dropout(att, dropout_p)
    y = att @ v  # (B, nh, Tq, hs)
    return (y, weights) if return_weights else y


def combine_masks(*masks: torch.Tensor | None) -> torch.Tensor | None:
    """AND of boolean masks (each broadcastable to (B, nh, Tq, Tk)); None when all are None."""
    out = None
    for m in masks:
        if m is not None:
            out = m if out is None else out & m
    return out


# ---------------------------------------------------------------------------------------
# rotary positions


def rope_inv_freq(head_dim: int, theta: float = 10000.0,
                  scaling: dict | None = None) -> torch.Tensor:
    """Inverse frequencies theta^(-2i/d), i < d/2, optionally rescaled for long contexts:
    `{"rope_type": "linear", "factor": f}` divides every frequency by f (position
    interpolation, Chen et al. 2023); `{"rope_type": "llama3", "factor", "low_freq_factor",
    "high_freq_factor", "original_max_position_embeddings"}` is Llama 3.1's piecewise rule."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind in (None, "default"):
        return inv.float()
    factor = float(scaling["factor"])
    if kind == "linear":
        return (inv / factor).float()
    if kind == "llama3":
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_len = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv
        low_wl, high_wl = old_len / low, old_len / high
        smooth = (old_len / wavelen - low) / (high - low)
        mid = (1 - smooth) * inv / factor + smooth * inv
        out = torch.where(wavelen > low_wl, inv / factor, inv)
        out = torch.where((wavelen <= low_wl) & (wavelen >= high_wl), mid, out)
        return out.float()
    raise ValueError(f"unsupported rope scaling {kind!r}; supported: default, linear, llama3")


class Rotary(nn.Module):
    """cos/sin tables for rotary positions; `forward(positions)` -> cos, sin (..., T, hs)."""

    def __init__(self, head_dim: int, theta: float = 10000.0, scaling: dict | None = None):
        super().__init__()
        self.register_buffer("inv_freq", rope_inv_freq(head_dim, theta, scaling), persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[..., None] * self.inv_freq  # (..., T, hs/2)
        emb = torch.cat([freqs, freqs], dim=-1)  # (..., T, hs)
        return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i+hs/2}) of x (B, h, T, hs) by position angles (half-split layout)."""
    half = x.size(-1) // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rot * sin).to(x.dtype)


# ---------------------------------------------------------------------------------------
# KV cache


class KVCache:
    """Keys and values of every layer for the positions seen so far, preallocated to `max_len`
    so appending is a slice copy, not a `torch.cat` per token.

    Eager mode: `pos` (an int) positions are filled; `append` writes the new ones and returns
    views of everything so far. Static mode (`static_view`, used inside a compiled decode
    step): `pos` is a 0-d tensor, one token is written with `index_copy_`, and the whole
    buffer is returned with a mask of the filled slots, so every shape stays fixed. Static
    mode with per-row positions (`pos` a (B,) tensor: continuous batching, where each row is
    a different stream at its own length): one token per row is written at that row's
    position and each row's mask covers its own filled slots.

    `tokens` (B, pos) records the ids fed so far, so a model can rebuild a full context;
    `cross` holds per-layer keys/values computed once from an encoder's states."""

    def __init__(self, n_layer: int, batch: int, n_kv_head: int, max_len: int, head_size: int,
                 device: torch.device | str, dtype: torch.dtype):
        shape = (batch, n_kv_head, max_len, head_size)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.max_len = max_len
        self.pos: int | torch.Tensor = 0
        self.static = False
        self.tokens = torch.zeros(batch, 0, dtype=torch.long, device=device)
        self.cross: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def static_view(cls, k: list[torch.Tensor], v: list[torch.Tensor],
                    pos: torch.Tensor) -> "KVCache":
        """A cache over existing buffers at tensor position `pos`: 0-d (every row at the same
        length; compiled decoding) or (B,) (each row at its own length; one new token per row)."""
        self = cls.__new__(cls)
        self.k, self.v, self.max_len, self.pos, self.static = k, v, k[0].size(2), pos, True
        self.tokens, self.cross = None, {}
        return self

    @property
    def batch(self) -> int:
        return self.k[0].size(0)

    def positions(self, t: int, device: torch.device | str) -> torch.Tensor:
        """Absolute positions (t,) of the next t tokens; (B, t) with per-row positions."""
        if isinstance(self.pos, torch.Tensor) and self.pos.dim() == 1:
            return self.pos[:, None] + torch.arange(t, device=device)
        return self.pos + torch.arange(t, device=device)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store k, v (B, nkv, T, hs) at the next T positions. Returns (keys, values, valid):
        eager: the filled prefix and valid=None; static: the whole buffers and valid, a
        (1, 1, 1, max_len) mask of the slots filled so far."""
        t = k.size(2)
        if self.static and self.pos.dim() == 1:  # per-row positions: row b writes at pos[b]
            if t != 1:
                raise ValueError(f"a cache with per-row positions takes one token per row, got {t}")
            rows = torch.arange(k.size(0), device=k.device)
            self.k[layer][rows, :, self.pos] = k[:, :, 0]
            self.v[layer][rows, :, self.pos] = v[:, :, 0]
            valid = torch.arange(self.max_len, device=k.device) <= self.pos[:, None]  # (B, max_len)
            return self.k[layer], self.v[layer], valid[:, None, None, :]
        if self.static:
            idx = self.positions(t, k.device)
            self.k[layer].index_copy_(2, idx, k)
            self.v[layer].index_copy_(2, idx, v)
            valid = (torch.arange(self.max_len, device=k.device) <= idx[-1]).view(1, 1, 1, -1)
            return self.k[layer], self.v[layer], valid
        end = self.pos + t
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {end} requested")
        kb, vb = self.k[layer], self.v[layer]
        # narrow, not [:, :, a:b] indexing: the same views with less dispatch (once per token
        # and layer)
        kb.narrow(2, self.pos, t).copy_(k)
        vb.narrow(2, self.pos, t).copy_(v)
        return kb.narrow(2, 0, end), vb.narrow(2, 0, end), None

    def advance(self, idx: torch.Tensor) -> None:
        """Record tokens idx (B, T) whose keys/values every layer has just stored."""
        self.pos = self.pos + idx.size(1)
        if self.tokens is not None:
            self.tokens = torch.cat([self.tokens, idx], dim=1)

    def truncate(self, length: int) -> None:
        """Forget every position from `length` on (e.g. rejected draft tokens, a shortened
        prompt); the buffers keep their size, later appends overwrite the tail."""
        if not 0 <= length <= self.pos:
            raise ValueError(f"cannot truncate a cache of {self.pos} positions to {length}")
        self.pos = length
        self.tokens = self.tokens[:, :length]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows `index` (B',) in that order (beam search: each surviving beam takes
        its parent's cache). Rows may repeat; B' may differ from B."""
        self.k = [k.index_select(0, index) for k in self.k]
        self.v = [v.index_select(0, index) for v in self.v]
        self.tokens = self.tokens.index_select(0, index)
        self.cross = {i: (k.index_select(0, index), v.index_select(0, index))
                      for i, (k, v) in self.cross.items()}


# ---------------------------------------------------------------------------------------
# the module


class MultiHeadAttention(nn.Module):
    """Multi-head attention, self or cross, with GQA, rotary positions and a KV cache.

    d_model: width of `x` (queries and the output); d_context: width of `context` for cross
    attention (None = self-attention); n_kv_head: key/value heads (None = n_head);
    head_dim: per-head width (None = d_model // n_head); bias: biases of the q/k/v
    projections; out_bias: of the output projection (None = same as bias); rotary: a `Rotary`
    module (None = no rotary positions); dropout: on the attention weights while training;
    fused: False computes every call with `reference_attention` (slower; the written-out
    formula, for checking the fused kernels).
    """

    def __init__(self, d_model: int, n_head: int, n_kv_head: int | None = None,
                 head_dim: int | None = None, bias: bool = False, out_bias: bool | None = None,
                 dropout: float = 0.0, d_context: int | None = None,
                 rotary: Rotary | None = None, fused: bool = True):
        super().__init__()
        n_kv_head = n_kv_head or n_head
        if head_dim is None:
            if d_model % n_head:
                raise ValueError(f"d_model ({d_model}) must be divisible by n_head ({n_head})")
            head_dim = d_model // n_head
        if n_head % n_kv_head:
            raise ValueError(f"n_head ({n_head}) must be a multiple of n_kv_head ({n_kv_head})")
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, head_dim
        gqa = n_kv_head != n_head
        self._sdpa_kw = {"enable_gqa": True} if gqa and _SDPA_GQA else {}
        self._n_rep = n_head // n_kv_head if gqa and not _SDPA_GQA else 1
        self.dropout = dropout
        self.fused = fused
        self.is_cross = d_context is not None
        q_dim, kv_dim = n_head * head_dim, n_kv_head * head_dim
        if self.is_cross:
            self.q = nn.Linear(d_model, q_dim, bias=bias)
            self.kv = nn.Linear(d_context, 2 * kv_dim, bias=bias)
        else:
            self.qkv = nn.Linear(d_model, q_dim + 2 * kv_dim, bias=bias)
        self.proj = nn.Linear(q_dim, d_model, bias=bias if out_bias is None else out_bias)
        self.rotary = rotary

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, n, self.head_dim).transpose(1, 2)  # (B, h, T, hs)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, *,
                causal: bool = False, key_padding_mask: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None, cache: KVCache | None = None,
                layer: int = 0, positions: torch.Tensor | None = None,
                need_weights: bool = False):
        """x (B, T, d_model) -> (B, T, d_model); with `need_weights`, also the attention
        weights (B, nh, T, Tk).

        causal: query i sees keys up to its own position (self-attention). key_padding_mask:
        (B, Tk) bool, True for real keys (with a cache: every key so far). attn_mask: bool,
        broadcastable to (B, nh, T, Tk), True = may attend. cache: self-attention appends
        this layer's new keys/values to it; cross attention computes the context's keys/values
        once per layer and keeps them there. positions: rotary positions of x's tokens, (T,)
        or (B, T); default: the cache's next positions, or 0..T-1."""
        b, t, _ = x.shape
        nh, nkv, hs = self.n_head, self.n_kv_head, self.head_dim
        valid = None
        if self.is_cross:
            if context is None:
                raise ValueError("cross attention needs `context`")
            q = self._heads(self.q(x), nh)
            if cache is not None and layer in cache.cross:
                k, v = cache.cross[layer]
            else:
                k, v = (self._heads(a, nkv) for a in self.kv(context).chunk(2, dim=-1))
                if cache is not None:
                    cache.cross[layer] = (k, v)
            causal = False
        else:
            # views only, in as few ops as the layout allows: a decode step runs this once per
            # token and layer, where each op's dispatch cost (not arithmetic) counts
            if nkv == nh:
                q, k, v = self.qkv(x).view(b, t, 3, nh, hs).permute(2, 0, 3, 1, 4).unbind(0)
            else:
                qkv = self.qkv(x).view(b, t, nh + 2 * nkv, hs).transpose(1, 2)  # (B, nh+2nkv, T, hs)
                q, k, v = qkv.split([nh, nkv, nkv], dim=1)
            if self.rotary is not None:
                if positions is None:
                    positions = cache.positions(t, x.device) if cache is not None \
                        else torch.arange(t, device=x.device)
                cos, sin = self.rotary(positions)
                if cos.dim() == 3:  # per-row positions (B, T, hs) -> broadcast over heads
                    cos, sin = cos[:, None], sin[:, None]
                q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
            if cache is not None:
                k, v, valid = cache.append(layer, k, v)  # (B, nkv, Tk, hs)
        tk = k.size(2)
        written_out = need_weights or not self.fused
        mask = valid  # static cache: the filled slots, which already stop at the query's position
        if key_padding_mask is not None:
            mask = combine_masks(mask, key_padding_mask[:, None, None, :])
        if attn_mask is not None:
            mask = combine_masks(mask, attn_mask)
        # causal with nothing else to mask and no cached prefix: SDPA's own (fastest) causal
        # path; one query after cached keys (t == 1) sees all of them: no mask; otherwise the
        # bottom-right aligned mask
        sdpa_causal = causal and valid is None and tk == t and mask is None and not written_out
        if causal and valid is None and t > 1 and not sdpa_causal:
            mask = combine_masks(causal_mask(t, tk, x.device), mask)
        p = self.dropout if self.training else 0.0
        if written_out:
            y, w = reference_attention(q, k, v, mask, p, return_weights=True)
        else:
            w = None
            if self._n_rep > 1:  # torch < 2.5: SDPA cannot share key/value heads itself
                k, v = repeat_kv(k, self._n_rep), repeat_kv(v, self._n_rep)
            # (attn_mask, dropout_p, is_causal) passed positionally: keyword parsing costs a
            # measurable share of a one-token decode step
            y = F.scaled_dot_product_attention(q, k, v, mask, p, sdpa_causal, **self._sdpa_kw)
        y = self.proj(y.transpose(1, 2).reshape(b, t, nh * hs))  # (B, T, d_model)
        return (y, w) if need_weights else y


__all__ = [
    "KVCache", "MultiHeadAttention", "Rotary", "apply_rotary", "causal_mask", "combine_masks",
    "reference_attention", "repeat_kv", "rope_inv_freq",
]
