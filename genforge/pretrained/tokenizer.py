"""A GGUF file's vocabulary -> a Hugging Face `tokenizers` byte-level BPE tokenizer.

A GGUF carries no tokenizer.json, only llama.cpp's description of one: the tokens (already
spelled in GPT-2's byte alphabet for byte-level BPE, `tokenizer.ggml.model == "gpt2"`), the
merges in priority order, a type per token (1 normal, 3 control, 4 user-defined), the
special token ids, and the name of the pre-tokenizer split (`tokenizer.ggml.pre`). This
rebuilds the same tokenizer (same ids as llama.cpp and transformers) and writes it as an
ordinary tokenizer.json, so runs need no GGUF code to read their tokenizer back.
"""
from __future__ import annotations

from genforge.pretrained.convert import PretrainedError

CONTROL, USER_DEFINED = 3, 4

# llama.cpp's pre-tokenizer splits by `tokenizer.ggml.pre` name: how the text was cut into
# words before the merges were learned. A name not listed uses GPT-2's split (ByteLevel's
# own regex), as llama.cpp and transformers do.
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLITS = {"llama3": _LLAMA3, "llama-v3": _LLAMA3, "llama-bpe": _LLAMA3, "smaug-bpe": _LLAMA3,
          "qwen2": _QWEN2, "deepseek-r1-qwen": _QWEN2}


def tokenizer_from_gguf(meta: dict, where: str):
    """(tokenizers.Tokenizer, tokenizer_config dict) from the GGUF metadata `meta`
    (key -> python value, the `tokenizer.*` keys)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise PretrainedError(f"{where}: tokenizer type {kind!r} is not supported; supported: "
                              "'gpt2' (byte-level BPE: Llama 3, Qwen2, SmolLM, Mistral Nemo)")
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise PretrainedError(f"{where}: the vocabulary repeats tokens; the file is damaged")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    split = SPLITS.get(meta.get("tokenizer.ggml.pre", ""))
    if split is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    # control tokens (<|im_start|>, <|endoftext|>) match whole and are special (dropped when
    # decoding); user-defined ones (e.g. <think>) match whole but are ordinary text
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, ty in zip(tokens, types) if ty == USER_DEFINED])

    def special(key: str) -> str | None:
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    bos, eos = special("bos"), special("eos")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    single = ([f"{bos}:0"] if add_bos and bos else []) + ["$A:0"] + ([f"{eos}:0"] if add_eos and eos else [])
    pair = single + [s.replace("$A", "$B").replace(":0", ":1") for s in single]
    used = {t for t in (bos if add_bos else None, eos if add_eos else None) if t}
    tok.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(t, vocab[t]) for t in sorted(used)])
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos, "eos_token": eos, "unk_token": special("unknown"),
        "pad_token": special("padding"), "add_bos_token": add_bos, "add_eos_token": add_eos,
        "chat_template": meta.get("tokenizer.chat_template"),
    }
    return tok, config
