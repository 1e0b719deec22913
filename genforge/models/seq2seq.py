"""Sequence-to-sequence models with attention: a GRU encoder-decoder with additive attention,
and a Transformer encoder-decoder.

- `GRUSeq2Seq` (Bahdanau et al. 2015, "Neural Machine Translation by Jointly Learning to Align
  and Translate"): a bidirectional GRU reads the source; a GRU decoder whose state s_{i-1}
  scores every source state h_j with v^T tanh(W s_{i-1} + U h_j) (additive attention), feeds
  the context c_i with the previous word into the cell, and predicts from (s_i, c_i, y_{i-1}).
- `TransformerSeq2Seq` (Vaswani et al. 2017, "Attention Is All You Need"), pre-LN blocks (Xiong
  et al. 2020), on the shared `MultiHeadAttention`: encoder self-attention with the source's
  padding mask; decoder causal self-attention and cross attention over the encoder's states
  (same padding mask). The target embedding is the output projection (Press & Wolf 2017);
  with a joint vocabulary the source embedding is shared too. Positions are sinusoidal or
  learned. Decoding keeps a `KVCache`: self-attention keys/values appended per token, the
  cross-attention keys/values computed once from the encoder's states.

Both own their loss (cross-entropy with label smoothing, Szegedy et al. 2016, over non-pad
targets) and the one decoding interface `generate/beam.py` drives:
  start(src) -> state;  step(tokens (B,), state) -> (log-probs (B, V), state);
  reorder(state, index) -> state  (beam search: row i of the new state is row index[i]).
`forward(src, tgt_in, need_weights=True)` also returns the cross-attention (B, T, S) that
`genforge explain` draws.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from genforge.models.attention import KVCache, MultiHeadAttention
from genforge.models.layers import Dropout

PAD = 0  # padding id of every seq2seq vocabulary (the recipe's tokenizers put it first)


def smoothed_loss(logits: torch.Tensor, targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Mean cross-entropy per non-pad target token, with label smoothing."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                           ignore_index=PAD, label_smoothing=smoothing)


# ---------------------------------------------------------------------------------------
# GRU with additive attention


@dataclass
class GRUSeq2SeqConfig:
    src_vocab: Annotated[int, "[0, inf)"] = 0  # filled from the tokenizers by the recipe
    tgt_vocab: Annotated[int, "[0, inf)"] = 0
    embed_size: Annotated[int, "[1, inf)"] = 128
    hidden_size: Annotated[int, "[1, inf)"] = 256  # decoder state and each encoder direction
    attn_size: Annotated[int, "[1, inf)"] = 256  # width of the additive attention's hidden layer
    dropout: Annotated[float, "[0, 1)"] = 0.1
    max_len: Annotated[int, "[2, inf)"] = 128  # longest source (and target) in tokens
    label_smoothing: Annotated[float, "[0, 1)"] = 0.1
    share_embeddings: bool = False  # one source/target embedding (needs a joint vocabulary)


class AdditiveAttention(nn.Module):
    """score(s, h_j) = v^T tanh(W s + U h_j); U h_j is computed once per source (`keys`)."""

    def __init__(self, query_size: int, memory_size: int, attn_size: int):
        super().__init__()
        self.w = nn.Linear(query_size, attn_size, bias=False)
        self.u = nn.Linear(memory_size, attn_size, bias=True)
        self.v = nn.Linear(attn_size, 1, bias=False)

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        return self.u(memory)  # (B, S, A)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, memory: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """query (B, H), keys (B, S, A), memory (B, S, M), mask (B, S) True = real token ->
        context (B, M), weights (B, S)."""
        scores = self.v(torch.tanh(self.w(query)[:, None, :] + keys)).squeeze(-1)  # (B, S)
        weights = F.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        return torch.bmm(weights[:, None, :], memory).squeeze(1), weights


@dataclass
class GRUState:
    h: torch.Tensor  # (B, H) decoder state
    memory: torch.Tensor  # (B, S, 2H) encoder states
    keys: torch.Tensor  # (B, S, A) attention keys of the memory
    mask: torch.Tensor  # (B, S) real source tokens
    weights: list | None = None  # attention rows, when recorded


class GRUSeq2Seq(nn.Module):
    def __init__(self, cfg: GRUSeq2SeqConfig):
        super().__init__()
        if cfg.src_vocab <= 0 or cfg.tgt_vocab <= 0:
            raise ValueError("GRUSeq2SeqConfig.src_vocab/tgt_vocab must be set (the recipe fills them)")
        self.cfg = cfg
        e, h = cfg.embed_size, cfg.hidden_size
        self.src_emb = nn.Embedding(cfg.src_vocab, e, padding_idx=PAD)
        self.tgt_emb = self.src_emb if cfg.share_embeddings else nn.Embedding(cfg.tgt_vocab, e, padding_idx=PAD)
        self.encoder = nn.GRU(e, h, batch_first=True, bidirectional=True)
        self.bridge = nn.Linear(2 * h, h)  # Bahdanau: s_0 = tanh(W h_1^backward); here both directions
        self.attn = AdditiveAttention(h, 2 * h, cfg.attn_size)
        self.cell = nn.GRUCell(e + 2 * h, h)
        self.out = nn.Linear(h + 2 * h + e, e)  # deep output layer, then the vocabulary
        self.head = nn.Linear(e, cfg.tgt_vocab)
        self.drop = Dropout(cfg.dropout)

    @property
    def context_size(self) -> int:
        return self.cfg.max_len

    def start(self, src: torch.Tensor, max_len: int | None = None) -> GRUState:
        """Encode src (B, S) -> the decoder's initial state (max_len: unused, a GRU state has
        no length)."""
        mask = src != PAD
        lengths = mask.sum(1).clamp(min=1).cpu()
        x = self.drop(self.src_emb(src))
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, last = self.encoder(packed)
        memory, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=src.size(1))
        h0 = torch.tanh(self.bridge(torch.cat([last[0], last[1]], dim=-1)))  # (B, H)
        return GRUState(h0, memory, self.attn.keys(memory), mask)

    def _cell(self, y_prev: torch.Tensor, st: GRUState) -> tuple[torch.Tensor, torch.Tensor]:
        """One decoder step from the previous word y_prev (B,): (pre-softmax logits (B, V), weights)."""
        emb = self.drop(self.tgt_emb(y_prev))  # (B, E)
        ctx, w = self.attn(st.h, st.keys, st.memory, st.mask)  # context from s_{i-1}
        st.h = self.cell(torch.cat([emb, ctx], dim=-1), st.h)  # s_i
        o = torch.tanh(self.out(self.drop(torch.cat([st.h, ctx, emb], dim=-1))))
        return self.head(self.drop(o)), w

    def step(self, tokens: torch.Tensor, state: GRUState) -> tuple[torch.Tensor, GRUState]:
        logits, w = self._cell(tokens, state)
        if state.weights is not None:
            state.weights.append(w)
        return F.log_softmax(logits.float(), dim=-1), state

    @staticmethod
    def reorder(state: GRUState, index: torch.Tensor) -> GRUState:
        return GRUState(state.h.index_select(0, index), state.memory.index_select(0, index),
                        state.keys.index_select(0, index), state.mask.index_select(0, index),
                        None if state.weights is None else [w.index_select(0, index) for w in state.weights])

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor, need_weights: bool = False):
        """Teacher forcing: src (B, S), tgt_in (B, T) -> logits (B, T, V) [, weights (B, T, S)]."""
        st = self.start(src)
        logits, weights = [], []
        for t in range(tgt_in.size(1)):
            lg, w = self._cell(tgt_in[:, t], st)
            logits.append(lg)
            weights.append(w)
        out = torch.stack(logits, dim=1)
        return (out, torch.stack(weights, dim=1)) if need_weights else out

    def loss(self, src, tgt_in, tgt_out) -> torch.Tensor:
        return smoothed_loss(self(src, tgt_in), tgt_out, self.cfg.label_smoothing)


# ---------------------------------------------------------------------------------------
# Transformer


@dataclass
class TransformerSeq2SeqConfig:
    src_vocab: Annotated[int, "[0, inf)"] = 0  # filled from the tokenizers by the recipe
    tgt_vocab: Annotated[int, "[0, inf)"] = 0
    d_model: Annotated[int, "[1, inf)"] = 256
    n_head: Annotated[int, "[1, inf)"] = 4
    n_enc_layer: Annotated[int, "[1, inf)"] = 3
    n_dec_layer: Annotated[int, "[1, inf)"] = 3
    d_ff: Annotated[int, "[1, inf)"] = 1024
    dropout: Annotated[float, "[0, 1)"] = 0.1
    max_len: Annotated[int, "[2, inf)"] = 128  # longest source (and target) in tokens
    positions: Literal["sinusoidal", "learned"] = "sinusoidal"
    label_smoothing: Annotated[float, "[0, 1)"] = 0.1
    share_embeddings: bool = False  # source embedding = target embedding = output (joint vocabulary)


def sinusoids(n: int, d: int) -> torch.Tensor:
    """Vaswani et al. 2017 sec. 3.5: PE(p, 2i) = sin(p / 10000^(2i/d)), PE(p, 2i+1) = cos(...)."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    inv = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(n, d)
    pe[:, 0::2] = torch.sin(pos * inv)
    pe[:, 1::2] = torch.cos(pos * inv)[:, : d // 2]
    return pe


class FeedForward(nn.Module):
    def __init__(self, d: int, d_ff: int, dropout: float):
        super().__init__()
        self.fc, self.proj, self.drop = nn.Linear(d, d_ff), nn.Linear(d_ff, d), Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(self.drop(F.relu(self.fc(x)))))


