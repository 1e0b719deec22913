"""Recipe: translation with sequence-to-sequence models (GRU + additive attention, Transformer).

Train: `genforge train transformer-multi30k` (German -> English Multi30k), or
`genforge train seq2seq --set data=pairs.tsv` / `--set data=train.de,train.en`.
Translate: `genforge generate RUN --prompt "Ein Mann fährt Fahrrad." --beams 5`.
Score: `genforge eval RUN --split test --beams 5` (sacrebleu BLEU and chrF on detokenised
text; the hypotheses are written to RUN/hypotheses_<split>.txt).

Byte-level BPE tokenizers are trained on the training pairs only (one joint vocabulary, or
one per side) and saved as RUN/tokenizer.src.json and RUN/tokenizer.tgt.json.

Longer than the usual ~400 lines: two model families share its data path (parallel
text, tokenizers, token-budget batches), evaluation (BLEU/chrF) and the CLI/server hooks.
"""
from __future__ import annotations

import functools
import math
import sys
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch
import torch.nn.functional as F

from genforge.config import ConfigError, TrainConfig
from genforge.data import parallel as P
from genforge.data.registry import DataError
from genforge.data.tokenizers import load_tokenizer
from genforge.generate.beam import DecodeConfig, decode
from genforge.models.seq2seq import (GRUSeq2Seq, GRUSeq2SeqConfig, TransformerSeq2Seq,
                                     TransformerSeq2SeqConfig, smoothed_loss)

MODELS = {
    "transformer": (TransformerSeq2SeqConfig, TransformerSeq2Seq),
    "gru-attention": (GRUSeq2SeqConfig, GRUSeq2Seq),
}

# served through /v1/completions and chat like a language model; the `translation`
# capability tells the server the prompt is a source sentence to translate
TASK = "text-generation"


def capabilities(cfg) -> frozenset[str]:
    return frozenset({"translation"})


@dataclass
class Config(TrainConfig):
    model: str = "transformer"
    # multi30k | pairs.tsv (source<TAB>target lines) | SOURCE,TARGET (two line-aligned files)
    data: str = "multi30k"
    data_dir: str = ""  # extra folder searched first for named datasets
    src: str = "de"  # multi30k source language: en, de or fr
    tgt: str = "en"  # multi30k target language: en, de or fr
    # your own pairs come without splits: these fixed-seed fractions are held out
    val_fraction: Annotated[float, "[0, 1)"] = 0.05
    test_fraction: Annotated[float, "[0, 1)"] = 0.05
    max_train_pairs: Annotated[int, "[0, inf)"] = 0  # use only the first N training pairs; 0 = all
    bpe_vocab: Annotated[int, "[259, inf)"] = 8000  # BPE vocabulary size (per side when not joint)
    joint_bpe: bool = True  # one vocabulary for both languages (needed by model.share_embeddings)
    # tokens per training batch, padding included (pairs of similar length are batched
    # together); batch_size is not used
    batch_tokens: Annotated[int, "[1, inf)"] = 4096
    beams: Annotated[int, "[1, inf)"] = 5  # default beam size of generate, serve and eval
    eval_beams: Annotated[int, "[1, inf)"] = 1  # beam size of the BLEU at each evaluation in training
    # sentences translated for val BLEU at each evaluation in training (`genforge eval`
    # translates the whole split); 0 = all
    eval_sentences: Annotated[int, "[0, inf)"] = 300
    length_penalty: Annotated[float, "[0, inf)"] = 0.6  # GNMT alpha of beam search
    max_len_a: Annotated[float, "[0, inf)"] = 1.5  # output limit: a * source tokens + b
    max_len_b: Annotated[int, "[1, inf)"] = 10
    max_steps: int = 3000
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_steps: int = 300
    betas: tuple[float, float] = (0.9, 0.98)  # Vaswani et al. 2017
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_every: int = 500
    eval_batches: int = 0  # loss batches per evaluation; 0 = the whole validation split
    log_every: int = 50
    metric: str = "val_bleu"
    metric_mode: str = "max"


