"""Llama-family decoder: oracle tests against transformers' Llama, Mistral and Qwen2.

Tiny random models are saved by transformers (`save_pretrained`), imported through our
Hugging Face importer, and must give the same logits (fp32, max abs diff < 1e-4); cached and
compiled decoding must equal the full forward."""
from __future__ import annotations

import pytest
import torch

from genforge.models.llama import Llama, LlamaConfig
from genforge.pretrained.convert import PretrainedError, build_llama
from genforge.pretrained.hf import load_folder

transformers = pytest.importorskip("transformers", reason="the oracle: pip install -e '.[dev]'")

TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=80, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=64)

CASES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(num_key_value_heads=4)),
    "llama-gqa-untied": ("LlamaConfig", "LlamaForCausalLM",
                         dict(num_key_value_heads=2, tie_word_embeddings=False, rope_theta=500.0)),
    "llama3-rope-scaling": ("LlamaConfig", "LlamaForCausalLM", dict(
        num_key_value_heads=1, max_position_embeddings=64,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    "llama-linear-head-dim-bias": ("LlamaConfig", "LlamaForCausalLM", dict(
        num_key_value_heads=2, head_dim=16, attention_bias=True, mlp_bias=True,
        rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(num_key_value_heads=2, sliding_window=48)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(num_key_value_heads=2, tie_word_embeddings=True)),
}


def _hf_model(case: str, seed: int = 0):
    cfg_cls, model_cls, extra = CASES[case]
    torch.manual_seed(seed)
    cfg = getattr(transformers, cfg_cls)(**{**TINY, **extra})
    model = getattr(transformers, model_cls)(cfg).eval()
    with torch.no_grad():  # random norms and biases, so a mix-up of any tensor shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                p.copy_(1 + 0.3 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module", params=list(CASES))
def pair(request, tmp_path_factory):
    hf = _hf_model(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(folder)
    (folder / "tokenizer.json").write_text("{}")  # the weights test needs no tokenizer
    cfg, state, _, _ = load_folder(folder)
    return request.param, hf, build_llama(cfg, state).eval()


def test_logits_match_transformers(pair):
    case, hf, ours = pair
    idx = torch.randint(0, 97, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(idx).logits
        got = ours(idx)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-4, case


def test_cached_and_compiled_decoding_equal_full_forward(pair):
    case, _, ours = pair
    idx = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = ours(idx)
    logits, state = ours.step(idx[:, :10])  # prompt, then one token at a time
    steps = [logits]
    for t in range(10, 24):
        logits, state = ours.step(idx[:, t:t + 1], state)
        steps.append(logits)
    cached = torch.stack(steps[1:], dim=1)  # logits after tokens 10..23
    assert (steps[0] - full[:, 9]).abs().max().item() < 1e-4
    assert (cached - full[:, 10:]).abs().max().item() < 1e-4, case
    if case == "llama-gqa-untied":  # the compiled step: compiled once, seconds
        pytest.importorskip("torch._inductor")
        logits, state = ours.step(idx[:, :10])
        out = []
        for t in range(10, 14):
            logits, state = ours.step(idx[:, t:t + 1], state, compiled=True)
            out.append(logits)
        assert (torch.stack(out, 1) - full[:, 10:14]).abs().max().item() < 1e-4


def test_loss_trains_and_context_is_enforced():
    cfg = LlamaConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_kv_head=1,
                      d_model=16, intermediate=32)
    torch.manual_seed(0)
    model = Llama(cfg)
    x = torch.randint(0, 50, (4, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = model.loss(x, x).item()
    for _ in range(20):
        opt.zero_grad()
        loss = model.loss(x, x)
        loss.backward()
        opt.step()
    assert loss.item() < first - 1.0
    with pytest.raises(ValueError, match="longer than the context"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_wrong_shapes_and_architectures_are_named(tmp_path):
    import json

    hf = _hf_model("llama")
    hf.save_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    d = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**d, "intermediate_size": 64}))
    with pytest.raises(PretrainedError, match="mlp.gate_proj.weight has shape"):
        load_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**d, "num_hidden_layers": 3}))
    with pytest.raises(PretrainedError, match="missing: .*model.layers.2"):
        load_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**d, "model_type": "gpt_neox"}))
    with pytest.raises(PretrainedError, match="'gpt_neox'.*decoder LLMs of the llama, mistral, qwen2 families"):
        load_folder(tmp_path)