class EncoderBlock(nn.Module):
    def __init__(self, c: TransformerSeq2SeqConfig):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(c.d_model), nn.LayerNorm(c.d_model)
        self.attn = MultiHeadAttention(c.d_model, c.n_head, bias=True, dropout=c.dropout)
        self.ff = FeedForward(c.d_model, c.d_ff, c.dropout)
        self.drop = Dropout(c.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln_1(x), key_padding_mask=mask))
        return x + self.ff(self.ln_2(x))


class DecoderBlock(nn.Module):
    def __init__(self, c: TransformerSeq2SeqConfig):
        super().__init__()
        self.ln_1, self.ln_2, self.ln_3 = (nn.LayerNorm(c.d_model) for _ in range(3))
        self.attn = MultiHeadAttention(c.d_model, c.n_head, bias=True, dropout=c.dropout)
        self.cross = MultiHeadAttention(c.d_model, c.n_head, bias=True, dropout=c.dropout,
                                        d_context=c.d_model)
        self.ff = FeedForward(c.d_model, c.d_ff, c.dropout)
        self.drop = Dropout(c.dropout)

    def forward(self, x, memory, mask, cache: KVCache | None = None, layer: int = 0,
                need_weights: bool = False):
        x = x + self.drop(self.attn(self.ln_1(x), causal=True, cache=cache, layer=layer))
        a = self.cross(self.ln_2(x), memory, key_padding_mask=mask, cache=cache, layer=layer,
                       need_weights=need_weights)
        w = None
        if need_weights:
            a, w = a
        x = x + self.drop(a)
        return x + self.ff(self.ln_3(x)), w