# Both sized for <= 60 minutes of training on 2 CPU cores (max_minutes stops the run and
# bends the cosine schedule to the budget): a 4k joint vocabulary, since the output softmax
# is a large share of each step at this width (8k: ~1.7x the step time of 4k, measured);
# `bench/bench_seq2seq.py` trains and scores them.
PRESETS = {
    "transformer-multi30k": (
        {"model": "transformer", "data": "multi30k", "src": "de", "tgt": "en", "bpe_vocab": 4000,
         "joint_bpe": True, "batch_tokens": 3000, "max_steps": 20000, "max_minutes": 60,
         "lr": 1e-3, "min_lr": 1e-5, "warmup_steps": 300, "eval_every": 500,
         "eval_sentences": 200, "model.d_model": 256, "model.n_head": 4, "model.n_enc_layer": 3,
         "model.n_dec_layer": 3, "model.d_ff": 512, "model.dropout": 0.1,
         "model.label_smoothing": 0.1, "model.share_embeddings": True},
        "Transformer encoder-decoder (3+3 layers, 256 wide, joint 4k BPE) de->en Multi30k, 60 min on 2 CPU cores"),
    "gru-attention-multi30k": (
        {"model": "gru-attention", "data": "multi30k", "src": "de", "tgt": "en", "bpe_vocab": 4000,
         "joint_bpe": True, "batch_tokens": 3000, "max_steps": 20000, "max_minutes": 60,
         "lr": 2e-3, "min_lr": 2e-5, "warmup_steps": 200, "eval_every": 500,
         "eval_sentences": 200, "model.embed_size": 256, "model.hidden_size": 256,
         "model.attn_size": 256, "model.dropout": 0.2, "model.label_smoothing": 0.1,
         "model.share_embeddings": True},
        "bidirectional GRU + Bahdanau attention (256 wide, joint 4k BPE) de->en Multi30k, 60 min on 2 CPU cores"),
}

_TEST_COMMON = {"data": "multi30k", "max_train_pairs": 300, "bpe_vocab": 400, "batch_tokens": 400,
                "max_steps": 2, "eval_batches": 1, "eval_sentences": 4, "warmup_steps": 0,
                "beams": 2, "max_len_b": 4, "max_len_a": 0.5}
TEST_CONFIGS = {
    "transformer": {**_TEST_COMMON, "model": "transformer", "model.d_model": 16, "model.n_head": 2,
                    "model.n_enc_layer": 1, "model.n_dec_layer": 1, "model.d_ff": 32,
                    "model.share_embeddings": True},
    "gru-attention-separate": {**_TEST_COMMON, "model": "gru-attention", "joint_bpe": False,
                               "model.embed_size": 8, "model.hidden_size": 12, "model.attn_size": 8},
}
TEST_SAMPLE = {"prompt": "Ein Mann fährt Fahrrad."}


# ---------------------------------------------------------------------------------------
# data


def _user_data(cfg: Config) -> bool:
    return cfg.data != "multi30k"


@functools.lru_cache(maxsize=8)
def _load(data: str, data_dir: str, src: str, tgt: str, split: str, val_fraction: float,
          test_fraction: float, max_train_pairs: int) -> P.ParallelText:
    if data == "multi30k":
        out = P.load_multi30k(split, src, tgt, data_dir or None)
    else:
        if val_fraction <= 0 or val_fraction + test_fraction >= 1:
            raise DataError(f"val_fraction={val_fraction}, test_fraction={test_fraction}: your pairs "
                            "have no validation split, so val_fraction must be > 0 and the two "
                            "fractions below 1 together")
        out = P.split_pairs(P.load_user_pairs(data), split, val_fraction, test_fraction)
        if split == "test" and not out.src:
            raise DataError("this run holds out no test pairs (test_fraction=0); use --split val")
    if split == "train" and max_train_pairs:
        out = P.ParallelText(out.src[:max_train_pairs], out.tgt[:max_train_pairs], out.skipped,
                             out.origin, out.notes)
    if not out.src:
        raise DataError(f"{out.origin}: no sentence pairs left to use")
    return out


