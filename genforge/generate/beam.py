"""Decoding for sequence-to-sequence models: greedy, sampling and batched beam search.

Works with any model that has
  start(src (B, S), max_len) -> state           (encodes the source once)
  step(tokens (B,), state) -> (log-probs (B, V), state)
  reorder(state, index (B',)) -> state          (row i of the result is row index[i])
(genforge/models/seq2seq.py: the Transformer reorders its `KVCache`, cross keys/values
included; the GRU index-selects its hidden state and encoder memory).

Beam search keeps `beams` live hypotheses per source and scores a finished one by its
log-probability divided by the GNMT length penalty lp(n) = ((5 + n) / 6)^alpha (Wu et al.
2016, eq. 14; alpha = 0: raw log-probability). A source stops once it has `beams` finished
hypotheses and no live one can still beat the worst of them: a live score s <= 0 only falls
as it grows, so its best possible normalised score is s / lp(max length). That bound makes
the search's result the best of everything the beam kept (with a beam as wide as the
search space, the exact optimum: tests/test_seq2seq_decoding.py checks it exhaustively).

Max output length: `max_len_a * source length + max_len_b` tokens (EOS included), capped by
the model's `context_size`. <pad> and <s> are never generated: they are not targets.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from genforge.generate.sampling import top_k_filter, top_p_filter

PAD, BOS, EOS = 0, 1, 2


@dataclass
class DecodeConfig:
    beams: int = 1  # 1 = greedy (or sampling with temperature > 0)
    length_penalty: float = 0.6  # GNMT alpha; 0 = none
    max_len_a: float = 1.5  # output length limit: a * source tokens + b
    max_len_b: int = 10
    temperature: float = 0.0  # > 0: sample (beams must be 1)
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def check(self) -> "DecodeConfig":
        if self.beams < 1:
            raise ValueError(f"beams must be >= 1 (1 = greedy), got {self.beams}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.temperature > 0 and self.beams > 1:
            raise ValueError("sampling (temperature > 0) draws one hypothesis; use beams=1 with it")
        if self.length_penalty < 0:
            raise ValueError(f"length_penalty must be >= 0, got {self.length_penalty}")
        if self.max_len_a < 0 or self.max_len_b < 1:
            raise ValueError("max_len_a must be >= 0 and max_len_b >= 1")
        if not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError("top_p must be in (0, 1] and top_k >= 0")
        return self


def length_penalty(n: int, alpha: float) -> float:
    return ((5.0 + n) / 6.0) ** alpha


def max_lengths(src: torch.Tensor, cfg: DecodeConfig, cap: int) -> list[int]:
    """Per-source output limit (tokens, EOS included)."""
    lens = (src != PAD).sum(1).tolist()
    return [max(1, min(cap, int(cfg.max_len_a * n + cfg.max_len_b))) for n in lens]


def _mask_specials(logp: torch.Tensor) -> torch.Tensor:
    logp[:, PAD] = float("-inf")
    logp[:, BOS] = float("-inf")
    return logp


@torch.no_grad()
def greedy_or_sample(model, src: torch.Tensor, cfg: DecodeConfig, limits: list[int],
                     generator: torch.Generator | None = None) -> tuple[list[list[int]], list[float]]:
    """One hypothesis per source: argmax (temperature 0) or a draw. Returns (tokens without
    EOS, summed log-probability under the model, before temperature)."""
    b = src.size(0)
    state = model.start(src, max(limits))
    tok = torch.full((b,), BOS, dtype=torch.long, device=src.device)
    out: list[list[int]] = [[] for _ in range(b)]
    score = [0.0] * b
    alive = [True] * b
    for t in range(1, max(limits) + 1):
        logp, state = model.step(tok, state)
        logp = _mask_specials(logp)
        if cfg.temperature == 0:
            tok = logp.argmax(-1)
        else:
            lg = top_p_filter(top_k_filter(logp / cfg.temperature, cfg.top_k), cfg.top_p)
            tok = torch.multinomial(torch.softmax(lg, -1), 1, generator=generator).squeeze(1)
        chosen = logp.gather(1, tok[:, None]).squeeze(1).tolist()
        for i, (k, lp) in enumerate(zip(tok.tolist(), chosen)):
            if not alive[i]:
                continue
            score[i] += lp
            if k == EOS:
                alive[i] = False
            else:
                out[i].append(k)
                if t >= limits[i]:
                    alive[i] = False
        if not any(alive):
            break
    return out, score


@torch.no_grad()
def beam_search(model, src: torch.Tensor, cfg: DecodeConfig, limits: list[int],
                n_best: int = 1) -> list[list[tuple[list[int], float]]]:
    """For each source, the `n_best` best hypotheses as (tokens without EOS, normalised score),
    best first."""
    k, alpha = cfg.beams, cfg.length_penalty
    b = src.size(0)
    dev = src.device
    state = model.start(src, max(limits))
    state = model.reorder(state, torch.arange(b, device=dev).repeat_interleave(k))
    scores = torch.full((b, k), float("-inf"), device=dev)
    scores[:, 0] = 0.0  # one live hypothesis to start with, not k copies of it
    hyps = torch.full((b, k, 0), PAD, dtype=torch.long, device=dev)
    tok = torch.full((b * k,), BOS, dtype=torch.long, device=dev)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(b)]
    done = [False] * b
    for t in range(1, max(limits) + 1):
        logp, state = model.step(tok, state)
        v = logp.size(-1)
        cand = (scores.view(-1, 1) + _mask_specials(logp)).view(b, k * v)  # (B, K*V)
        top_s, top_i = cand.topk(min(2 * k, k * v), dim=-1)  # at most K of them end in EOS
        top_s, top_i = top_s.tolist(), top_i.tolist()
        new_scores = torch.full((b, k), float("-inf"), device=dev)
        parent = torch.zeros(b, k, dtype=torch.long, device=dev)
        new_tok = torch.full((b, k), EOS, dtype=torch.long, device=dev)
        for i in range(b):
            if done[i]:
                continue
            lp_now = length_penalty(t, alpha)
            live = 0
            for rank, (s, idx) in enumerate(zip(top_s[i], top_i[i])):
                if s == float("-inf"):
                    break
                beam, w = divmod(idx, v)
                if w == EOS or t >= limits[i]:
                    # only an end among the K best candidates finishes a hypothesis (as in
                    # fairseq): so beams=1 is exactly greedy decoding
                    if rank < k:
                        seq = hyps[i, beam].tolist() + ([] if w == EOS else [w])
                        finished[i].append((s / lp_now, seq))
                elif live < k:
                    new_scores[i, live], parent[i, live], new_tok[i, live] = s, beam, w
                    live += 1
            finished[i].sort(key=lambda f: -f[0])
            del finished[i][max(k, n_best):]
            if t >= limits[i] or live == 0:
                done[i] = True
            elif len(finished[i]) >= k:
                best_live = float(new_scores[i, 0])
                bound = best_live / length_penalty(limits[i], alpha) if alpha > 0 else best_live
                done[i] = bound <= finished[i][k - 1][0]
        if all(done):
            break
        index = (torch.arange(b, device=dev)[:, None] * k + parent).view(-1)
        state = model.reorder(state, index)
        hyps = torch.cat([hyps.gather(1, parent[:, :, None].expand(-1, -1, hyps.size(2))),
                          new_tok[:, :, None]], dim=2)
        scores, tok = new_scores, new_tok.view(-1)
    return [[(seq, sc) for sc, seq in f[:n_best]] for f in finished]


def decode(model, src: torch.Tensor, cfg: DecodeConfig, generator: torch.Generator | None = None
           ) -> tuple[list[list[int]], list[float]]:
    """Best hypothesis per source (beams > 1: beam search; else greedy or sampling) and its score."""
    cfg.check()
    limits = max_lengths(src, cfg, int(model.context_size))
    if cfg.beams == 1:
        return greedy_or_sample(model, src, cfg, limits, generator)
    best = [r[0] for r in beam_search(model, src, cfg, limits)]
    return [s for s, _ in best], [sc for _, sc in best]


__all__ = ["DecodeConfig", "beam_search", "decode", "greedy_or_sample", "length_penalty", "max_lengths"]
