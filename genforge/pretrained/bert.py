"""Hugging Face BERT-family folders (BERT, MiniLM, sentence-transformers models) ->
`genforge.models.bert`, every tensor name and shape asserted (as convert.py does for Llama).

A sentence-transformers folder also says how sentences are pooled (modules.json +
1_Pooling/config.json), whether vectors are L2-normalised (a Normalize module) and the
maximum length (sentence_bert_config.json); a plain BERT folder gets mean pooling, no
normalisation, and its position count as the maximum length.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from genforge.models.bert import BertConfig, SentenceEncoder
from genforge.pretrained.convert import PretrainedError

BERT_TYPES = ("bert",)  # Hugging Face `model_type`s with this exact layout


def is_bert_folder(folder: Path) -> bool:
    try:
        d = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return d.get("model_type") in BERT_TYPES


def config_from_hf(d: dict, where: str) -> BertConfig:
    if d.get("model_type") not in BERT_TYPES:
        raise PretrainedError(f"{where}: model_type {d.get('model_type')!r} is not a BERT checkpoint "
                              f"(supported: {', '.join(BERT_TYPES)})")
    act = d.get("hidden_act", "gelu")
    if act != "gelu":
        raise PretrainedError(f"{where}: hidden_act {act!r}; genforge's BERT uses the exact "
                              "(erf) GELU, Hugging Face's 'gelu'")
    if d.get("position_embedding_type", "absolute") != "absolute":
        raise PretrainedError(f"{where}: position_embedding_type "
                              f"{d['position_embedding_type']!r}; only absolute positions are supported")
    return BertConfig(vocab_size=d["vocab_size"], max_len=d.get("max_position_embeddings", 512),
                      type_vocab_size=d.get("type_vocab_size", 2), n_layer=d["num_hidden_layers"],
                      n_head=d["num_attention_heads"], d_model=d["hidden_size"],
                      intermediate=d["intermediate_size"], ln_eps=float(d.get("layer_norm_eps", 1e-12)),
                      dropout=float(d.get("hidden_dropout_prob", 0.1)), pad_id=d.get("pad_token_id") or 0)


def expected_hf_shapes(cfg: BertConfig) -> dict[str, tuple[int, ...]]:
    c, f = cfg.d_model, cfg.intermediate
    shapes = {"embeddings.word_embeddings.weight": (cfg.vocab_size, c),
              "embeddings.position_embeddings.weight": (cfg.max_len, c),
              "embeddings.token_type_embeddings.weight": (cfg.type_vocab_size, c),
              "embeddings.LayerNorm.weight": (c,), "embeddings.LayerNorm.bias": (c,)}
    for i in range(cfg.n_layer):
        p = f"encoder.layer.{i}."
        for x in ("query", "key", "value"):
            shapes.update({p + f"attention.self.{x}.weight": (c, c), p + f"attention.self.{x}.bias": (c,)})
        for lin, shape in (("attention.output.dense", (c, c)), ("intermediate.dense", (f, c)),
                           ("output.dense", (c, f))):
            shapes.update({p + lin + ".weight": shape, p + lin + ".bias": (shape[0],)})
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes.update({p + norm + ".weight": (c,), p + norm + ".bias": (c,)})
    return shapes


def state_from_hf(tensors: dict[str, torch.Tensor], cfg: BertConfig, where: str) -> dict[str, torch.Tensor]:
    """HF BertModel tensors -> SentenceEncoder state dict (q/k/v fused into attn.qkv)."""
    # BertForX checkpoints prefix the encoder with "bert."; their task heads (cls., classifier.)
    # and the pooler (a tanh layer over [CLS], unused by sentence embeddings) are not imported
    if any(n.startswith("bert.") for n in tensors):
        tensors = {n[5:]: t for n, t in tensors.items() if n.startswith("bert.")}
    shapes = expected_hf_shapes(cfg)
    ignored = {n for n in tensors if n.startswith("pooler.") or n.endswith("position_ids")}
    missing = sorted(set(shapes) - set(tensors))
    unexpected = sorted(set(tensors) - set(shapes) - ignored)
    if missing or unexpected:
        raise PretrainedError(f"{where}: tensors do not match a {cfg.n_layer}-layer BERT model "
                              f"(missing: {missing[:5]}, unexpected: {unexpected[:5]})")

    def take(name: str) -> torch.Tensor:
        t = tensors[name]
        if tuple(t.shape) != shapes[name]:
            raise PretrainedError(f"{where}: {name} has shape {tuple(t.shape)}, expected "
                                  f"{shapes[name]} from config.json")
        return t.float()

    e = "embeddings."
    out = {"bert.tok_emb.weight": take(e + "word_embeddings.weight"),
           "bert.pos_emb.weight": take(e + "position_embeddings.weight"),
           "bert.type_emb.weight": take(e + "token_type_embeddings.weight"),
           "bert.emb_norm.weight": take(e + "LayerNorm.weight"),
           "bert.emb_norm.bias": take(e + "LayerNorm.bias")}
    for i in range(cfg.n_layer):
        p, b = f"encoder.layer.{i}.", f"bert.blocks.{i}."
        for kind in ("weight", "bias"):
            out[b + f"attn.qkv.{kind}"] = torch.cat(
                [take(p + f"attention.self.{x}.{kind}") for x in ("query", "key", "value")])
            out[b + f"attn.proj.{kind}"] = take(p + f"attention.output.dense.{kind}")
            out[b + f"attn_norm.{kind}"] = take(p + f"attention.output.LayerNorm.{kind}")
            out[b + f"fc.{kind}"] = take(p + f"intermediate.dense.{kind}")
            out[b + f"proj.{kind}"] = take(p + f"output.dense.{kind}")
            out[b + f"mlp_norm.{kind}"] = take(p + f"output.LayerNorm.{kind}")
    return out


def build_encoder(cfg: BertConfig, state: dict[str, torch.Tensor]) -> SentenceEncoder:
    with torch.device("meta"):
        model = SentenceEncoder(cfg)
    model.load_state_dict(state, strict=True, assign=True)
    return model


def _sentence_transformers_settings(folder: Path, cfg: BertConfig, where: str) -> int:
    """Read pooling / Normalize / max length of a sentence-transformers folder into cfg;
    returns the maximum tokens per text."""
    max_len = cfg.max_len
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        cfg.pooling, cfg.normalize = "mean", False
        return max_len
    modules = json.loads(modules_file.read_text())
    kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
    cfg.normalize = "Normalize" in kinds
    unknown = [k for k in kinds if k not in ("Transformer", "Pooling", "Normalize")]
    if unknown:
        raise PretrainedError(f"{where}/modules.json: sentence-transformers modules {unknown} are not "
                              "supported (supported: Transformer, Pooling, Normalize)")
    cfg.pooling = "mean"
    for m in modules:
        if m.get("type", "").endswith("Pooling"):
            pc = json.loads((folder / m.get("path", "") / "config.json").read_text())
            modes = [k for k, v in pc.items() if k.startswith("pooling_mode") and v]
            if modes == ["pooling_mode_cls_token"]:
                cfg.pooling = "cls"
            elif modes != ["pooling_mode_mean_tokens"]:
                raise PretrainedError(f"{where}: pooling {modes} is not supported (mean tokens or "
                                      "cls token)")
    st = folder / "sentence_bert_config.json"
    if st.is_file():
        max_len = min(max_len, int(json.loads(st.read_text()).get("max_seq_length") or max_len))
    return max_len


def _tokenizer(folder: Path, cfg: BertConfig, where: str):
    """The folder's WordPiece tokenizer (tokenizer.json, else vocab.txt), its own padding and
    truncation removed (genforge pads batches and truncates, with a note, itself)."""
    from tokenizers import Tokenizer
    from tokenizers.implementations import BertWordPieceTokenizer

    if (folder / "tokenizer.json").is_file():
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    elif (folder / "vocab.txt").is_file():
        tc = folder / "tokenizer_config.json"
        lower = json.loads(tc.read_text()).get("do_lower_case", True) if tc.is_file() else True
        tok = BertWordPieceTokenizer(str(folder / "vocab.txt"), lowercase=lower)._tokenizer
    else:
        raise PretrainedError(f"{where} has neither tokenizer.json nor vocab.txt; save the "
                              "tokenizer into the folder (tokenizer.save_pretrained(folder))")
    tok.no_padding()
    tok.no_truncation()
    n = tok.get_vocab_size(with_added_tokens=True)
    own = ("the tokenizer belongs to another model (put the checkpoint's own tokenizer.json / "
           "vocab.txt in the folder)")
    if n > cfg.vocab_size:
        raise PretrainedError(f"{where}: the tokenizer has {n} tokens but the weights embed only "
                              f"{cfg.vocab_size}; {own}")
    # fewer tokens than embedding rows: only as padding of the table to a round size (at most
    # 63 unused rows); more unused rows mean the ids would index another vocabulary's rows
    if cfg.vocab_size - n >= 64:
        raise PretrainedError(f"{where}: the tokenizer has {n} tokens but the weights embed "
                              f"{cfg.vocab_size}; {own}")
    if tok.token_to_id("[CLS]") is None or tok.token_to_id("[SEP]") is None:
        raise PretrainedError(f"{where}: the tokenizer has no [CLS]/[SEP] tokens; not a BERT tokenizer")
    return tok


def load_bert_folder(folder: str | Path):
    """-> (BertConfig, SentenceEncoder state dict, tokenizer.json text, max tokens per text)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    where = str(folder)
    if not (folder / "config.json").is_file():
        raise PretrainedError(f"{where} has no config.json; pass a Hugging Face BERT model folder "
                              "(config.json, model.safetensors, tokenizer.json or vocab.txt)")
    cfg = config_from_hf(json.loads((folder / "config.json").read_text()), f"{where}/config.json")
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise PretrainedError(f"{where} has no *.safetensors weights (pickled .bin weights are not "
                              "read; save them as safetensors)")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        tensors.update(load_file(str(f)))
    state = state_from_hf(tensors, cfg, where)
    max_len = _sentence_transformers_settings(folder, cfg, where)
    tok = _tokenizer(folder, cfg, where)
    return cfg, state, tok.to_str(), max_len


