"""Oracle tests of the one attention module: the fused path against the written-out
softmax(QK^T/sqrt(d))V for every mask kind, GQA, rotary positions, and cached decoding
(including after truncate and reorder) against a full forward."""
import math

import pytest
import torch
import torch.nn.functional as F

from genforge.models.attention import (KVCache, MultiHeadAttention, Rotary, apply_rotary,
                                       causal_mask, reference_attention, repeat_kv, rope_inv_freq)


def written_out(x, ctx, attn, mask):
    """softmax(QK^T/sqrt(d) + mask) V from the module's own weights, every head by hand."""
    nh, nkv, hs = attn.n_head, attn.n_kv_head, attn.head_dim
    if attn.is_cross:
        q = x @ attn.q.weight.T
        k, v = (ctx @ attn.kv.weight.T).chunk(2, dim=-1)
    else:
        q, k, v = (x @ attn.qkv.weight.T).split([nh * hs, nkv * hs, nkv * hs], dim=-1)
    B, T, _ = x.shape
    Tk = k.size(1)
    out = torch.zeros(B, T, nh * hs)
    for b in range(B):
        for h in range(nh):
            g = h // (nh // nkv)  # the key/value head this query head shares
            qh = q[b, :, h * hs:(h + 1) * hs]
            kh = k[b, :, g * hs:(g + 1) * hs]
            vh = v[b, :, g * hs:(g + 1) * hs]
            s = qh @ kh.T / math.sqrt(hs)
            m = mask[b] if mask is not None else torch.ones(T, Tk, dtype=torch.bool)
            s = s.masked_fill(~m, float("-inf"))
            out[b, :, h * hs:(h + 1) * hs] = torch.softmax(s, -1) @ vh
    return out @ attn.proj.weight.T


@pytest.mark.parametrize("n_kv", [4, 2, 1])
def test_every_mask_kind_matches_the_written_out_formula(n_kv):
    torch.manual_seed(0)
    B, T, d = 2, 5, 32
    x = torch.randn(B, T, d)
    attn = MultiHeadAttention(d, 4, n_kv_head=n_kv).eval()
    keep = torch.tensor([[True] * 5, [True, True, True, False, False]])
    cm = causal_mask(T, T)
    cases = {
        "none": (dict(), None),
        "causal": (dict(causal=True), cm.expand(B, T, T)),
        "padding": (dict(key_padding_mask=keep), keep[:, None, :].expand(B, T, T)),
        "causal+padding": (dict(causal=True, key_padding_mask=keep), cm & keep[:, None, :]),
        "explicit": (dict(attn_mask=~cm), (~cm).expand(B, T, T)),
    }
    for name, (kw, mask) in cases.items():
        if name == "explicit":  # a query row with no visible key is undefined; give row 4 one
            kw["attn_mask"] = (~cm) | torch.eye(T, dtype=torch.bool)
            mask = kw["attn_mask"].expand(B, T, T)
        ref = written_out(x, None, attn, mask)
        torch.testing.assert_close(attn(x, **kw), ref, atol=1e-5, rtol=1e-5, msg=name)
        y, w = attn(x, need_weights=True, **kw)
        torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5, msg=name)
        attn.fused = False  # every call through reference_attention (GPT's fused_attention=False)
        torch.testing.assert_close(attn(x, **kw), ref, atol=1e-5, rtol=1e-5, msg=name)
        attn.fused = True
        assert w.shape == (B, 4, T, T)
        torch.testing.assert_close(w.sum(-1), torch.ones(B, 4, T))


def test_cross_attention_with_padded_context():
    torch.manual_seed(1)
    x, ctx = torch.randn(2, 3, 16), torch.randn(2, 6, 24)
    attn = MultiHeadAttention(16, 2, d_context=24).eval()
    keep = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    ref = written_out(x, ctx, attn, keep[:, None, :].expand(2, 3, 6))
    torch.testing.assert_close(attn(x, ctx, key_padding_mask=keep), ref, atol=1e-5, rtol=1e-5)


