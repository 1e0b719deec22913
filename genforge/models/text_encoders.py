"""Text classifiers: an encoder over token ids + a linear head, padding-exact.

Five encoders, each a Config dataclass + an nn.Module taking `tokens` (B, T) int64, right-padded
with `pad_id`, and returning class logits (B, n_classes):

  BagOfEmbeddings      masked mean of word (and hashed bigram) embeddings (Joulin et al. 2016,
                       "Bag of Tricks for Efficient Text Classification", fastText)
  SentenceCNN          parallel filter widths + max-over-time pooling (Kim 2014, "Convolutional
                       Neural Networks for Sentence Classification")
  BiRNN                bidirectional RNN/LSTM/GRU over packed sequences, last states of both
                       directions (Schuster & Paliwal 1997; packing = no pad ever enters the cell)
  AttentionPooling     BiGRU + multi-hop self-attentive pooling (Lin et al. 2017, "A Structured
                       Self-Attentive Sentence Embedding"), with its attention weights kept
  TransformerEncoder   small pre-norm Transformer encoder (Vaswani et al. 2017) with key-padding
                       masks and masked mean pooling

Padding contract (tested): the logits of a sequence do not depend on what else is in the batch,
i.e. on how much padding it got. Every encoder zeroes pad embeddings, masks pads out of every
pooling and attention, and never lets a pad token into a recurrence.

Every model exposes `embed` (the token nn.Embedding) so explainability can attribute to
embeddings, and `.attention` (last forward's attention weights) where it has them.

Slightly over ~400 lines: five small encoders that share the embedding, padding and head
code above them, kept in one file so that sharing stays visible.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from genforge.models.attention import MultiHeadAttention
from genforge.models.bert import Bert, BertConfig, pool as bert_pool
from genforge.models.layers import Dropout


# ---------------------------------------------------------------------------------------
# helpers


def padding_mask(tokens: torch.Tensor, pad_id: int) -> torch.Tensor:
    """(B, T) bool, True at real tokens."""
    return tokens != pad_id


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over time of x (B, T, C) at mask (B, T) -> (B, C). Empty rows give zeros."""
    m = mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


class ClassifierHead(nn.Module):
    """Dropout + linear layer, shared by all encoders (Kim 2014 uses dropout 0.5 here)."""

    def __init__(self, d_in: int, n_classes: int, dropout: float):
        super().__init__()
        self.drop = Dropout(dropout)
        self.fc = nn.Linear(d_in, n_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(h))


