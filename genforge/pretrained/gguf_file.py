"""Import a GGUF file (llama.cpp's format): hyper-parameters, dequantized tensors, tokenizer.

Read with the `gguf` package (llama.cpp's own reader). Three things differ from a Hugging
Face checkpoint and are undone here:

- names: `blk.N.attn_q.weight` etc. are renamed to Hugging Face names, then converted like
  any HF checkpoint (genforge/pretrained/convert.py);
- layout: llama.cpp's converter permutes the rows of Llama/Mistral q and k projections from
  the half-split rotary layout (pairs (i, i + d/2)) to the interleaved one (pairs (2i, 2i+1))
  its kernels use; `unpermute` puts them back. Qwen2 files keep the half-split layout (llama.cpp
  runs them with NEOX-style rotary), so they are left alone;
- quantization: Q4_0/Q4_1/Q8_0/K-quants/F16/BF16 blocks are expanded to float32 by
  `gguf.quants.dequantize`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from genforge.models.llama import LlamaConfig
from genforge.pretrained.convert import PretrainedError, check_architecture, state_from_hf
from genforge.pretrained.tokenizer import tokenizer_from_gguf

# architectures whose q/k rows llama.cpp's converter permutes for its interleaved rotary
PERMUTED_QK = {"llama", "mistral"}

_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight", "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight", "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_gate.bias": "mlp.gate_proj.bias",
    "ffn_up.weight": "mlp.up_proj.weight", "ffn_up.bias": "mlp.up_proj.bias",
    "ffn_down.weight": "mlp.down_proj.weight", "ffn_down.bias": "mlp.down_proj.bias",
}
_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight",
                 "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}


def hf_name(name: str) -> str:
    """GGUF tensor name -> Hugging Face name (unknown names come back unchanged, so the
    name check reports them)."""
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}"
    return name


def unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation: within each head, rows (2i, 2i+1) go back to
    (i, i + d/2). w (n_head * d, ...) -> same shape."""
    d = w.size(0) // n_head
    return w.reshape(n_head, d // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def read(path: str | Path):
    """Open a GGUF file -> (reader, metadata dict of plain python values)."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise PretrainedError(f"{path}: no such file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise PretrainedError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF'); "
                              "pass a .gguf file or a Hugging Face model folder")
    try:
        reader = gguf.GGUFReader(str(path))
        end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    except Exception as e:  # the reader raises whatever numpy raises on a short buffer
        raise PretrainedError(f"{path} is a damaged or truncated GGUF file ({type(e).__name__}: "
                              f"{e}); download it again") from None
    if end > path.stat().st_size:
        raise PretrainedError(f"{path} is truncated ({path.stat().st_size} bytes, its tensors "
                              f"need {end}); download it again")
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    return reader, meta


def config_from_gguf(meta: dict, where: str) -> tuple[str, LlamaConfig]:
    arch = check_architecture(meta.get("general.architecture", "?"), where)

    def get(key: str, default=None):
        v = meta.get(f"{arch}.{key}", default)
        if v is None:
            raise PretrainedError(f"{where}: metadata {arch}.{key} is missing; the file is incomplete")
        return v

    n_head, d_model = int(get("attention.head_count")), int(get("embedding_length"))
    head_dim = int(meta.get(f"{arch}.attention.key_length", meta.get(f"{arch}.rope.dimension_count", 0)) or 0)
    scaling = None
    kind = meta.get(f"{arch}.rope.scaling.type", "none")
    if kind == "linear":
        scaling = {"rope_type": "linear", "factor": float(get("rope.scaling.factor"))}
    elif kind not in ("none", None):
        raise PretrainedError(f"{where}: rope scaling {kind!r} is not supported; supported: none, linear")
    vocab = meta.get(f"{arch}.vocab_size") or len(meta.get("tokenizer.ggml.tokens", []))
    return arch, LlamaConfig(
        vocab_size=int(vocab), block_size=int(get("context_length")),
        n_layer=int(get("block_count")), n_head=n_head,
        n_kv_head=int(meta.get(f"{arch}.attention.head_count_kv", n_head)), d_model=d_model,
        intermediate=int(get("feed_forward_length")),
        head_dim=0 if head_dim in (0, d_model // n_head) else head_dim,
        rope_theta=float(meta.get(f"{arch}.rope.freq_base", 10000.0)), rope_scaling=scaling,
        rms_eps=float(get("attention.layer_norm_rms_epsilon")),
        tie_weights=False,  # decided by the tensors: no output.weight means a tied head
    )


def supported_types() -> list[str]:
    import gguf

    return ["F32", "F16"] + sorted(t.name for t in gguf.quants._type_traits)


def _dequantize(t, where: str) -> torch.Tensor:
    import gguf

    try:
        arr = gguf.quants.dequantize(t.data, t.tensor_type)
    except NotImplementedError:
        raise PretrainedError(f"{where}: tensor {t.name} uses quantization {t.tensor_type.name}, "
                              f"which cannot be read; supported: {', '.join(supported_types())}") from None
    shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists dimensions fastest first
    # a copy: unquantized tensors come back as read-only views of the memory-mapped file
    return torch.from_numpy(np.array(arr, dtype=np.float32).reshape(shape))


def load_gguf(path: str | Path):
    """-> (LlamaConfig, genforge state dict (float32), tokenizers.Tokenizer, tokenizer_config)."""
    where = str(path)
    reader, meta = read(path)
    arch, cfg = config_from_gguf(meta, where)
    tensors = {hf_name(t.name): t for t in reader.tensors}
    if "rope_freqs.weight" in tensors:
        raise PretrainedError(f"{where}: per-frequency rope factors (rope_freqs, Llama 3.1 "
                              "scaling) are not supported; import the Hugging Face folder instead")
    cfg.tie_weights = "lm_head.weight" not in tensors
    cfg.attn_bias = "model.layers.0.self_attn.q_proj.bias" in tensors
    cfg.attn_out_bias = "model.layers.0.self_attn.o_proj.bias" in tensors
    cfg.mlp_bias = "model.layers.0.mlp.gate_proj.bias" in tensors
    for t in tensors.values():  # fail on the quantization before spending time on any tensor
        if t.tensor_type.name not in supported_types():
            raise PretrainedError(f"{where}: tensor {t.name} uses quantization {t.tensor_type.name}, "
                                  f"which cannot be read; supported: {', '.join(supported_types())}")

    def get(name: str) -> torch.Tensor:
        w = _dequantize(tensors[name], where)
        if arch in PERMUTED_QK and ".self_attn.q_proj." in name:
            w = unpermute(w, cfg.n_head)
        elif arch in PERMUTED_QK and ".self_attn.k_proj." in name:
            w = unpermute(w, cfg.n_kv_head)
        return w

    state = state_from_hf(set(tensors), get, cfg, where)
    tok, tok_config = tokenizer_from_gguf(meta, where)
    return cfg, state, tok, tok_config
