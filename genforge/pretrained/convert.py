"""Hugging Face Llama-family checkpoints -> `genforge.models.llama`: hyper-parameters and
tensor names, every name and shape asserted (nanoGPT's `from_pretrained` discipline: a
checkpoint that does not fit fails loudly instead of loading half).

Both importers meet here: the Hugging Face folder gives HF names directly, the GGUF reader
renames its tensors to HF names first (genforge/pretrained/gguf_file.py).
"""
from __future__ import annotations

from typing import Callable

import torch

from genforge.config import ConfigError
from genforge.models.llama import Llama, LlamaConfig


class PretrainedError(ConfigError):
    """A checkpoint that cannot be imported; the message names the problem and the fix."""


# Hugging Face `model_type` -> what differs from plain Llama
ARCHITECTURES = {
    "llama": {},
    "mistral": {},
    "qwen2": {"attn_bias": True},  # Qwen2 always has q/k/v biases, and says so nowhere
}


def check_architecture(name: str, where: str) -> str:
    if name not in ARCHITECTURES:
        raise PretrainedError(f"{where}: unsupported architecture {name!r}; `genforge import` "
                              f"takes decoder LLMs of the {', '.join(ARCHITECTURES)} families and "
                              "BERT encoders (model_type bert, e.g. sentence-transformers' MiniLM)")
    return name


def config_from_hf(d: dict, where: str = "config.json") -> LlamaConfig:
    """A Hugging Face config.json (transformers 4 or 5 spelling) -> LlamaConfig."""
    arch = check_architecture(d.get("model_type", "?"), where)
    act = d.get("hidden_act", "silu")
    if act != "silu":
        raise PretrainedError(f"{where}: hidden_act {act!r}; the Llama family here uses silu (SwiGLU)")
    # transformers 5 moved rope_theta/rope_scaling into one `rope_parameters` dict
    rope = d.get("rope_parameters") or {}
    theta = d.get("rope_theta") or rope.get("rope_theta") or 10000.0
    scaling = d.get("rope_scaling") or rope
    kind = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    scaling = None if kind == "default" else {k: v for k, v in scaling.items() if k != "rope_theta"}
    n_head = d["num_attention_heads"]
    context = d.get("max_position_embeddings", 2048)
    # sliding-window attention (Mistral, Qwen2 with use_sliding_window) equals full attention
    # within the window, so a context no longer than the window is exact
    window = d.get("sliding_window")
    if window and (arch == "mistral" or d.get("use_sliding_window")):
        context = min(context, window)
    return LlamaConfig(
        vocab_size=d["vocab_size"], block_size=context, n_layer=d["num_hidden_layers"],
        n_head=n_head, n_kv_head=d.get("num_key_value_heads") or n_head,
        d_model=d["hidden_size"], intermediate=d["intermediate_size"],
        head_dim=d.get("head_dim") or 0, rope_theta=float(theta), rope_scaling=scaling,
        rms_eps=float(d.get("rms_norm_eps", 1e-6)),
        tie_weights=bool(d.get("tie_word_embeddings", False)),
        attn_bias=bool(d.get("attention_bias", False)) or ARCHITECTURES[arch].get("attn_bias", False),
        attn_out_bias=bool(d.get("attention_bias", False)),
        mlp_bias=bool(d.get("mlp_bias", False)),
    )


