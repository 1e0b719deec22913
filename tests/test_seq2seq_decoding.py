"""Seq2seq decoding oracles: cached decoding == the full forward, beam size 1 == greedy, and
beam search's best == an exhaustive search over every output on a tiny vocabulary."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from genforge.generate.beam import (BOS, EOS, DecodeConfig, beam_search, decode, greedy_or_sample,
                                    length_penalty, max_lengths)
from genforge.models.seq2seq import (GRUSeq2Seq, GRUSeq2SeqConfig, TransformerSeq2Seq,
                                     TransformerSeq2SeqConfig)

VOCAB = 6  # <pad> <s> </s> and three words


def _model(kind: str, vocab: int = VOCAB, seed: int = 0):
    torch.manual_seed(seed)
    if kind == "transformer":
        m = TransformerSeq2Seq(TransformerSeq2SeqConfig(src_vocab=vocab, tgt_vocab=vocab, d_model=16,
                                                        n_head=2, n_enc_layer=2, n_dec_layer=2,
                                                        d_ff=32, dropout=0.0, max_len=16))
    else:
        m = GRUSeq2Seq(GRUSeq2SeqConfig(src_vocab=vocab, tgt_vocab=vocab, embed_size=8, hidden_size=12,
                                        attn_size=8, dropout=0.0, max_len=16))
    # peaked, varied distributions (the default init is near uniform: ties everywhere)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.6)
    return m.eval()


SRC = torch.tensor([[3, 4, 5, 3, 0], [5, 5, 0, 0, 0], [4, 3, 3, 4, 5]])  # padded with 0


@pytest.mark.parametrize("kind", ["transformer", "gru"])
def test_cached_steps_equal_the_full_forward(kind):
    m = _model(kind)
    tgt = torch.tensor([[BOS, 3, 4, 5, 3], [BOS, 5, 3, 4, 4], [BOS, 4, 4, 3, 5]])
    with torch.no_grad():
        full = F.log_softmax(m(SRC, tgt).float(), -1)  # (B, T, V)
        state = m.start(SRC, 8)
        for t in range(tgt.size(1)):
            logp, state = m.step(tgt[:, t], state)
            torch.testing.assert_close(logp, full[:, t], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["transformer", "gru"])
def test_reorder_moves_every_row_with_its_cache(kind):
    """After reorder(index), stepping row i continues the history of row index[i]."""
    m = _model(kind)
    tgt = torch.tensor([[BOS, 3, 4], [BOS, 5, 3], [BOS, 4, 4]])
    index = torch.tensor([2, 0, 0, 1])
    with torch.no_grad():
        full = F.log_softmax(m(SRC[index], tgt[index]).float(), -1)
        state = m.start(SRC, 8)
        for t in range(2):
            _, state = m.step(tgt[:, t], state)
        state = m.reorder(state, index)
        logp, _ = m.step(tgt[index, 2], state)
    torch.testing.assert_close(logp, full[:, 2], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["transformer", "gru"])
def test_beam_size_one_is_greedy(kind):
    m = _model(kind, vocab=40, seed=3)
    src = torch.randint(3, 40, (6, 7))
    src[2, 4:] = 0
    cfg = DecodeConfig(beams=1, length_penalty=0.0, max_len_b=12, max_len_a=0.0)
    limits = max_lengths(src, cfg, m.context_size)
    g, g_scores = greedy_or_sample(m, src, cfg, limits)
    b = [r[0] for r in beam_search(m, src, cfg, limits)]
    assert [s for s, _ in b] == g
    assert [sc for _, sc in b] == pytest.approx(g_scores, abs=1e-4)


def _exhaustive_best(m, src_row: torch.Tensor, max_len: int, alpha: float) -> float:
    """Best length-normalised log-probability over every output: sequences of words ending in
    </s>, or max_len words long (what the search also counts as finished)."""
    words = [w for w in range(VOCAB) if w not in (0, BOS)]
    best = float("-inf")
    for n in range(1, max_len + 1):
        for seq in itertools.product(words, repeat=n):
            if EOS in seq[:-1] or (n < max_len and seq[-1] != EOS):
                continue
            with torch.no_grad():
                logp = F.log_softmax(m(src_row[None], torch.tensor([[BOS, *seq[:-1]]])).float(), -1)[0]
            s = sum(float(logp[t, w]) for t, w in enumerate(seq))
            best = max(best, s / length_penalty(n, alpha))
    return best


@pytest.mark.parametrize("kind", ["transformer", "gru"])
@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_wide_beam_finds_the_exhaustive_optimum(kind, alpha):
    m = _model(kind, seed=1)
    cfg = DecodeConfig(beams=64, length_penalty=alpha, max_len_a=0.0, max_len_b=4)  # 4^3*4 < 2*64
    limits = max_lengths(SRC, cfg, m.context_size)
    results = beam_search(m, SRC, cfg, limits)
    for i in range(SRC.size(0)):
        assert results[i][0][1] == pytest.approx(_exhaustive_best(m, SRC[i], 4, alpha), abs=1e-4)


def test_narrow_beam_is_never_better_than_the_optimum_and_scores_are_real():
    m = _model("transformer", seed=2)
    cfg = DecodeConfig(beams=2, length_penalty=0.6, max_len_a=0.0, max_len_b=4)
    toks, scores = decode(m, SRC, cfg)
    for i, (seq, sc) in enumerate(zip(toks, scores)):
        assert sc <= _exhaustive_best(m, SRC[i], 4, 0.6) + 1e-5
        # the reported score is the sequence's own normalised log-probability
        full = [*seq, EOS] if len(seq) < 4 else seq
        with torch.no_grad():
            logp = F.log_softmax(m(SRC[i:i + 1], torch.tensor([[BOS, *full[:-1]]])).float(), -1)[0]
        raw = sum(float(logp[t, w]) for t, w in enumerate(full))
        assert sc == pytest.approx(raw / length_penalty(len(full), 0.6), abs=1e-4)


def test_bad_decoding_settings_are_refused():
    with pytest.raises(ValueError, match="beams must be >= 1"):
        DecodeConfig(beams=0).check()
    with pytest.raises(ValueError, match="use beams=1"):
        DecodeConfig(beams=3, temperature=0.7).check()


def test_sampling_is_reproducible_with_a_seed():
    m = _model("gru", vocab=40, seed=4)
    src = torch.randint(3, 40, (4, 6))
    cfg = DecodeConfig(temperature=1.0, max_len_b=10, max_len_a=0.0)
    a = decode(m, src, cfg, torch.Generator().manual_seed(7))[0]
    b = decode(m, src, cfg, torch.Generator().manual_seed(7))[0]
    assert a == b