def pairs(cfg: Config, split: str) -> P.ParallelText:
    if split not in ("train", "val", "test"):
        raise ValueError(f"unknown split {split!r}; use train, val or test")
    if cfg.data == "multi30k":
        P.check_langs(cfg.src, cfg.tgt)
    return _load(cfg.data, cfg.data_dir, cfg.src, cfg.tgt, split, cfg.val_fraction,
                 cfg.test_fraction, cfg.max_train_pairs)


TOKENIZER_FILES = ("tokenizer.src.json", "tokenizer.tgt.json")
_TOKENIZERS: dict[tuple, tuple] = {}
_BUILT: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _tok_key(cfg: Config) -> tuple:
    return (cfg.data, cfg.data_dir, cfg.src, cfg.tgt, cfg.val_fraction, cfg.test_fraction,
            cfg.max_train_pairs, cfg.bpe_vocab, cfg.joint_bpe)


def tokenizers(cfg: Config, run_dir=None, model=None) -> tuple:
    """(source, target) tokenizers: the run's saved ones, else trained on the training pairs."""
    if model is not None and getattr(model, "_orig_mod", model) in _BUILT:
        return _BUILT[getattr(model, "_orig_mod", model)]
    if run_dir is not None and all((Path(run_dir) / n).is_file() for n in TOKENIZER_FILES):
        return tuple(load_tokenizer(Path(run_dir) / n) for n in TOKENIZER_FILES)
    key = _tok_key(cfg)
    if key not in _TOKENIZERS:
        train = pairs(cfg, "train")
        if cfg.joint_bpe:
            tok = P.train_bpe(train.src + train.tgt, cfg.bpe_vocab)
            _TOKENIZERS[key] = (tok, tok)
        else:
            _TOKENIZERS[key] = (P.train_bpe(train.src, cfg.bpe_vocab), P.train_bpe(train.tgt, cfg.bpe_vocab))
    toks = _TOKENIZERS[key]
    if run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        for tok, name in zip(toks, TOKENIZER_FILES):
            if not (Path(run_dir) / name).is_file():
                tmp = Path(run_dir) / f".{name}.tmp"
                tok.save(tmp)
                tmp.replace(Path(run_dir) / name)
    return toks


def tokenizer(cfg: Config, run_dir=None):
    """The source-side tokenizer: what a prompt (a source sentence) is encoded with."""
    return tokenizers(cfg, run_dir)[0]


@functools.lru_cache(maxsize=8)
def _encoded(src_tok, tgt_tok, key: tuple, split: str, max_len: int) -> tuple:
    """(source ids, target ids, pairs truncated to max_len)."""
    data = _load(*key[:4], split, *key[4:7])
    src, tgt, cut = [], [], 0
    for s, t in zip(data.src, data.tgt):
        a, b = src_tok.encode(s), tgt_tok.encode(t)
        if len(a) > max_len or len(b) > max_len - 1:
            cut += 1
        src.append(a[:max_len])
        tgt.append(b[:max_len - 1])
    return src, tgt, cut


def encoded(cfg: Config, split: str, model=None) -> tuple:
    pairs(cfg, split)  # checks
    s, t = tokenizers(cfg, model=model)
    return _encoded(s, t, _tok_key(cfg)[:7], split, cfg.model_cfg.max_len)


