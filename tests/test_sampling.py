"""Sampling: filters against their definitions, greedy/seed behaviour, streaming and stops,
cache vs no-cache generation, on real (tiny, untrained) models."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genforge.data.tokenizers import BPETokenizer, CharTokenizer
from genforge.generate.sampling import (
    SamplingConfig, apply_repetition_penalty, generate_text, next_token, sample_tokens,
    stream_text, top_k_filter, top_p_filter,
)
from genforge.models.rnn import RNNLM, RNNConfig
from genforge.models.transformer import GPT, GPTConfig


TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\nJULIET:\nAy me!\n"
TOK = CharTokenizer.train(TEXT)


def gpt(block_size=32) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=TOK.vocab_size, block_size=block_size, n_layer=2, n_head=2,
                         n_embd=16, dropout=0.0))


def test_top_k_1_equals_greedy():
    torch.manual_seed(0)
    logits = torch.randn(8, 50)
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        tok = next_token(logits, SamplingConfig(temperature=1.3, top_k=1), generator=g)
        assert torch.equal(tok, logits.argmax(-1))
    assert torch.equal(next_token(logits, SamplingConfig(temperature=0)), logits.argmax(-1))


def test_top_k_keeps_exactly_k():
    logits = torch.randn(4, 30)
    kept = torch.isfinite(top_k_filter(logits, 5))
    assert kept.sum(-1).tolist() == [5] * 4
    assert torch.equal(kept, torch.zeros_like(kept).scatter(1, logits.topk(5).indices, True))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-8, 8), min_size=1, max_size=40), st.floats(0.01, 1.0))
def test_top_p_keeps_at_least_one_and_is_the_nucleus(values, p):
    logits = torch.tensor([values], dtype=torch.float64)
    kept = torch.isfinite(top_p_filter(logits, p))[0]
    probs = torch.softmax(logits, -1)[0]
    assert kept.sum() >= 1
    assert probs[kept].max() == probs.max()  # the most likely token (or one tied with it)
    # the kept tokens are the most likely ones (nothing dropped is likelier than something kept)
    if (~kept).any():
        assert probs[kept].min() >= probs[~kept].max() - 1e-12
    # they cover p, and dropping the least likely kept token would not (the smallest such set)
    assert probs[kept].sum() >= p - 1e-9
    if kept.sum() > 1:
        assert probs[kept].sum() - probs[kept].min() < p + 1e-9


def test_top_p_one_keeps_everything_and_small_p_is_greedy():
    logits = torch.randn(3, 20)
    assert torch.isfinite(top_p_filter(logits, 1.0)).all()
    tok = next_token(logits, SamplingConfig(temperature=1.0, top_p=1e-6),
                     generator=torch.Generator().manual_seed(0))
    assert torch.equal(tok, logits.argmax(-1))


def test_repetition_penalty_makes_seen_tokens_less_likely():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    seen = torch.tensor([[True, True, False, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0]]
    assert torch.equal(apply_repetition_penalty(logits, seen, 1.0), logits)


def test_temperature_sharpens_the_distribution():
    logits = torch.tensor([[1.0, 0.0, -1.0]]).repeat(4000, 1)
    g = torch.Generator().manual_seed(0)
    cold = next_token(logits, SamplingConfig(temperature=0.3), generator=g)
    hot = next_token(logits, SamplingConfig(temperature=3.0), generator=g)
    assert (cold == 0).float().mean() > 0.9 > (hot == 0).float().mean()


def test_inverse_cdf_draw_matches_the_distribution():
    from genforge.generate.sampling import _draw

    probs = torch.tensor([[0.0, 0.2, 0.0, 0.5, 0.3], [1.0, 0.0, 0.0, 0.0, 0.0]])
    d = _draw(probs.repeat_interleave(100_000, dim=0), torch.Generator().manual_seed(1)).view(2, -1)
    freq = torch.stack([torch.bincount(r, minlength=5).float() / r.numel() for r in d])
    assert torch.allclose(freq, probs, atol=0.006)  # ~4 standard errors at n=100k
    assert freq[0, 0] == 0 and freq[0, 2] == 0  # zero-probability tokens are never drawn


def test_extreme_temperatures_and_penalties_stay_finite():
    """Found by the server's fuzz test: temperature 1e-300 used to overflow logits to inf and
    give NaN probabilities. Now a vanishing temperature is (near-)greedy."""
    logits = torch.tensor([[3.0, 1.0, -2.0, 50.0]]).repeat(64, 1)
    seen = torch.ones_like(logits, dtype=torch.bool)
    for t in (1e-300, 1e-30, 1e-6):
        assert (next_token(logits, SamplingConfig(temperature=t)) == 3).all()
    for pen in (1e-300, 1e300):
        tok = next_token(logits, SamplingConfig(temperature=0.5, repetition_penalty=pen), seen)
        assert ((tok >= 0) & (tok < 4)).all()
    assert (next_token(logits, SamplingConfig(top_p=5e-324)) == 3).all()  # 0 in float32
    huge = torch.tensor([[1e38, -1e38, 0.0]])
    assert next_token(huge, SamplingConfig(temperature=2.0)).item() == 0


def test_seed_makes_sampling_reproducible():
    m = gpt()
    a = generate_text(m, TOK, "ROMEO:", max_new_tokens=40, temperature=1.0, seed=3)
    b = generate_text(m, TOK, "ROMEO:", max_new_tokens=40, temperature=1.0, seed=3)
    c = generate_text(m, TOK, "ROMEO:", max_new_tokens=40, temperature=1.0, seed=4)
    assert a == b and a != c and len(a) == 40


@pytest.mark.parametrize("model_fn", [gpt, lambda: RNNLM(RNNConfig(
    vocab_size=TOK.vocab_size, cell="gru", embed_size=16, hidden_size=16, n_layer=1))])
def test_cached_generation_equals_rerunning_the_context(model_fn):
    """Same seed: the KV cache / carried hidden state gives the same tokens as re-running the
    full context for every token (within the context window)."""
    torch.manual_seed(0)
    m = model_fn()
    prompt = torch.tensor([TOK.encode("ROMEO:")])
    cfg = SamplingConfig(max_new_tokens=20, temperature=1.0, top_k=10, seed=1)
    fast = torch.stack(list(sample_tokens(m, prompt, cfg, use_cache=True)))
    slow = torch.stack(list(sample_tokens(m, prompt, cfg, use_cache=False)))
    assert torch.equal(fast, slow)


def test_generation_runs_past_the_context():
    m = gpt(block_size=16)
    out = generate_text(m, TOK, "ROMEO:", max_new_tokens=60, temperature=1.0, seed=0)
    assert len(out) == 60


def test_stream_pieces_join_to_the_full_text_and_stop_strings_cut():
    m = gpt()
    full = generate_text(m, TOK, "ROMEO:", max_new_tokens=80, temperature=1.0, seed=5)
    pieces = list(stream_text(m, TOK, "ROMEO:", max_new_tokens=80, temperature=1.0, seed=5))
    assert len(pieces) > 1 and "".join(pieces) == full
    stop = full[30:33]  # a string the model will produce
    cut = generate_text(m, TOK, "ROMEO:", max_new_tokens=80, temperature=1.0, seed=5, stop=[stop])
    assert cut == full[:full.find(stop)]
    # a stop string that never appears changes nothing
    assert generate_text(m, TOK, "ROMEO:", max_new_tokens=80, temperature=1.0, seed=5,
                         stop=["\x00never"]) == full


def test_stream_with_byte_level_bpe_pieces_join_to_the_decoded_continuation():
    tok = BPETokenizer.train("東京 🙂 café " * 50, vocab_size=270)
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16,
                      dropout=0.0))
    cfg = SamplingConfig(max_new_tokens=60, temperature=1.0, seed=0)
    pieces = list(stream_text(m, tok, "東京", cfg))
    ids = [int(t) for t in sample_tokens(m, torch.tensor([tok.encode("東京")]), cfg)]
    # an untrained model emits arbitrary bytes; whatever they decode to, text once shown is
    # never revised: the pieces join to the decoding of the whole continuation
    assert len(pieces) > 1
    assert "".join(pieces) == tok.decode(ids)


def test_bad_sampling_settings_fail_clearly():
    m = gpt()
    for bad in (dict(top_p=0.0), dict(temperature=-1), dict(top_k=-2), dict(max_new_tokens=-1),
                dict(repetition_penalty=0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            generate_text(m, TOK, "ROMEO:", **bad)


def test_caller_runs_outside_inference_mode_between_tokens():
    m = gpt()
    m.train()
    cfg = SamplingConfig(max_new_tokens=5, temperature=1.0, seed=0, repetition_penalty=1.3)
    for tok in sample_tokens(m, torch.tensor([TOK.encode("ROMEO:")]), cfg):
        assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
        assert not tok.is_inference()
        assert not m.training  # sampling in eval mode (no dropout)...
    assert m.training  # ...and the caller's mode restored afterwards
