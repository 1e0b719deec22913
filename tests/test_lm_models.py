"""Oracle tests for the language models: fused vs written-out attention, KV-cache / carried
hidden state vs a full forward pass at every generation step."""
import os
import shutil

import pytest
import torch
import torch.nn.functional as F

from genforge.models.attention import causal_mask, reference_attention
from genforge.models.rnn import RNNLM, RNNConfig
from genforge.models.transformer import GPT, GPTConfig


def tiny_gpt(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=37, block_size=24, n_layer=2, n_head=4, n_embd=32, dropout=0.0)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return GPT(cfg).eval()


@pytest.mark.parametrize("tq,tk", [(10, 10), (1, 10), (4, 10)])
def test_own_attention_matches_sdpa(tq, tk):
    torch.manual_seed(0)
    q = torch.randn(2, 3, tq, 8, dtype=torch.float64)
    k = torch.randn(2, 3, tk, 8, dtype=torch.float64)
    v = torch.randn(2, 3, tk, 8, dtype=torch.float64)
    ours = reference_attention(q, k, v, causal_mask(tq, tk))
    if tq == tk:
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:  # queries follow tk - tq cached keys: bottom-right aligned causal mask
        mask = torch.ones(tk, tk, dtype=torch.bool).tril()[tk - tq:]
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


def test_causal_mask_is_bottom_right_aligned():
    m = causal_mask(2, 4)
    assert m.tolist() == [[True, True, True, False], [True, True, True, True]]


def test_fused_and_written_out_gpt_agree():
    a = tiny_gpt(fused_attention=True)
    b = tiny_gpt(fused_attention=False)
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, 37, (3, 24))
    torch.testing.assert_close(a(idx), b(idx), rtol=1e-5, atol=1e-5)


def test_gpt_is_causal():
    m = tiny_gpt()
    idx = torch.randint(0, 37, (1, 16))
    changed = idx.clone()
    changed[0, 10:] = (changed[0, 10:] + 1) % 37
    torch.testing.assert_close(m(idx)[:, :10], m(changed)[:, :10])
    assert not torch.allclose(m(idx)[:, 10:], m(changed)[:, 10:])


@pytest.mark.parametrize("fused", [True, False])
def test_kv_cache_logits_equal_full_forward_at_every_step(fused):
    m = tiny_gpt(fused_attention=fused)
    torch.manual_seed(1)
    seq = torch.randint(0, 37, (2, 24))
    full = m(seq)  # (B, T, V): the oracle
    prompt = 5
    logits, cache = m.step(seq[:, :prompt])
    torch.testing.assert_close(logits, full[:, prompt - 1], rtol=1e-5, atol=1e-5)
    for t in range(prompt, 24):
        logits, cache = m.step(seq[:, t:t + 1], cache)
        torch.testing.assert_close(logits, full[:, t], rtol=1e-5, atol=1e-5)
    assert cache.pos == 24


def test_kv_cache_multi_token_chunks_after_a_prefix():
    """Chunks of several tokens after cached ones need the bottom-right causal mask."""
    m = tiny_gpt()
    seq = torch.randint(0, 37, (1, 20))
    full = m(seq)
    cache = m.new_state(1)
    outs = []
    for a, b in [(0, 7), (7, 11), (11, 12), (12, 20)]:
        outs.append(m(seq[:, a:b], cache))
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=1e-5, atol=1e-5)


def test_gpt_step_past_context_rebuilds_cache():
    m = tiny_gpt()
    seq = torch.randint(0, 37, (1, 40))
    logits, cache = m.step(seq[:, :20])
    for t in range(20, 40):
        logits, cache = m.step(seq[:, t:t + 1], cache)
        assert cache.pos <= m.cfg.block_size
    # after the rebuild the cache holds the last block_size/2 tokens plus those fed since
    tail = cache.tokens
    torch.testing.assert_close(tail, seq[:, 40 - tail.size(1):])
    # and its logits are exactly a full forward over that window
    torch.testing.assert_close(logits, m(tail)[:, -1], rtol=1e-5, atol=1e-5)


needs_cxx = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None,
                               reason="torch.compile on CPU needs a C++ compiler")


