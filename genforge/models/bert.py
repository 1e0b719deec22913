"""BERT-family encoders (Devlin et al. 2019) and sentence embeddings from them (Reimers &
Gurevych 2019, "Sentence-BERT": the mean of the last hidden states over the real tokens).

The encoder: token + absolute position + token type embeddings, LayerNorm; then N blocks of
self-attention and a GELU MLP, each added to its input and *then* normalised (post-LN, as
the original Transformer and every BERT checkpoint; GPT-2 moved the norm in front). The GELU
is the exact erf form (`hidden_act: "gelu"` in Hugging Face configs), not the tanh estimate.

Parameter names are genforge's (tok_emb, blocks.N.attn.qkv, ...); genforge/pretrained/bert.py
maps Hugging Face checkpoints onto them. `SentenceEncoder` keeps the encoder under `bert.`,
so a classifier that also keeps one under `bert.` can start from an embedding run's weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn as nn
import torch.nn.functional as F

from genforge.models.attention import MultiHeadAttention
from genforge.models.layers import Dropout


@dataclass
class BertConfig:
    vocab_size: Annotated[int, "[0, inf)"] = 30522  # filled from the tokenizer when training from scratch
    max_len: Annotated[int, "[1, inf)"] = 512  # positions the encoder has embeddings for
    type_vocab_size: Annotated[int, "[1, inf)"] = 2  # segment ids (sentence A / B)
    n_layer: Annotated[int, "[1, inf)"] = 2
    n_head: Annotated[int, "[1, inf)"] = 4
    d_model: Annotated[int, "[1, inf)"] = 128
    intermediate: Annotated[int, "[1, inf)"] = 512  # MLP width (4 x d_model in BERT)
    ln_eps: Annotated[float, "(0, inf)"] = 1e-12  # BERT's LayerNorm epsilon
    dropout: Annotated[float, "[0, 1)"] = 0.1  # on embeddings, attention weights and block outputs while training
    pad_id: Annotated[int, "[0, inf)"] = 0
    pooling: str = "mean"  # mean | cls: how a sentence vector is read off the hidden states
    normalize: bool = True  # L2-normalise sentence vectors (cosine similarity = dot product)


POOLINGS = ("mean", "cls")


class Block(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.attn = MultiHeadAttention(cfg.d_model, cfg.n_head, bias=True, dropout=cfg.dropout)
        self.attn_norm = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)
        self.fc = nn.Linear(cfg.d_model, cfg.intermediate)
        self.proj = nn.Linear(cfg.intermediate, cfg.d_model)
        self.mlp_norm = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)
        self.drop = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.attn_norm(x + self.drop(self.attn(x, key_padding_mask=mask)))  # post-LN
        h = self.proj(F.gelu(self.fc(x)))  # exact (erf) GELU, as BERT's "gelu"
        return self.mlp_norm(x + self.drop(h))


class Bert(nn.Module):
    """tokens (B, T) -> hidden states (B, T, d_model)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model)
        self.type_emb = nn.Embedding(cfg.type_vocab_size, cfg.d_model)
        self.emb_norm = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)
        self.drop = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        # BERT's initialisation: N(0, 0.02) weights, zero biases
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None,
                token_types: torch.Tensor | None = None) -> torch.Tensor:
        """mask (B, T) bool, True for real tokens (default: tokens != pad_id)."""
        b, t = tokens.shape
        if t > self.cfg.max_len:
            raise ValueError(f"{t} tokens; this encoder has {self.cfg.max_len} positions "
                             "(truncate the input)")
        if mask is None:
            mask = tokens != self.cfg.pad_id
        if token_types is None:
            token_types = torch.zeros_like(tokens)
        pos = torch.arange(t, device=tokens.device)
        x = self.tok_emb(tokens) + self.pos_emb(pos) + self.type_emb(token_types)  # (B, T, C)
        x = self.drop(self.emb_norm(x))
        for block in self.blocks:
            x = block(x, mask)
        return x


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """(B, T, C) hidden states -> (B, C) sentence vectors: the mean over real tokens (padding
    excluded), or the first ([CLS]) token's state."""
    if how == "cls":
        return hidden[:, 0]
    if how != "mean":
        raise ValueError(f"unknown pooling {how!r}; choose one of {', '.join(POOLINGS)}")
    m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


class SentenceEncoder(nn.Module):
    """tokens (B, T) -> sentence vectors (B, d_model): the encoder, pooled, optionally
    L2-normalised. `loss` is unsupervised SimCSE (Gao et al. 2021): each sentence encoded
    twice under different dropout masks is its own positive, the batch's other sentences
    are the negatives (InfoNCE over cosine similarities / temperature)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        if cfg.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {cfg.pooling!r}; choose one of {', '.join(POOLINGS)}")
        self.cfg = cfg
        self.bert = Bert(cfg)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            mask = tokens != self.cfg.pad_id
        v = pool(self.bert(tokens, mask), mask, self.cfg.pooling)
        return F.normalize(v, dim=-1) if self.cfg.normalize else v

    def loss(self, tokens: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
        a = F.normalize(self(tokens), dim=-1)
        b = F.normalize(self(tokens), dim=-1)  # same sentences, another dropout mask
        logits = a @ b.T / temperature  # (B, B): row i's positive is column i
        return F.cross_entropy(logits, torch.arange(len(tokens), device=tokens.device))