class TextClassifier(nn.Module):
    """Shared pieces: the token embedding, the loss and prediction helpers."""

    cfg: "TextConfig"

    def _init_embedding(self, cfg: "TextConfig") -> None:
        self.embed = nn.Embedding(cfg.vocab_size, cfg.emb_dim, padding_idx=cfg.pad_id)
        self.emb_drop = Dropout(cfg.emb_dropout)
        self.attention: torch.Tensor | None = None  # (B, [heads,] T) where the model has it

    def embed_tokens(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> embeddings (B, T, E) with pads zeroed, mask (B, T). Zeroing by the mask (not only
        padding_idx) keeps pads at zero even when attribution hooks replace the embedding."""
        mask = padding_mask(tokens, self.cfg.pad_id)
        x = self.emb_drop(self.embed(tokens))
        return x * mask.unsqueeze(-1).to(x.dtype), mask

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(tokens), labels)

    @torch.no_grad()
    def predict_proba(self, tokens: torch.Tensor) -> torch.Tensor:
        return self(tokens).softmax(-1)


# ---------------------------------------------------------------------------------------
# configs


@dataclass
class TextConfig:
    """Fields every encoder has. `vocab_size` and `n_classes` are filled from the data."""

    vocab_size: Annotated[int, "[0, inf)"] = 1000
    n_classes: Annotated[int, "[0, inf)"] = 2
    pad_id: Annotated[int, "[0, inf)"] = 0
    emb_dim: Annotated[int, "[1, inf)"] = 128
    dropout: Annotated[float, "[0, 1)"] = 0.5
    emb_dropout: Annotated[float, "[0, 1)"] = 0.0  # dropout on the word vectors (training only)


@dataclass
class BagConfig(TextConfig):
    hidden: Annotated[int, "[0, inf)"] = 0  # 0 = linear head directly on the mean embedding (fastText)
    bigram_buckets: Annotated[int, "[0, inf)"] = 0  # > 0: also embed hashed word bigrams into this many buckets


@dataclass
class CNNTextConfig(TextConfig):
    widths: Annotated[tuple[int, ...], "[1, inf)"] = (3, 4, 5)  # Kim 2014: widths 3, 4, 5 ...
    n_filters: Annotated[int, "[1, inf)"] = 100  # ... 100 feature maps each


@dataclass
class RNNTextConfig(TextConfig):
    cell: str = "lstm"  # rnn | lstm | gru
    hidden: Annotated[int, "[1, inf)"] = 128
    n_layers: Annotated[int, "[1, inf)"] = 1
    bidirectional: bool = True


@dataclass
class AttnTextConfig(TextConfig):
    hidden: Annotated[int, "[1, inf)"] = 128  # per direction of the BiGRU under the attention
    attn_dim: Annotated[int, "[1, inf)"] = 64  # d_a of Lin et al. 2017
    n_hops: Annotated[int, "[1, inf)"] = 2  # r of Lin et al. 2017: rows of the attention matrix
    penalty: Annotated[float, "[0, inf)"] = 0.0  # Frobenius penalty ||A A^T - I||^2 pushing hops apart


@dataclass
class TransformerTextConfig(TextConfig):
    n_layer: Annotated[int, "[1, inf)"] = 2
    n_head: Annotated[int, "[1, inf)"] = 4
    ff_mult: Annotated[int, "[1, inf)"] = 4
    max_len: Annotated[int, "[1, inf)"] = 512
    emb_dim: Annotated[int, "[1, inf)"] = 128
    dropout: Annotated[float, "[0, 1)"] = 0.1


# ---------------------------------------------------------------------------------------
# bag of embeddings


class BagOfEmbeddings(TextClassifier):
    """Mean of word embeddings -> (optional hidden layer) -> linear. With `bigram_buckets`,
    word bigrams are hashed into extra embedding rows and averaged with the words
    (fastText's cheap word-order signal)."""

    def __init__(self, cfg: BagConfig):
        super().__init__()
        self.cfg = cfg
        self._init_embedding(cfg)
        self.bigrams = nn.Embedding(cfg.bigram_buckets, cfg.emb_dim) if cfg.bigram_buckets else None
        d = cfg.emb_dim
        self.hidden = nn.Sequential(nn.Linear(d, cfg.hidden), nn.ReLU()) if cfg.hidden else None
        self.head = ClassifierHead(cfg.hidden or d, cfg.n_classes, cfg.dropout)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x, mask = self.embed_tokens(tokens)  # (B, T, E), (B, T)
        h = masked_mean(x, mask)  # (B, E)
        if self.bigrams is not None and tokens.shape[1] > 1:
            # A bigram exists where both of its words are real; its id is a fixed hash.
            a, b = tokens[:, :-1], tokens[:, 1:]
            bmask = mask[:, :-1] & mask[:, 1:]  # (B, T-1)
            ids = (a * 1000003 + b) % self.cfg.bigram_buckets
            bx = self.bigrams(ids) * bmask.unsqueeze(-1).to(x.dtype)
            n = mask.sum(1, keepdim=True) + bmask.sum(1, keepdim=True)
            h = (x.sum(1) + bx.sum(1)) / n.clamp(min=1).to(x.dtype)
        if self.hidden is not None:
            h = self.hidden(h)
        return self.head(h)


# ---------------------------------------------------------------------------------------
# sentence CNN (Kim 2014)


class SentenceCNN(TextClassifier):
    """Conv1d per filter width over the embeddings, ReLU, max over time, concat, dropout, linear.

    Convolutions are "wide" (zero padding width-1 on both sides) so sentences shorter than the
    widest filter still work. Pad embeddings are zero, exactly like the conv's own zero padding,
    and output positions whose window holds no real token are masked out of the max: that makes
    a padded sentence's features identical to the same sentence alone."""

    def __init__(self, cfg: CNNTextConfig):
        super().__init__()
        self.cfg = cfg
        self._init_embedding(cfg)
        self.convs = nn.ModuleList(
            nn.Conv1d(cfg.emb_dim, cfg.n_filters, w, padding=w - 1) for w in cfg.widths
        )
        self.head = ClassifierHead(cfg.n_filters * len(cfg.widths), cfg.n_classes, cfg.dropout)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x, mask = self.embed_tokens(tokens)  # (B, T, E)
        x = x.transpose(1, 2)  # (B, E, T)
        lengths = mask.sum(1)  # (B,) right padding: real tokens are 0..L-1
        feats = []
        for conv, w in zip(self.convs, self.cfg.widths):
            c = F.relu(conv(x))  # (B, F, T + w - 1)
            # Output j sees inputs j-w+1 .. j; it touches a real token iff j <= L + w - 2.
            pos = torch.arange(c.shape[-1], device=c.device)
            valid = pos.unsqueeze(0) <= (lengths + w - 2).unsqueeze(1)  # (B, T + w - 1)
            c = c.masked_fill(~valid.unsqueeze(1), float("-inf"))
            feats.append(c.max(dim=-1).values)  # (B, F)
        h = torch.cat(feats, dim=1)  # (B, F * n_widths)
        h = torch.nan_to_num(h, neginf=0.0)  # an empty sequence (all pads) -> zero features
        return self.head(h)


# ---------------------------------------------------------------------------------------
# bidirectional RNN / LSTM / GRU


_CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def _make_rnn(cell: str, d_in: int, hidden: int, n_layers: int, bidirectional: bool,
              dropout: float) -> nn.RNNBase:
    if cell not in _CELLS:
        raise ValueError(f"unknown cell {cell!r}; choose one of: {', '.join(_CELLS)}")
    return _CELLS[cell](d_in, hidden, num_layers=n_layers, batch_first=True,
                        bidirectional=bidirectional, dropout=dropout if n_layers > 1 else 0.0)


def run_packed(rnn: nn.RNNBase, x: torch.Tensor, lengths: torch.Tensor):
    """Run `rnn` on right-padded x (B, T, D) with true `lengths` (B,). Packing means the
    backward direction starts at each sequence's own last token, never at a pad.
    -> outputs (B, T, H * dirs) with zeros at pads, final hidden (layers * dirs, B, H)."""
    T = x.shape[1]
    packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True,
                                  enforce_sorted=False)
    out, h = rnn(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=T)  # (B, T, H * dirs)
    if isinstance(h, tuple):  # LSTM: (h_n, c_n)
        h = h[0]
    return out, h


class BiRNN(TextClassifier):
    """Embeddings -> (bi)RNN over packed sequences -> [last forward state; last backward state]
    of the top layer -> linear."""

    def __init__(self, cfg: RNNTextConfig):
        super().__init__()
        self.cfg = cfg
        self._init_embedding(cfg)
        self.rnn = _make_rnn(cfg.cell, cfg.emb_dim, cfg.hidden, cfg.n_layers, cfg.bidirectional,
                             cfg.dropout)
        dirs = 2 if cfg.bidirectional else 1
        self.drop = Dropout(cfg.dropout)
        self.head = ClassifierHead(cfg.hidden * dirs, cfg.n_classes, cfg.dropout)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x, mask = self.embed_tokens(tokens)  # (B, T, E)
        _, h = run_packed(self.rnn, self.drop(x), mask.sum(1))  # h: (layers * dirs, B, H)
        dirs = 2 if self.cfg.bidirectional else 1
        top = h[-dirs:]  # (dirs, B, H): the top layer's final state per direction
        h = top.transpose(0, 1).reshape(tokens.shape[0], -1)  # (B, dirs * H)
        h = h * (mask.sum(1, keepdim=True) > 0).to(h.dtype)  # all-pad rows: no state
        return self.head(h)


# ---------------------------------------------------------------------------------------
# self-attentive pooling (Lin et al. 2017)


class AttentionPooling(TextClassifier):
    """BiGRU states H (B, T, 2h); attention A = softmax_T(W2 tanh(W1 H^T)) with r hops
    (B, r, T), pads masked to -inf before the softmax; sentence matrix M = A H (B, r, 2h),
    flattened -> linear. `self.attention` keeps A of the last forward (for `explain`)."""

    def __init__(self, cfg: AttnTextConfig):
        super().__init__()
        self.cfg = cfg
        self._init_embedding(cfg)
        self.rnn = _make_rnn("gru", cfg.emb_dim, cfg.hidden, 1, True, 0.0)
        self.w1 = nn.Linear(2 * cfg.hidden, cfg.attn_dim, bias=False)
        self.w2 = nn.Linear(cfg.attn_dim, cfg.n_hops, bias=False)
        self.drop = Dropout(cfg.dropout)
        self.head = ClassifierHead(2 * cfg.hidden * cfg.n_hops, cfg.n_classes, cfg.dropout)
        self.last_penalty = torch.zeros(())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x, mask = self.embed_tokens(tokens)  # (B, T, E)
        H, _ = run_packed(self.rnn, self.drop(x), mask.sum(1))  # (B, T, 2h)
        scores = self.w2(torch.tanh(self.w1(H))).transpose(1, 2)  # (B, r, T)
        scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        A = torch.nan_to_num(scores.softmax(-1))  # all-pad rows give NaN -> 0
        self.attention = A.detach()
        M = A @ H  # (B, r, 2h)
        if self.cfg.penalty > 0:
            eye = torch.eye(A.shape[1], device=A.device, dtype=A.dtype)
            self.last_penalty = ((A @ A.transpose(1, 2) - eye) ** 2).sum((1, 2)).mean()
        return self.head(M.flatten(1))

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(self(tokens), labels)
        return ce + self.cfg.penalty * self.last_penalty if self.cfg.penalty > 0 else ce


# ---------------------------------------------------------------------------------------
# small Transformer encoder


class EncoderBlock(nn.Module):
    def __init__(self, cfg: TransformerTextConfig):
        super().__init__()
        d = cfg.emb_dim
        self.ln1 = nn.LayerNorm(d)
        # the shared attention; `need_weights` hands its softmax weights to `explain`
        self.attn = MultiHeadAttention(d, cfg.n_head, bias=True, dropout=cfg.dropout)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, cfg.ff_mult * d), nn.GELU(),
                                 nn.Linear(cfg.ff_mult * d, d), Dropout(cfg.dropout))
        self.drop = Dropout(cfg.dropout)

    def forward(self, x, mask, need_weights=False):
        a = self.attn(self.ln1(x), key_padding_mask=mask, need_weights=need_weights)
        a, w = a if need_weights else (a, None)
        x = x + self.drop(a)
        x = x + self.mlp(self.ln2(x))
        return x, w