def test_reference_attention_matches_sdpa_with_causal_mask():
    torch.manual_seed(2)
    q, k, v = torch.randn(2, 4, 7, 8), torch.randn(2, 4, 7, 8), torch.randn(2, 4, 7, 8)
    torch.testing.assert_close(reference_attention(q, k, v, causal_mask(7, 7)),
                               F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_causal_mask_is_bottom_right_aligned():
    m = causal_mask(2, 4)
    assert m.tolist() == [[True, True, True, False], [True, True, True, True]]


def test_repeat_kv_groups_consecutive_query_heads():
    x = torch.arange(2).float().view(1, 2, 1, 1)
    assert repeat_kv(x, 3).flatten().tolist() == [0, 0, 0, 1, 1, 1]


def test_rotary_rotates_pairs_and_keeps_relative_scores():
    hs = 8
    rot = Rotary(hs, theta=10000.0)
    q, k = torch.randn(1, 1, 1, hs), torch.randn(1, 1, 1, hs)

    def score(i, j):
        ci, si = rot(torch.tensor([i]))
        cj, sj = rot(torch.tensor([j]))
        return (apply_rotary(q, ci, si) * apply_rotary(k, cj, sj)).sum()

    # q.k after rotation depends only on the distance between positions (RoFormer eq. 16)
    torch.testing.assert_close(score(3, 1), score(10, 8), atol=1e-5, rtol=1e-5)
    c, s = rot(torch.tensor([2]))
    inv = 1.0 / 10000 ** (torch.arange(0, hs, 2).float() / hs)
    ang = 2 * inv[0]
    x = torch.zeros(1, 1, 1, hs)
    x[..., 0] = 1.0
    y = apply_rotary(x, c, s)  # (1, 0) in the first pair -> (cos, sin)
    torch.testing.assert_close(y[..., 0].item(), math.cos(ang), atol=1e-6, rtol=0)
    torch.testing.assert_close(y[..., hs // 2].item(), math.sin(ang), atol=1e-6, rtol=0)


def test_llama3_rope_scaling_keeps_high_frequencies_and_divides_low_ones():
    sc = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}
    base, scaled = rope_inv_freq(16, 500000.0), rope_inv_freq(16, 500000.0, sc)
    assert torch.allclose(scaled[0], base[0])  # shortest wavelength: untouched
    assert torch.allclose(scaled[-1], base[-1] / 8)  # longest: divided by the factor
    with pytest.raises(ValueError, match="supported"):
        rope_inv_freq(16, scaling={"rope_type": "yarn", "factor": 2.0})


def make_cache(attn, B, max_len):
    return KVCache(1, B, attn.n_kv_head, max_len, attn.head_dim, "cpu", torch.float32)


@pytest.mark.parametrize("n_kv,rotary", [(4, False), (2, True), (1, True)])
def test_cached_decoding_equals_full_forward_at_every_step(n_kv, rotary):
    torch.manual_seed(3)
    B, T, d = 2, 9, 32
    attn = MultiHeadAttention(d, 4, n_kv_head=n_kv, rotary=Rotary(8) if rotary else None).eval()
    x = torch.randn(B, T, d)
    full = attn(x, causal=True)
    cache = make_cache(attn, B, 16)
    pieces = [attn(x[:, :3], causal=True, cache=cache)]  # a 3-token prefill, then one at a time
    cache.advance(torch.zeros(B, 3, dtype=torch.long))
    for t in range(3, T):
        pieces.append(attn(x[:, t:t + 1], causal=True, cache=cache))
        cache.advance(torch.zeros(B, 1, dtype=torch.long))
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)


def test_written_out_path_decodes_with_a_cache_like_the_fused_one():
    """fused=False (reference_attention) under a cache: prefill, a 2-token chunk after the
    prefix (bottom-right causal mask) and single tokens give the full causal forward."""
    torch.manual_seed(7)
    attn = MultiHeadAttention(32, 4, n_kv_head=2, rotary=Rotary(8), fused=False).eval()
    x = torch.randn(2, 8, 32)
    full = attn(x, causal=True)
    cache = make_cache(attn, 2, 8)
    pieces = []
    for a, b in [(0, 3), (3, 5), (5, 6), (6, 7), (7, 8)]:
        pieces.append(attn(x[:, a:b], causal=True, cache=cache))
        cache.advance(torch.zeros(2, b - a, dtype=torch.long))
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)
    attn.fused = True
    torch.testing.assert_close(attn(x, causal=True), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_kv", [4, 2])
def test_static_cache_step_equals_eager(n_kv):
    """The compiled decode path's static view (whole buffer, tail masked) == eager decoding."""
    torch.manual_seed(4)
    attn = MultiHeadAttention(32, 4, n_kv_head=n_kv, rotary=Rotary(8)).eval()
    x = torch.randn(1, 6, 32)
    full = attn(x, causal=True)
    cache = make_cache(attn, 1, 8)
    attn(x[:, :4], causal=True, cache=cache)
    cache.advance(torch.zeros(1, 4, dtype=torch.long))
    for t in (4, 5):
        view = KVCache.static_view(cache.k, cache.v, torch.tensor(t))
        y = attn(x[:, t:t + 1], causal=True, cache=view)
        torch.testing.assert_close(y, full[:, t:t + 1], atol=1e-5, rtol=1e-5)
        cache.advance(torch.zeros(1, 1, dtype=torch.long))


def test_cache_reorder_and_truncate_follow_their_rows():
    torch.manual_seed(5)
    attn = MultiHeadAttention(16, 2, n_kv_head=1, rotary=Rotary(8)).eval()
    x = torch.randn(3, 5, 16)
    cache = make_cache(attn, 3, 8)
    attn(x[:, :4], causal=True, cache=cache)
    cache.advance(torch.zeros(3, 4, dtype=torch.long))
    # beam-search style: rows 2, 0, 0 survive; the next token of each must see its parent's prefix
    idx = torch.tensor([2, 0, 0])
    cache.reorder(idx)
    nxt = torch.randn(3, 1, 16)
    y = attn(nxt, causal=True, cache=cache)
    ref = attn(torch.cat([x[idx, :4], nxt], 1), causal=True)[:, -1:]
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    # truncate back to 2 positions and decode a different continuation
    cache.advance(torch.zeros(3, 1, dtype=torch.long))
    cache.truncate(2)
    y2 = attn(nxt, causal=True, cache=cache)
    ref2 = attn(torch.cat([x[idx, :2], nxt], 1), causal=True)[:, -1:]
    torch.testing.assert_close(y2, ref2, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="truncate"):
        cache.truncate(10)


def test_cross_attention_cache_computes_context_once_and_reorders():
    torch.manual_seed(6)
    attn = MultiHeadAttention(16, 2, d_context=16).eval()
    x, ctx = torch.randn(2, 1, 16), torch.randn(2, 4, 16)
    cache = make_cache(attn, 2, 4)
    y = attn(x, ctx, cache=cache)
    assert 0 in cache.cross
    torch.testing.assert_close(attn(x, ctx * 0, cache=cache), y)  # cached: context not re-read
    cache.reorder(torch.tensor([1, 1]))
    torch.testing.assert_close(attn(x[[1, 1]], ctx, cache=cache), attn(x[[1, 1]], ctx[[1, 1]]))


def test_bad_head_counts_are_refused():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(30, 4)
    with pytest.raises(ValueError, match="multiple of n_kv_head"):
        MultiHeadAttention(32, 4, n_kv_head=3)