@needs_cxx
def test_compiled_decode_step_equals_full_forward_past_the_context():
    """The torch.compile'd one-token step (whole cache, tail masked) gives the full forward's
    logits at every step, through a cache rebuild when the context fills up, batch of 2."""
    m = tiny_gpt()
    torch.manual_seed(2)
    seq = torch.randint(0, 37, (2, 40))
    logits, cache = m.step(seq[:, :5], compiled=True)  # a prompt goes through the eager path
    torch.testing.assert_close(logits, m(seq[:, :5])[:, -1], rtol=1e-5, atol=1e-5)
    for t in range(5, 40):
        logits, cache = m.step(seq[:, t:t + 1], cache, compiled=True)
        # the oracle: a full forward over exactly what the cache holds
        torch.testing.assert_close(logits, m(cache.tokens)[:, -1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(cache.tokens, seq[:, 40 - cache.tokens.size(1):])


@needs_cxx
def test_compiled_and_eager_decode_steps_agree_through_the_shared_path():
    """Compiled (static cache view) and eager decoding run the same forward: same logits at
    every step and the same keys/values written into the cache, batch of 3."""
    m = tiny_gpt()
    torch.manual_seed(3)
    seq = torch.randint(0, 37, (3, 20))
    _, eager = m.step(seq[:, :6])
    _, comp = m.step(seq[:, :6])
    for t in range(6, 20):
        a, eager = m.step(seq[:, t:t + 1], eager)
        b, comp = m.step(seq[:, t:t + 1], comp, compiled=True)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert comp.pos == eager.pos == 20
    torch.testing.assert_close(comp.tokens, eager.tokens)
    for i in range(m.cfg.n_layer):
        torch.testing.assert_close(comp.k[i][:, :, :20], eager.k[i][:, :, :20], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(comp.v[i][:, :, :20], eager.v[i][:, :, :20], rtol=1e-5, atol=1e-5)


@needs_cxx
def test_compiled_decode_falls_back_to_eager_past_the_recompile_limit():
    """One compiled graph per batch size; past dynamo's recompile limit the step runs eagerly
    instead of failing, with the same logits."""
    m = tiny_gpt()
    torch.manual_seed(4)
    with torch._dynamo.config.patch(recompile_limit=1):
        for batch in (1, 4):  # at most one of them can get a graph under this limit
            seq = torch.randint(0, 37, (batch, 8))
            logits, cache = m.step(seq[:, :6], compiled=True)
            for t in (6, 7):
                logits, cache = m.step(seq[:, t:t + 1], cache, compiled=True)
                torch.testing.assert_close(logits, m(seq[:, :t + 1])[:, -1], rtol=1e-5, atol=1e-5)


def test_gpt_keeps_its_checkpoint_names_and_old_configs():
    """Runs saved before the shared attention still load: same parameter names and shapes,
    and config.json's `fused_attention` field is still accepted (False = written-out path)."""
    m = tiny_gpt()
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes["blocks.0.attn.qkv.weight"] == (96, 32)
    assert shapes["blocks.1.attn.proj.weight"] == (32, 32)
    assert not any("resid_dropout" in k for k in shapes)
    old = tiny_gpt(fused_attention=False)
    assert all(not b.attn.fused for b in old.blocks)
    old.load_state_dict(m.state_dict())
    idx = torch.randint(0, 37, (2, 10))
    torch.testing.assert_close(old(idx), m(idx), rtol=1e-5, atol=1e-5)


def test_compile_is_refused_for_recurrent_models():
    from genforge.generate.sampling import SamplingConfig, sample_tokens

    m = RNNLM(RNNConfig(vocab_size=37, cell="gru", embed_size=8, hidden_size=16, n_layer=1))
    with pytest.raises(ValueError, match="compile applies to decoder Transformer models"):
        next(sample_tokens(m, torch.zeros(1, 3, dtype=torch.long), SamplingConfig(compile=True)))


def test_gpt_context_overflow_in_forward_is_a_clear_error():
    m = tiny_gpt()
    with pytest.raises(ValueError, match="longer than the context"):
        m(torch.zeros(1, 25, dtype=torch.long))


def test_gpt_weight_tying_and_backward():
    m = tiny_gpt()
    assert m.head.weight is m.tok_emb.weight
    untied = tiny_gpt(tie_weights=False)
    assert untied.head.weight is not untied.tok_emb.weight
    m.train()
    idx = torch.randint(0, 37, (2, 24))
    loss = m.loss(idx[:, :-1], idx[:, 1:])
    # an untrained model is near-uniform: loss ~ ln(vocab)
    assert abs(loss.item() - torch.log(torch.tensor(37.0)).item()) < 0.3
    loss.backward()
    assert all(p.grad is not None for p in m.parameters())


def test_gpt_dropout_active_only_in_training():
    m = tiny_gpt(dropout=0.5)
    idx = torch.randint(0, 37, (2, 16))
    torch.testing.assert_close(m(idx), m(idx))
    m.train()
    assert not torch.allclose(m(idx), m(idx))


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("tie", [False, True])
def test_rnn_carried_state_equals_full_forward(cell, tie):
    torch.manual_seed(0)
    m = RNNLM(RNNConfig(vocab_size=29, cell=cell, embed_size=16, hidden_size=24, n_layer=2,
                        dropout=0.0, tie_weights=tie)).eval()
    if tie:
        assert m.head.weight is m.tok_emb.weight
    seq = torch.randint(0, 29, (3, 30))
    full, _ = m(seq)
    logits, state = m.step(seq[:, :4])
    torch.testing.assert_close(logits, full[:, 3], rtol=1e-5, atol=1e-5)
    for t in range(4, 30):
        logits, state = m.step(seq[:, t:t + 1], state)
        torch.testing.assert_close(logits, full[:, t], rtol=1e-5, atol=1e-5)
    if cell == "lstm":
        assert isinstance(state, tuple) and state[0].shape == (2, 3, 24)
    else:
        assert state.shape == (2, 3, 24)


def test_rnn_loss_and_backward():
    torch.manual_seed(0)
    m = RNNLM(RNNConfig(vocab_size=29, cell="lstm", embed_size=16, hidden_size=16, n_layer=1))
    seq = torch.randint(0, 29, (2, 12))
    loss = m.loss(seq[:, :-1], seq[:, 1:])
    loss.backward()
    assert all(p.grad is not None for p in m.parameters())


def test_bad_configs_fail_clearly():
    with pytest.raises(ValueError, match="vocab_size"):
        GPT(GPTConfig())
    with pytest.raises(ValueError, match="divisible"):
        GPT(GPTConfig(vocab_size=5, n_embd=30, n_head=4))
    with pytest.raises(ValueError, match="unknown cell"):
        RNNLM(RNNConfig(vocab_size=5, cell="xyz"))