class TransformerEncoder(TextClassifier):
    """Token + learned position embeddings -> pre-norm blocks (key-padding masked) -> final
    LayerNorm -> masked mean over real tokens -> linear. Right padding keeps every real token's
    position index the same alone or in a batch. `self.attention` holds the last layer's
    weights averaged over heads, (B, T, T), after a forward with `need_weights=True`."""

    def __init__(self, cfg: TransformerTextConfig):
        super().__init__()
        self.cfg = cfg
        self._init_embedding(cfg)
        self.pos = nn.Embedding(cfg.max_len, cfg.emb_dim)
        self.drop = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.emb_dim)
        self.head = ClassifierHead(cfg.emb_dim, cfg.n_classes, cfg.dropout)

    def forward(self, tokens: torch.Tensor, need_weights: bool = False) -> torch.Tensor:
        tokens = tokens[:, : self.cfg.max_len]  # longer inputs are truncated
        x, mask = self.embed_tokens(tokens)  # (B, T, E)
        T = tokens.shape[1]
        x = self.drop(x + self.pos(torch.arange(T, device=tokens.device)))
        # A query row with no real key (an all-pad sequence) would softmax over nothing: let
        # such rows attend to position 0 so the arithmetic stays finite; pooling drops them.
        attn_mask = mask.clone()
        attn_mask[:, 0] |= ~mask.any(1)
        for blk in self.blocks:
            x, w = blk(x, attn_mask, need_weights)
        if need_weights:
            self.attention = w.mean(1).detach()  # (B, T, T)
        return self.head(masked_mean(self.ln_f(x), mask))


