"""Recipe: word vectors by word2vec (skip-gram with negative sampling, or CBOW) on any text.

Default corpus: the English captions of Multi30k (train) and the rt-polarity sentences; or
`data=path/to/file.txt` (one sentence per line), a CSV/TSV/JSONL file (its text column), and
several joined with `+` (`data=multi30k+my.txt`). Sentences are shuffled by `split_seed` and
the last `val_fraction` (validation) and the `test_fraction` before them (test) are held
out: their loss is the negative-sampling loss on their pairs (fixed noise words). Words are tokenised as text-classify's word
vocabulary does (genforge/data/vocab.py), so `text-classify --set init_embeddings=RUN` finds
the same words. `genforge eval RUN` prints the nearest neighbours of `probe_words`;
`genforge embed RUN word ...` gives a word's vector (a text: the mean of its words' vectors).
"""
from __future__ import annotations

import functools
import gzip
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from genforge.config import ConfigError, TrainConfig
from genforge.data.batching import ShuffledBatches, sequential_batches
from genforge.data.vocab import Vocab, tokenize
from genforge.models import word2vec as W

MODELS = {"word2vec": (W.Word2VecConfig, W.Word2Vec)}

TASK = "embedding"  # `genforge embed`, POST /v1/embeddings: word (or mean-of-words) vectors


@dataclass
class Config(TrainConfig):
    model: str = "word2vec"
    data: str = "multi30k+rt-polarity"  # named corpora and/or files, joined by +
    data_dir: str = ""
    text_column: str = "text"  # CSV/TSV/JSONL files: the column holding the text
    label_column: str = "label"
    min_freq: int = 3  # rarer words are left out (word2vec's min_count)
    max_vocab: int = 0  # at most this many entries (0 = no limit)
    val_fraction: float = 0.05
    test_fraction: float = 0.05  # held out before the validation sentences (`genforge eval`)
    split_seed: int = 0
    probe_words: str = "good,bad,funny,movie,dog,man,red,water"  # nearest neighbours in eval
    batch_size: int = 1024
    epochs: float = 2.0
    lr: float = 3e-3
    schedule: str = "constant"
    metric: str = "val_loss"
    metric_mode: str = "min"
    vocab_size: int = 0  # filled by `build`


PRESETS = {
    "word2vec-captions": ({"epochs": 3, "model.dim": 100},
                          "skip-gram word2vec (negative sampling, subsampling) on Multi30k "
                          "captions + rt-polarity"),
}

TEST_CONFIGS = {
    "skipgram": {"data": "rt-polarity", "max_steps": 3, "batch_size": 64, "eval_batches": 2,
                 "model.dim": 8, "model.window": 2, "min_freq": 5, "val_fraction": 0.02},
    "cbow": {"data": "rt-polarity", "max_steps": 3, "batch_size": 64, "eval_batches": 2,
             "model.dim": 8, "model.window": 2, "min_freq": 5, "val_fraction": 0.02,
             "model.cbow": True},
}


# ---------------------------------------------------------------------------------------
# corpus


def _read_source(item: str, cfg_key: tuple) -> list[str]:
    text_column, label_column, data_dir = cfg_key
    if item == "multi30k":
        from genforge.data import registry

        path = registry.find("multi30k", "train.en.gz", data_dir or None)
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return [ln.strip() for ln in f if ln.strip()]
    path = Path(item).expanduser()
    if item == "rt-polarity" or path.suffix.lower() in (".csv", ".tsv", ".jsonl"):
        from genforge.data.tabular_text import load_labelled_text

        return list(load_labelled_text(item, text_column, label_column, data_dir or None).texts)
    if path.is_file():
        return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    raise ConfigError(f"data: {item!r} is neither multi30k, rt-polarity nor an existing file "
                      "(.txt: one sentence per line; .csv/.tsv/.jsonl: its text column); join "
                      "several with +")


@functools.lru_cache(maxsize=4)
def _sentences(data: str, text_column: str, label_column: str, data_dir: str,
               split_seed: int, val_fraction: float, test_fraction: float) -> dict[str, list[str]]:
    texts = [t for item in data.split("+") if item.strip()
             for t in _read_source(item.strip(), (text_column, label_column, data_dir))]
    if len(texts) < 2:
        raise ConfigError(f"data={data!r} holds {len(texts)} sentence(s); word2vec needs a corpus")
    perm = torch.randperm(len(texts), generator=torch.Generator().manual_seed(split_seed)).tolist()
    n_val = max(1, int(len(texts) * val_fraction)) if val_fraction > 0 else 0
    n_test = max(1, int(len(texts) * test_fraction)) if test_fraction > 0 else 0
    if n_val + n_test >= len(texts):
        raise ConfigError(f"val_fraction + test_fraction leave no training sentences of {len(texts)}")
    cut = len(perm) - n_val - n_test
    rows = {"train": perm[:cut], "test": perm[cut: cut + n_test], "val": perm[cut + n_test:]}
    return {k: [texts[i] for i in v] for k, v in rows.items()}