@dataclass
class TransformerState:
    cache: KVCache
    memory: torch.Tensor  # (B, S, C) encoder output (its keys/values live in cache.cross)
    mask: torch.Tensor  # (B, S)
    weights: list | None = None  # last layer's cross-attention rows, when recorded


class TransformerSeq2Seq(nn.Module):
    def __init__(self, cfg: TransformerSeq2SeqConfig):
        super().__init__()
        if cfg.src_vocab <= 0 or cfg.tgt_vocab <= 0:
            raise ValueError("TransformerSeq2SeqConfig.src_vocab/tgt_vocab must be set (the recipe fills them)")
        if cfg.d_model % cfg.n_head:
            raise ValueError(f"d_model ({cfg.d_model}) must be divisible by n_head ({cfg.n_head})")
        if cfg.share_embeddings and cfg.src_vocab != cfg.tgt_vocab:
            raise ValueError("share_embeddings needs one joint vocabulary (src_vocab == tgt_vocab)")
        self.cfg = cfg
        d = cfg.d_model
        self.tgt_emb = nn.Embedding(cfg.tgt_vocab, d)
        self.src_emb = self.tgt_emb if cfg.share_embeddings else nn.Embedding(cfg.src_vocab, d)
        if cfg.positions == "learned":
            self.pos_emb = nn.Embedding(cfg.max_len + 1, d)
        else:
            self.register_buffer("pe", sinusoids(cfg.max_len + 1, d), persistent=False)
        self.drop = Dropout(cfg.dropout)
        self.enc = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.n_enc_layer))
        self.dec = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.n_dec_layer))
        self.ln_enc, self.ln_dec = nn.LayerNorm(d), nn.LayerNorm(d)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        # the output projection is the target embedding (tied): logits = x @ E^T

    @property
    def context_size(self) -> int:
        return self.cfg.max_len

    def _embed(self, emb: nn.Embedding, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        t = ids.size(1)
        if start + t > self.cfg.max_len + 1:
            raise ValueError(f"sequence of {start + t} tokens is longer than max_len ({self.cfg.max_len})")
        pos = self.pos_emb.weight[start:start + t] if self.cfg.positions == "learned" else self.pe[start:start + t]
        # sqrt(d) scaling as in Vaswani et al. 3.4: the embeddings (std 0.02) would otherwise
        # be drowned by the positions
        return self.drop(emb(ids) * math.sqrt(self.cfg.d_model) + pos)  # (B, T, C)

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = src != PAD
        x = self._embed(self.src_emb, src)
        for blk in self.enc:
            x = blk(x, mask)
        return self.ln_enc(x), mask

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.ln_dec(x), self.tgt_emb.weight)  # (B, T, V)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor, need_weights: bool = False):
        """src (B, S), tgt_in (B, T) -> logits (B, T, V) [, last layer's cross-attention
        (B, T, S), mean over heads]."""
        memory, mask = self.encode(src)
        x = self._embed(self.tgt_emb, tgt_in)
        w = None
        for i, blk in enumerate(self.dec):
            x, w = blk(x, memory, mask, need_weights=need_weights and i == len(self.dec) - 1)
        logits = self._logits(x)
        return (logits, w.mean(1)) if need_weights else logits

    def loss(self, src, tgt_in, tgt_out) -> torch.Tensor:
        return smoothed_loss(self(src, tgt_in), tgt_out, self.cfg.label_smoothing)

    def start(self, src: torch.Tensor, max_len: int | None = None) -> TransformerState:
        memory, mask = self.encode(src)
        c = self.cfg
        p = memory
        cache = KVCache(c.n_dec_layer, src.size(0), c.n_head, (max_len or c.max_len) + 1,
                        c.d_model // c.n_head, p.device, p.dtype)
        return TransformerState(cache, memory, mask)

    def step(self, tokens: torch.Tensor, state: TransformerState) -> tuple[torch.Tensor, TransformerState]:
        idx = tokens[:, None]  # (B, 1)
        x = self._embed(self.tgt_emb, idx, state.cache.pos)
        rec = state.weights is not None
        for i, blk in enumerate(self.dec):
            x, w = blk(x, state.memory, state.mask, state.cache, i, need_weights=rec and i == len(self.dec) - 1)
        state.cache.advance(idx)
        if rec:
            state.weights.append(w.mean(1)[:, 0])  # (B, S)
        return F.log_softmax(self._logits(x)[:, -1].float(), dim=-1), state

    @staticmethod
    def reorder(state: TransformerState, index: torch.Tensor) -> TransformerState:
        state.cache.reorder(index)
        return TransformerState(state.cache, state.memory.index_select(0, index),
                                state.mask.index_select(0, index),
                                None if state.weights is None else [w.index_select(0, index) for w in state.weights])


__all__ = ["GRUSeq2Seq", "GRUSeq2SeqConfig", "TransformerSeq2Seq", "TransformerSeq2SeqConfig",
           "AdditiveAttention", "sinusoids", "smoothed_loss", "PAD"]