def data_summary(cfg: Config) -> list[str]:
    lines = []
    for split in ("train", "val", "test"):
        try:
            p = pairs(cfg, split)
        except DataError:
            continue
        src, tgt, cut = encoded(cfg, split)
        n_tok = sum(map(len, src)) + sum(map(len, tgt))
        lines.append(f"{p.origin}: {len(p)} pairs, {n_tok} tokens"
                     + (f", {p.skipped} pairs with an empty side skipped" if p.skipped else "")
                     + (f", {cut} longer than max_len={cfg.model_cfg.max_len} truncated" if cut else ""))
    s, t = tokenizers(cfg)
    lines.append(f"{'joint' if cfg.joint_bpe else 'separate'} byte-level BPE: {s.vocab_size}"
                 + ("" if cfg.joint_bpe else f" / {t.vocab_size}") + " tokens, trained on the training pairs")
    return lines


# ---------------------------------------------------------------------------------------
# contract


def build(cfg: Config, run_dir=None) -> torch.nn.Module:
    s, t = tokenizers(cfg, run_dir)
    mc = cfg.model_cfg
    mc.src_vocab, mc.tgt_vocab = s.vocab_size, t.vocab_size
    if mc.share_embeddings and not cfg.joint_bpe:
        raise ConfigError("model.share_embeddings=true needs one vocabulary for both sides: "
                          "set joint_bpe=true (or model.share_embeddings=false)")
    model = MODELS[cfg.model][1](mc)
    _BUILT[model] = (s, t)
    return model


def batches(cfg: Config, split: str, start_step: int = 0, model=None):
    src, tgt, _ = encoded(cfg, split, model)
    if split == "train":
        return P.TokenBudgetBatches(src, tgt, cfg.batch_tokens, cfg.seed, start_step)
    return P.sequential(src, tgt, cfg.batch_tokens)


def loss(model, batch) -> dict:
    # through forward (not model.loss) so that a torch.compile'd model runs compiled
    logits = model(batch["src"], batch["tgt_in"])
    raw = getattr(model, "_orig_mod", model)
    return {"loss": smoothed_loss(logits, batch["tgt_out"], raw.cfg.label_smoothing),
            # source + target tokens, padding excluded (bench/bench_seq2seq.py's tokens/s)
            "tokens": int((batch["src"] != P.PAD).sum() + (batch["tgt_out"] != P.PAD).sum())}


def decode_config(cfg: Config, beams: int | None = None, **kw) -> DecodeConfig:
    dc = DecodeConfig(beams=cfg.beams if beams is None else beams, length_penalty=cfg.length_penalty,
                      max_len_a=cfg.max_len_a, max_len_b=cfg.max_len_b)
    for k, v in kw.items():
        if v is not None:
            setattr(dc, k, v)
    try:
        return dc.check()
    except ValueError as e:
        raise ConfigError(str(e)) from None


def translate(model, cfg: Config, texts: list[str], beams: int | None = None, batch_size: int = 64,
              run_dir=None, **decode_kw) -> list[dict]:
    """One {text, tokens, score, truncated} per source text, in order (batches of similar
    length; `decode_kw`: DecodeConfig fields such as temperature, seed, length_penalty)."""
    dc = decode_config(cfg, beams, **decode_kw)
    src_tok, tgt_tok = tokenizers(cfg, run_dir, model)
    dev = next(model.parameters()).device
    max_len = cfg.model_cfg.max_len
    ids = [src_tok.encode(t) for t in texts]
    truncated = [len(x) > max_len for x in ids]
    ids = [x[:max_len] or [P.EOS] for x in ids]
    gen = torch.Generator(device=dev).manual_seed(dc.seed) if dc.seed is not None else None
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[dict] = [{} for _ in ids]
    was_training = model.training
    model.eval()
    try:
        for a in range(0, len(order), batch_size):
            chunk = order[a:a + batch_size]
            src = P.pad([ids[i] for i in chunk]).to(dev)
            hyps, scores = decode(model, src, dc, gen)
            for i, h, sc in zip(chunk, hyps, scores):
                out[i] = {"text": tgt_tok.decode(h), "tokens": len(h), "score": float(sc),
                          "truncated": truncated[i]}
    finally:
        model.train(was_training)
    return out