def _data_key(cfg: Config) -> tuple:
    return (cfg.data, cfg.text_column, cfg.label_column, cfg.data_dir, cfg.split_seed,
            cfg.val_fraction, cfg.test_fraction)


_VOCABS: dict[tuple, Vocab] = {}


def vocabulary(cfg: Config, run_dir=None) -> Vocab:
    """RUN/vocab.json when there is one, else built on the training sentences."""
    key = (*_data_key(cfg), cfg.min_freq, cfg.max_vocab)
    path = Path(run_dir) / "vocab.json" if run_dir else None
    if path is not None and path.is_file():
        _VOCABS[key] = Vocab.load(path)
    elif key not in _VOCABS:
        _VOCABS[key] = Vocab.build(_sentences(*_data_key(cfg))["train"], cfg.min_freq, cfg.max_vocab)
    if path is not None and not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        _VOCABS[key].save(path)
    return _VOCABS[key]


@functools.lru_cache(maxsize=8)
def _stream(vocab: Vocab, key: tuple, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(token ids, sentence ids, counts per vocabulary entry) of a split; words outside the
    vocabulary are dropped (word2vec trains on the words it keeps)."""
    ids, sent = [], []
    for i, text in enumerate(_sentences(*key)[split]):
        words = [vocab.stoi[w] for w in tokenize(text) if w in vocab.stoi]
        ids += words
        sent += [i] * len(words)
    tokens = torch.tensor(ids, dtype=torch.long)
    counts = torch.bincount(tokens, minlength=len(vocab)) if len(tokens) else torch.zeros(len(vocab))
    return tokens, torch.tensor(sent, dtype=torch.long), counts


def _counts(cfg: Config) -> torch.Tensor:
    return _stream(vocabulary(cfg), _data_key(cfg), "train")[2]


def examples(cfg: Config, split: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(center, context) of a split: subsampled with the training counts, dynamic windows;
    CBOW: context is (N, 2 * window) padded with 0."""
    mc = cfg.model_cfg
    tokens, sent, _ = _stream(vocabulary(cfg), _data_key(cfg), split)
    gen = torch.Generator().manual_seed(seed)
    kept = W.subsample(tokens, W.keep_probabilities(_counts(cfg), mc.subsample), gen)
    tokens, sent = tokens[kept], sent[kept]
    if mc.cbow:
        return W.cbow_windows(tokens, sent, mc.window, 0, gen)
    return W.skipgram_pairs(tokens, sent, mc.window, gen)


# ---------------------------------------------------------------------------------------
# the contract


def build(cfg: Config, run_dir=None) -> torch.nn.Module:
    vocab = vocabulary(cfg, run_dir)
    if not cfg.vocab_size:
        cfg.vocab_size = len(vocab)
    cfg.model_cfg.vocab_size = cfg.vocab_size
    model = W.Word2Vec(cfg.model_cfg)
    model.vocab = vocab  # a plain attribute: `embed` and `evaluate` look words up in it
    return model


def _noise(cfg: Config) -> torch.Tensor:
    p = W.noise_distribution(_counts(cfg), cfg.model_cfg.noise_power)
    p[:2] = 0  # never draw <pad> or <unk>
    return p / p.sum()


def batches(cfg: Config, split: str, start_step: int = 0, model=None):
    if split not in ("train", "val", "test"):
        raise ConfigError(f"unknown split {split!r}; use train, val or test")
    k, noise = cfg.model_cfg.negatives, _noise(cfg)
    if split == "train":
        center, context = examples(cfg, "train", cfg.seed)
        if not len(center):
            raise ConfigError("no training pairs: the corpus is too small for this min_freq/window")

        def draw(b, gen):
            return (*b, torch.multinomial(noise, len(b[0]) * k, True, generator=gen).view(-1, k))

        return ShuffledBatches((center, context), cfg.batch_size, cfg.seed, start_step, transform=draw)
    center, context = examples(cfg, split, 0)  # fixed pairs and noise: comparable losses
    if not len(center):
        raise ConfigError(f"the {split} sentences give no pairs; raise {split}_fraction")
    gen = torch.Generator().manual_seed(0)
    neg = torch.multinomial(noise, max(len(center), 1) * k, True, generator=gen).view(-1, k)[: len(center)]
    return sequential_batches((center, context, neg), cfg.batch_size, cfg.eval_batches)


def loss(model, batch) -> dict:
    center, context, noise = batch
    return {"loss": model.loss(center, context, noise)}


def neighbours(model, words: list[str], k: int = 5) -> dict[str, list[tuple[str, float]]]:
    """Nearest words by cosine similarity, for the words the vocabulary has."""
    vocab = model.vocab
    known = [w for w in words if w in vocab.stoi]
    if not known:
        return {}
    ids = torch.tensor([vocab.stoi[w] for w in known], device=model.in_emb.weight.device)
    sims, near = model.neighbours(ids, k)
    return {w: [(vocab.itos[int(j)], float(s)) for s, j in zip(srow, nrow)]
            for w, srow, nrow in zip(known, sims.cpu(), near.cpu())}


@torch.no_grad()
def evaluate(model, cfg: Config, split: str = "val") -> dict:
    """Held-out negative-sampling loss, and the probe words' nearest neighbours (`report`,
    printed by `genforge eval`)."""
    device = model.in_emb.weight.device
    total, n = 0.0, 0
    for center, context, noise in batches(cfg, split):
        total += float(model.loss(center.to(device), context.to(device), noise.to(device))) * len(center)
        n += len(center)
    near = neighbours(model, _probes(cfg))
    return {"loss": total / max(n, 1), "vocab_size": len(model.vocab), "neighbours": near,
            "report": _report(cfg, near)}


def _probes(cfg: Config) -> list[str]:
    return [w.strip().lower() for w in cfg.probe_words.split(",") if w.strip()]


def _report(cfg: Config, near: dict) -> str:
    lines = [f"{w:>12}: " + ", ".join(f"{o} {s:.2f}" for o, s in ns) for w, ns in near.items()]
    missing = [w for w in _probes(cfg) if w not in near]
    if missing:
        lines.append(f"(not in the vocabulary: {', '.join(missing)})")
    return "nearest neighbours (cosine):\n" + "\n".join(lines)


def log_samples(model, cfg: Config, run_dir, step: int) -> str:
    return _report(cfg, neighbours(model, _probes(cfg)))


@torch.no_grad()
def embed(model, cfg: Config, inputs: list, batch_size: int = 64) -> dict:
    """Words (or texts: the mean of their words' vectors; or token-id lists) -> vectors.
    Words outside the vocabulary contribute nothing; an input with no known word gets a zero
    vector, noted once on stderr."""
    vocab, weight = model.vocab, model.in_emb.weight
    out, n_tokens, unknown = [], 0, []
    for x in inputs:
        if isinstance(x, (list, tuple)):
            if any(not 0 <= int(t) < len(vocab) for t in x):
                raise ConfigError(f"token ids must be in 0..{len(vocab) - 1} for this model")
            ids = [int(t) for t in x]
        else:
            words = tokenize(x)
            ids = [vocab.stoi[w] for w in words if w in vocab.stoi and vocab.stoi[w] > 1]
            if not ids:
                unknown.append(x)
        n_tokens += len(ids)
        out.append(weight[ids].mean(0) if ids else torch.zeros(weight.shape[1], device=weight.device))
    if unknown:
        print(f"note: no word of {', '.join(map(repr, unknown[:5]))} is in the vocabulary "
              "(zero vector)", file=sys.stderr)
    vectors = torch.stack(out).float().cpu() if out else torch.zeros(0, weight.shape[1])
    return {"vectors": vectors, "tokens": n_tokens, "truncated": 0}


# ---------------------------------------------------------------------------------------
# word vectors for other recipes


def init_embeddings(model, vocab, run: str, log=print) -> int:
    """Copy a word-embeddings run's vectors into `model.embed` (an nn.Embedding over the
    word vocabulary `vocab`), row by row for the words both have. The other rows are drawn
    with the copied vectors' variance (Kim 2014 initialises unknown words so) and the
    padding row stays zero. Returns how many words matched."""
    from genforge.train.checkpoint import load_run

    emb = getattr(model, "embed", None)
    if not isinstance(emb, torch.nn.Embedding) or not isinstance(vocab, Vocab):
        raise ConfigError("init_embeddings needs a word-level model (tokenizer=word, model bag, "
                          "cnn, rnn, attention or transformer): word vectors are per word")
    recipe, src_cfg, src = load_run(Path(run))
    if getattr(recipe, "MODELS", {}).keys() != MODELS.keys():
        raise ConfigError(f"init_embeddings={run} is a {src_cfg.model} run, not word-embeddings; "
                          "train one with `genforge train word-embeddings`")
    vectors = src.in_emb.weight.detach().float().cpu()
    if vectors.shape[1] != emb.embedding_dim:
        raise ConfigError(f"init_embeddings={run} has {vectors.shape[1]}-dimensional vectors but "
                          f"model.emb_dim={emb.embedding_dim}; set model.emb_dim={vectors.shape[1]}")
    ours = [i for i, w in enumerate(vocab.itos) if i > 1 and w in src.vocab.stoi]
    theirs = [src.vocab.stoi[vocab.itos[i]] for i in ours]
    with torch.no_grad():
        std = float(vectors[theirs].std()) if len(theirs) > 1 else 0.1
        emb.weight.normal_(0.0, std)
        emb.weight[torch.tensor(ours, dtype=torch.long)] = vectors[torch.tensor(theirs, dtype=torch.long)].to(emb.weight.dtype)
        if emb.padding_idx is not None:
            emb.weight[emb.padding_idx].zero_()
    log(f"init_embeddings {run}: {len(ours):,} of {len(vocab) - 2:,} words found "
        f"({100 * len(ours) / max(len(vocab) - 2, 1):.1f}%); the others start random with std {std:.3f}")
    return len(ours)