def import_bert(source: str | Path, out: Path, dtype: torch.dtype, log=print) -> Path:
    """A BERT-family folder -> a `text-embed` run (model: bert, tokenizer: pretrained)."""
    from genforge import config as C
    from genforge.pretrained.run import write_run
    from genforge.recipes import get_recipe
    from genforge.train.checkpoint import save_config, save_weights

    cfg, state, tok_json, max_len = load_bert_folder(source)
    model = build_encoder(cfg, state).to(dtype)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{source}: BERT, {cfg.n_layer} layers, d_model {cfg.d_model}, {cfg.n_head} heads, "
        f"vocabulary {cfg.vocab_size}, {cfg.pooling} pooling{', normalised' if cfg.normalize else ''}, "
        f"max length {max_len}, {n_params / 1e6:.1f}M parameters")
    run_cfg = C.make_config(get_recipe("text-embed"),
                            {"model": "bert", "tokenizer": "pretrained", "max_len": max_len})
    run_cfg.model_cfg = cfg
    run_cfg.vocab_size = cfg.vocab_size

    def write(tmp: Path) -> None:
        (tmp / "tokenizer.json").write_text(tok_json, encoding="utf-8")
        save_weights(model, tmp / "model.safetensors")
        (tmp / "source.json").write_text(json.dumps({"source": str(source), "dtype": str(dtype)}) + "\n")
        save_config(tmp, "text-embed", run_cfg)  # last: a folder with config.json is a run

    return write_run(Path(out), write)