def corpus_scores(hyps: list[str], refs: list[str]) -> dict:
    """sacrebleu corpus BLEU and chrF on detokenised text, with their signatures."""
    from sacrebleu.metrics import BLEU, CHRF

    bleu, chrf = BLEU(), CHRF()
    b, c = bleu.corpus_score(hyps, [refs]), chrf.corpus_score(hyps, [refs])
    return {"bleu": b.score, "chrf": c.score, "bleu_signature": str(bleu.get_signature()),
            "chrf_signature": str(chrf.get_signature())}


@torch.no_grad()
def evaluate(model, cfg: Config, split: str = "val", beams: int | None = None) -> dict:
    """Per-token cross-entropy (no label smoothing) and perplexity over the split, and BLEU /
    chrF of its translations (beam `beams`, default eval_beams; during training the first
    eval_sentences, with eval_batches=0, as `genforge eval` sets, the whole split)."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    total, n = 0.0, 0
    for i, b in enumerate(batches(cfg, split, model=model)):
        if cfg.eval_batches and i >= cfg.eval_batches:
            break
        logits = model(b["src"].to(dev), b["tgt_in"].to(dev)).float()
        y = b["tgt_out"].to(dev)
        total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1),
                                 ignore_index=P.PAD, reduction="sum").item()
        n += int((y != P.PAD).sum())
    data = pairs(cfg, split)
    k = len(data.src) if cfg.eval_batches == 0 or cfg.eval_sentences == 0 else cfg.eval_sentences
    beams = cfg.eval_beams if beams is None else beams
    res = translate(model, cfg, data.src[:k], beams=beams)
    model.train(was_training)
    hyps = [r["text"] for r in res]
    mean = total / max(n, 1)
    return {"loss": mean, "perplexity": math.exp(min(mean, 50.0)),
            **corpus_scores(hyps, data.tgt[:k]), "beams": beams, "sentences": k, "hypotheses": hyps}


def sample(model, cfg: Config, prompt: str = "", run_dir=None, **kw) -> str:
    """The translation of `prompt` (a source sentence)."""
    return translate(model, cfg, [prompt], run_dir=run_dir, **kw)[0]["text"]


def log_samples(model, cfg: Config, run_dir, step: int) -> str:
    data = pairs(cfg, "val")
    src, ref = data.src[:3], data.tgt[:3]
    hyps = translate(model, cfg, src, beams=1, run_dir=run_dir)
    text = "\n".join(f"  src: {s}\n  ref: {r}\n  out: {h['text']}" for s, r, h in zip(src, ref, hyps))
    if run_dir is not None:
        outp = Path(run_dir) / "samples" / f"step_{step:07d}.txt"
        outp.parent.mkdir(parents=True, exist_ok=True)
        outp.write_text(text + "\n", encoding="utf-8")
    return f"translations at step {step}:\n{text}\n"


def translate_stream(model, cfg: Config, source: str, temperature: float = 0.0, top_p: float = 1.0,
                     top_k: int = 0, seed: int | None = None, max_tokens: int = 0, stats: dict | None = None):
    """What the server runs for one choice: yields the whole translation once (beam search
    with the run's `beams` at temperature 0, else one sample). `stats` gets
    completion_tokens and finish_reason, as `stream_text` fills them."""
    kw = {"temperature": temperature, "top_p": top_p, "top_k": top_k, "seed": seed}
    if max_tokens:
        kw.update(max_len_a=0.0, max_len_b=max_tokens + 1)  # + 1: the end token is not text
    r = translate(model, cfg, [source], beams=cfg.beams if temperature == 0 else 1, **kw)[0]
    if stats is not None:
        stats["completion_tokens"] = r["tokens"]
        stats["finish_reason"] = "length" if max_tokens and r["tokens"] >= max_tokens else "stop"
    yield r["text"]


def cross_attention(model, cfg: Config, text: str, run_dir=None, beams: int | None = None) -> dict:
    """The translation of `text` and the cross-attention (target tokens x source tokens) the
    model paid while writing it (teacher-forced over its own output; Transformer: last decoder
    layer, mean over heads; GRU: the additive attention's weights)."""
    src_tok, tgt_tok = tokenizers(cfg, run_dir, model)
    r = translate(model, cfg, [text], beams=beams, run_dir=run_dir)[0]
    src_ids = src_tok.encode(text)[: cfg.model_cfg.max_len]
    tgt_ids = tgt_tok.encode(r["text"])
    model.eval()
    with torch.no_grad():
        dev = next(model.parameters()).device
        _, w = model(torch.tensor([src_ids], device=dev), torch.tensor([[P.BOS] + tgt_ids], device=dev),
                     need_weights=True)
    # row i: attention while predicting target token i (the last row predicts the end)
    return {"source_tokens": [src_tok.decode([i]) for i in src_ids],
            "target_tokens": [tgt_tok.decode([i]) for i in tgt_ids] + ["</s>"],
            "weights": w[0].float().cpu(), "translation": r["text"], "truncated": r["truncated"]}


_GENERATE_OPTIONS = ("prompt", "input", "beams", "temperature", "top_k", "top_p", "seed", "out",
                     "max_tokens")


def cli_generate(model, cfg: Config, run_dir, prompt: str | list[str] | None = None,
                 input: Path | None = None, beams: int | None = None, out: Path | None = None,
                 max_tokens: int | None = None, **opts) -> list[str]:
    """`genforge generate RUN --prompt SENTENCE [--prompt ...] | --input FILE [--beams N]
    [--temperature T --top-k K --top-p P --seed S] [--max-tokens N] [--out FILE]`: prints one
    translation per source sentence (--input: one sentence a line; empty lines skipped and
    counted); --out also writes them, one a line."""
    unknown = [k for k in opts if k not in _GENERATE_OPTIONS]
    if unknown:
        raise ConfigError(f"generate: --{unknown[0].replace('_', '-')} does not apply to translation "
                          "runs (they take --prompt, --input, --beams, --temperature, --top-k, "
                          "--top-p, --seed, --max-tokens, --out)")
    if beams is not None and beams < 1:
        raise ConfigError(f"generate: --beams must be >= 1 (1 = greedy), got {beams}")
    texts = [prompt] if isinstance(prompt, str) else list(prompt or [])
    if input is not None:
        if not Path(input).is_file():
            raise ConfigError(f"generate: --input {input} is not a file (one source sentence a line)")
        lines = P._read_lines(Path(input))
        empty = sum(1 for ln in lines if not ln.strip())
        texts += [ln.strip() for ln in lines if ln.strip()]
        if empty:
            print(f"note: skipped {empty} empty lines of {input}", file=sys.stderr)
    if not texts:
        raise ConfigError("generate: give a source sentence with --prompt (repeatable) or --input FILE")
    kw = {k: opts.get(k) for k in ("temperature", "top_k", "top_p", "seed")}
    if max_tokens:
        kw.update(max_len_a=0.0, max_len_b=max_tokens + 1)
    results = translate(model, cfg, texts, beams=beams, run_dir=run_dir, **kw)
    limit = cfg.model_cfg.max_len
    for i, r in enumerate(results):
        if r["truncated"]:
            print(f"note: source {i + 1} is longer than the model's maximum of {limit} tokens; "
                  f"translated its first {limit} tokens", file=sys.stderr)
        print(r["text"])
    hyps = [r["text"] for r in results]
    if out is not None:
        tmp = Path(out).with_name(f".{Path(out).name}.tmp")
        tmp.write_text("\n".join(hyps) + "\n", encoding="utf-8")
        tmp.replace(out)
    return hyps
