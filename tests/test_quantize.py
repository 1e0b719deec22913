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


def test_unknown_token_range_is_named():
    with pytest.raises(QuantizeError, match="token_range 'per-tensor'.*asym, sym"):
        quantize_model(tiny_llama(), "int8", token_range="per-tensor")


def test_head_can_stay_float_and_bad_settings_are_named():
    model = tiny_llama()
    summary = quantize_model(model, head=False)
    assert summary["layers"] == 10 and not isinstance(model.head, Int8Linear)
    with pytest.raises(QuantizeError, match="unknown quantization 'int4'.*int8"):
        quantize_model(tiny_llama(), "int4")
    with pytest.raises(QuantizeError, match="unknown int8 kernel 'fast'.*dequant"):
        quantize_model(tiny_llama(), kernel="fast")


needs_fbgemm = pytest.mark.skipif(not __import__("genforge.pretrained.quantize", fromlist=["x"]).fbgemm_available(),
                                  reason="fbgemm int8 kernel: x86 CPU builds of torch only")


def _outlier_input(rows: int = 8, seed: int = 0) -> torch.Tensor:
    """Activations like an LLM's: most channels O(1), two channels ~100x larger."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 64, generator=g)
    x[:, [5, 40]] *= 100.0
    return x


@needs_fbgemm
def test_smoothquant_moves_outliers_into_the_weights():
    """With an outlier channel one per-token activation scale wastes the int8 range on it;
    the SmoothQuant factors from calibration (x / s) @ (W s)^T bring the error down."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48)
    x = _outlier_input()
    ref = lin(x).detach()
    from genforge.pretrained.quantize import smoothing_factors

    plain = Int8Linear(lin.weight, lin.bias, "fbgemm")
    smooth = Int8Linear(lin.weight, lin.bias, "fbgemm", smoothing_factors(lin.weight, x.abs().amax(0)))
    err = lambda q: ((q(x) - ref).norm() / ref.norm()).item()  # noqa: E731
    assert err(smooth) < 0.02, err(smooth)
    assert err(smooth) < err(plain) / 3, (err(smooth), err(plain))


@needs_fbgemm
@pytest.mark.parametrize("token_range", ["asym", "sym"])
@pytest.mark.parametrize("bias", [False, True])
def test_each_token_gets_its_own_activation_scale(token_range, bias):
    """A token's output does not depend on the other tokens of the batch: a small row next to
    a row 1000x larger is as accurate as alone (one scale per tensor would flatten it), with
    either range per token (shifted: c + r x'; symmetric: r x'); the input is not changed."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32, bias=bias)
    q = Int8Linear(lin.weight, lin.bias, "fbgemm", token_range=token_range)
    small = torch.randn(1, 64)
    alone = q(small)
    both = torch.cat([small, 1000 * torch.randn(1, 64)])
    kept = both.clone()
    beside = q(both)[:1]
    assert torch.equal(both, kept)
    ref = lin(small).detach()
    assert ((alone - ref).norm() / ref.norm()).item() < 0.02
    assert ((beside - ref).norm() / ref.norm()).item() < 0.02
    torch.testing.assert_close(beside, alone, rtol=0.02, atol=0.02 * ref.abs().max().item())


@needs_fbgemm
def test_calibrated_auto_picks_fbgemm_and_generation_matches_its_forward():
    model = tiny_llama()
    idx = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(idx)
    summary = quantize_model(model, calibration=lambda m: m(idx))
    assert summary["kernel"] == "fbgemm" and summary["smoothed"] == summary["layers"] == 11
    with torch.no_grad():
        out = model(idx)
    assert ((out - ref).norm() / ref.norm()).item() < 0.03
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9
    # token by token (one row per call) agrees with the whole-sequence forward
    seq = idx[:1, :10]
    with torch.no_grad():
        full = model(seq)[0, -1]
        logits, state = model.step(seq[:, :1])
        for t in range(1, 10):
            logits, state = model.step(seq[:, t:t + 1], state)
    assert ((logits[0] - full).norm() / full.norm()).item() < 0.02
    # without calibration, auto keeps the accurate weight-only kernel
    assert quantize_model(tiny_llama())["kernel"] == "dequant"
