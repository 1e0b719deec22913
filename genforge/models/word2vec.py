"""Word embeddings by skip-gram with negative sampling (Mikolov et al. 2013, "Distributed
Representations of Words and Phrases and their Compositionality"), CBOW optional (Mikolov et
al. 2013, "Efficient Estimation of Word Representations in Vector Space").

Two tables: `in_emb` (the word vectors kept afterwards, v_w) and `out_emb` (context vectors,
u_w). For a (center, context) pair and k noise words drawn from the unigram distribution
raised to 3/4, the loss is

    -log sigma(u_context . v_center) - sum_k log sigma(-u_noise_k . v_center)

CBOW predicts the center from the mean of its context vectors instead (same loss, the mean
in the place of v_center). The corpus helpers below make the training pairs: frequent words
are dropped with probability 1 - sqrt(t / f(w)) (the paper's subsampling formula), and each
center sees a window of b words on either side, b drawn uniformly from 1..window per center
(word2vec's "dynamic window", which weights near words more).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Word2VecConfig:
    vocab_size: int = 1000  # filled from the corpus
    dim: int = 100  # vector size
    window: int = 5  # largest context window on either side (dynamic: 1..window)
    negatives: int = 5  # k noise words per pair (5-20 for small corpora in the paper)
    subsample: float = 1e-3  # t of the subsampling formula (0 = keep every word)
    noise_power: float = 0.75  # the unigram distribution raised to this power
    cbow: bool = False  # predict the center from its mean context instead of skip-gram


def noise_distribution(counts: torch.Tensor, power: float = 0.75) -> torch.Tensor:
    """P_n(w) = count(w)^power / sum_v count(v)^power (Mikolov et al. 2013, section 2.2)."""
    weights = counts.double().clamp(min=0) ** power
    return (weights / weights.sum()).float()


def keep_probabilities(counts: torch.Tensor, t: float) -> torch.Tensor:
    """Probability of keeping each word: min(1, sqrt(t / f(w))), f = count / total, i.e. a
    word is discarded with P = 1 - sqrt(t / f(w)) (Mikolov et al. 2013, section 2.3)."""
    if t <= 0:
        return torch.ones_like(counts, dtype=torch.float)
    f = counts.double() / counts.sum().clamp(min=1)
    keep = torch.sqrt(t / f.clamp(min=1e-30))
    return keep.clamp(max=1.0).float()


def subsample(tokens: torch.Tensor, keep: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mask (same shape as tokens) of the tokens kept."""
    return torch.rand(tokens.shape, generator=gen) < keep[tokens]


def skipgram_pairs(tokens: torch.Tensor, sentence: torch.Tensor, window: int,
                   gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(center, context) id pairs of a token stream whose sentence ids are `sentence` (pairs
    never cross a sentence boundary), with each center's window drawn from 1..window."""
    n = len(tokens)
    reach = torch.randint(1, window + 1, (n,), generator=gen)
    centers, contexts = [], []
    for d in range(1, window + 1):
        if d >= n:
            break
        same = sentence[:-d] == sentence[d:]
        right = same & (reach[:-d] >= d)  # center i, context i + d
        left = same & (reach[d:] >= d)  # center i + d, context i
        centers += [tokens[:-d][right], tokens[d:][left]]
        contexts += [tokens[d:][right], tokens[:-d][left]]
    if not centers:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.cat(centers), torch.cat(contexts)


def cbow_windows(tokens: torch.Tensor, sentence: torch.Tensor, window: int, pad: int,
                 gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(center (N,), context (N, 2 * window) padded with `pad`) for CBOW."""
    n = len(tokens)
    reach = torch.randint(1, window + 1, (n,), generator=gen)
    ctx = torch.full((n, 2 * window), pad, dtype=torch.long)
    idx = torch.arange(n)
    col = 0
    for d in range(1, window + 1):
        for j in (idx - d, idx + d):
            ok = (j >= 0) & (j < n)
            jj = j.clamp(0, n - 1)
            ok &= (sentence[jj] == sentence) & (reach >= d)
            ctx[:, col] = torch.where(ok, tokens[jj], torch.full_like(tokens, pad))
            col += 1
    has = (ctx != pad).any(1)
    return tokens[has], ctx[has]


class Word2Vec(nn.Module):
    """in_emb: the word vectors; out_emb: context vectors. `forward(ids)` -> word vectors."""

    def __init__(self, cfg: Word2VecConfig):
        super().__init__()
        self.cfg = cfg
        self.in_emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.out_emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        # word2vec's initialisation: input vectors uniform in +-0.5/dim, output vectors zero
        nn.init.uniform_(self.in_emb.weight, -0.5 / cfg.dim, 0.5 / cfg.dim)
        nn.init.zeros_(self.out_emb.weight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.in_emb(ids)

    def loss(self, center: torch.Tensor, context: torch.Tensor, noise: torch.Tensor,
             pad: int = 0) -> torch.Tensor:
        """Negative-sampling loss, averaged over pairs. Skip-gram: center (B,), context (B,);
        CBOW: center (B,) is predicted from context (B, C) (entries equal to `pad` ignored).
        noise (B, k)."""
        if context.dim() == 2:  # CBOW: h = mean of the context words' input vectors
            m = (context != pad).unsqueeze(-1).float()
            h = (self.in_emb(context) * m).sum(1) / m.sum(1).clamp(min=1)
            target = center
        else:
            h, target = self.in_emb(center), context
        pos = (self.out_emb(target) * h).sum(-1)  # (B,)
        neg = torch.einsum("bkd,bd->bk", self.out_emb(noise), h)  # (B, k)
        return -(F.logsigmoid(pos) + F.logsigmoid(-neg).sum(-1)).mean()

    @torch.no_grad()
    def neighbours(self, ids: torch.Tensor, k: int = 5, exclude: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
        """Cosine nearest neighbours of each id among the vocabulary (the first `exclude`
        ids, the special tokens, and the word itself never count) -> (sims, ids), (N, k)."""
        w = F.normalize(self.in_emb.weight, dim=-1)
        sims = w[ids] @ w.T  # (N, V)
        sims[:, :exclude] = -2
        sims[torch.arange(len(ids)), ids] = -2
        return sims.topk(min(k, sims.shape[1]), dim=-1)