# ---------------------------------------------------------------------------------------
# BERT-family encoder + head (fine-tuning a pretrained encoder, Devlin et al. 2019)


@dataclass
class BertTextConfig(BertConfig):
    """A BERT encoder's settings (genforge/models/bert.py) plus the class count. Starting
    from a pretrained run (`init_from`), text-classify adopts that run's architecture."""

    n_classes: Annotated[int, "[0, inf)"] = 2


class BertClassifier(TextClassifier):
    """BERT encoder under `bert.` (the same names as a text-embed run's SentenceEncoder, so
    `init_from` copies it) -> the sentence vector (mean or [CLS] pooling over real tokens,
    not L2-normalised: the head needs its scale) -> dropout + linear head."""

    def __init__(self, cfg: BertTextConfig):
        super().__init__()
        self.cfg = cfg
        self.bert = Bert(cfg)
        self.head = ClassifierHead(cfg.d_model, cfg.n_classes, cfg.dropout)
        self.attention = None

    @property
    def embed(self) -> nn.Embedding:  # what `explain` attributes to
        return self.bert.tok_emb

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens[:, : self.cfg.max_len]
        mask = padding_mask(tokens, self.cfg.pad_id)
        return self.head(bert_pool(self.bert(tokens, mask), mask, self.cfg.pooling))


# ---------------------------------------------------------------------------------------
# registry of this file's families (recipes map names here)


ENCODERS: dict[str, tuple[type, type]] = {
    "bag": (BagConfig, BagOfEmbeddings),
    "cnn": (CNNTextConfig, SentenceCNN),
    "rnn": (RNNTextConfig, BiRNN),
    "attention": (AttnTextConfig, AttentionPooling),
    "transformer": (TransformerTextConfig, TransformerEncoder),
}

__all__ = [
    "ENCODERS", "AttnTextConfig", "BertClassifier", "BertTextConfig", "AttentionPooling", "BagConfig", "BagOfEmbeddings", "BiRNN",
    "CNNTextConfig", "RNNTextConfig", "SentenceCNN", "TextConfig", "TransformerEncoder",
    "TransformerTextConfig", "masked_mean", "padding_mask", "run_packed",
]
