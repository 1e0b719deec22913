"""int8 weights (genforge/pretrained/quantize.py): logits stay close to fp32, generation runs,
a tied head keeps the embedding exact, bad settings are named."""
from __future__ import annotations

import pytest
import torch

from genforge.generate.sampling import SamplingConfig, sample_tokens
from genforge.models.llama import Llama, LlamaConfig
from genforge.pretrained.quantize import Int8Linear, QuantizeError, quantize_model, quantize_weight


def tiny_llama(tied: bool = True) -> Llama:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, block_size=64, n_layer=2, n_head=4, n_kv_head=2,
                      d_model=64, intermediate=160, tie_weights=tied)
    return Llama(cfg).eval()


def test_weight_round_trip_is_within_half_a_step():
    w = torch.randn(33, 20) * torch.logspace(-3, 1, 33)[:, None]  # rows of very different scale
    q, scale = quantize_weight(w)
    assert q.dtype == torch.int8 and scale.shape == (33,)
    err = (q.float() * scale[:, None] - w).abs()
    assert bool((err <= scale[:, None] / 2 + 1e-7).all())  # per-row: rounding error only


@pytest.mark.parametrize("kernel", ["dequant", "int8pack"])
@pytest.mark.parametrize("tied", [True, False])
def test_quantized_logits_stay_close_to_fp32(kernel, tied):
    model = tiny_llama(tied)
    idx = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(idx)
    emb = model.tok_emb.weight.detach().clone()
    summary = quantize_model(model, "int8", kernel=kernel)
    # 2 layers x (qkv, proj, gate, up, down) + the head
    assert summary["layers"] == 11 and summary["kernel"] == kernel
    assert isinstance(model.head, Int8Linear)
    assert summary["bytes_after"] < summary["bytes_before"]
    with torch.no_grad():
        out = model(idx)
    rel = ((out - ref).norm() / ref.norm()).item()
    assert rel < 0.02, rel  # int8 per-channel: ~0.4% of a weight's range per element
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9
    # the lookup table is untouched (a tied head got its own int8 copy)
    assert torch.equal(model.tok_emb.weight, emb)


def test_generation_runs_and_cache_matches_full_forward():
    model = tiny_llama()
    quantize_model(model)
    prompt = torch.tensor([[1, 2, 3, 4]])
    greedy = SamplingConfig(max_new_tokens=12, temperature=0.0)
    cached = torch.cat(list(sample_tokens(model, prompt, greedy)))
    uncached = torch.cat(list(sample_tokens(model, prompt, greedy, use_cache=False)))
    assert cached.numel() == 12 and torch.equal(cached, uncached)
    # KV-cached decoding of a quantized model equals its own full forward
    seq = torch.randint(0, 97, (1, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(seq)[0, -1]
        logits, state = model.step(seq[:, :6])
        for t in range(6, 10):
            logits, state = model.step(seq[:, t:t + 1], state)
    torch.testing.assert_close(logits[0], full, rtol=1e-4, atol=1e-4)


def test_head_can_stay_float_and_bad_settings_are_named():
    model = tiny_llama()
    summary = quantize_model(model, head=False)
    assert summary["layers"] == 10 and not isinstance(model.head, Int8Linear)
    with pytest.raises(QuantizeError, match="unknown quantization 'int4'.*int8"):
        quantize_model(tiny_llama(), "int4")
    with pytest.raises(QuantizeError, match="unknown int8 kernel 'fast'.*dequant"):
        quantize_model(tiny_llama(), kernel="fast")