def expected_hf_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a Hugging Face checkpoint of this config holds, with its shape."""
    c, hs, f = cfg.d_model, cfg.head_size, cfg.intermediate
    q, kv = cfg.n_head * hs, cfg.n_kv_head * hs
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, c), "model.norm.weight": (c,)}
    if not cfg.tie_weights:
        shapes["lm_head.weight"] = (cfg.vocab_size, c)
    for i in range(cfg.n_layer):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (c,), p + "post_attention_layernorm.weight": (c,),
            p + "self_attn.q_proj.weight": (q, c), p + "self_attn.k_proj.weight": (kv, c),
            p + "self_attn.v_proj.weight": (kv, c), p + "self_attn.o_proj.weight": (c, q),
            p + "mlp.gate_proj.weight": (f, c), p + "mlp.up_proj.weight": (f, c),
            p + "mlp.down_proj.weight": (c, f),
        })
        if cfg.attn_bias:
            shapes.update({p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                           p + "self_attn.v_proj.bias": (kv,)})
        if cfg.attn_out_bias:
            shapes[p + "self_attn.o_proj.bias"] = (c,)
        if cfg.mlp_bias:
            shapes.update({p + "mlp.gate_proj.bias": (f,), p + "mlp.up_proj.bias": (f,),
                           p + "mlp.down_proj.bias": (c,)})
    return shapes


def state_from_hf(names: set[str], get: Callable[[str], torch.Tensor], cfg: LlamaConfig,
                  where: str) -> dict[str, torch.Tensor]:
    """HF tensors (`names`, fetched one at a time by `get`) -> genforge Llama state dict.

    q/k/v projections become the fused `qkv` = [q | k | v] rows of MultiHeadAttention."""
    shapes = expected_hf_shapes(cfg)
    # rotary tables are recomputed from the config; a tied head may be stored anyway
    ignored = {n for n in names if n.endswith("rotary_emb.inv_freq")}
    if cfg.tie_weights:
        ignored.add("lm_head.weight")
    missing = sorted(set(shapes) - names)
    unexpected = sorted(names - set(shapes) - ignored)
    if missing or unexpected:
        raise PretrainedError(f"{where}: tensors do not match a {cfg.n_layer}-layer Llama-family "
                              f"model (missing: {missing[:5]}, unexpected: {unexpected[:5]})")

    def take(name: str) -> torch.Tensor:
        t = get(name)
        if tuple(t.shape) != shapes[name]:
            raise PretrainedError(f"{where}: {name} has shape {tuple(t.shape)}, expected "
                                  f"{shapes[name]} from the config")
        return t

    out = {"tok_emb.weight": take("model.embed_tokens.weight"),
           "norm.weight": take("model.norm.weight")}
    out["head.weight"] = out["tok_emb.weight"] if cfg.tie_weights else take("lm_head.weight")
    for i in range(cfg.n_layer):
        p, b = f"model.layers.{i}.", f"blocks.{i}."
        a = p + "self_attn."
        out[b + "attn_norm.weight"] = take(p + "input_layernorm.weight")
        out[b + "mlp_norm.weight"] = take(p + "post_attention_layernorm.weight")
        out[b + "attn.qkv.weight"] = torch.cat([take(a + f"{x}_proj.weight") for x in "qkv"])
        if cfg.attn_bias:
            out[b + "attn.qkv.bias"] = torch.cat([take(a + f"{x}_proj.bias") for x in "qkv"])
        out[b + "attn.proj.weight"] = take(a + "o_proj.weight")
        if cfg.attn_out_bias:
            out[b + "attn.proj.bias"] = take(a + "o_proj.bias")
        for ours, theirs in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
            out[b + f"mlp.{ours}.weight"] = take(p + f"mlp.{theirs}.weight")
            if cfg.mlp_bias:
                out[b + f"mlp.{ours}.bias"] = take(p + f"mlp.{theirs}.bias")
    return out


def build_llama(cfg: LlamaConfig, state: dict[str, torch.Tensor]) -> Llama:
    """A Llama holding exactly `state` (strict: every parameter present, nothing extra).

    Built on the meta device and given the tensors themselves (`assign=True`): no random
    initialisation of weights that are overwritten at once, and no second copy in memory."""
    with torch.device("meta"):
        model = Llama(cfg)
    model.load_state_dict(state, strict=True, assign=True)
    if cfg.tie_weights:
        model.head.weight = model.tok_emb.weight
    # the rotary table is a non-persistent buffer: recompute it off the meta device
    model.rotary.inv_freq = type(model.rotary)(cfg.head_size, cfg.rope_theta,
                                               cfg.rope_scaling).inv_freq
    return model
