"""Recipe: text classification on rt-polarity or your own CSV / TSV / JSONL file.

Encoders: bag of embeddings, sentence CNN, BiRNN, self-attentive pooling, Transformer encoder.

The vocabulary (word-level, or byte-level BPE) is built on the training rows only and saved in
the run as `vocab.json` / `tokenizer.json`; `config.json` holds its size and the class names,
so a run rebuilds with no data present. Splits (seeded by `split_seed`): validation is the last
10% of one permutation of the rows and test the 10% before it, so neither training nor the
choice of `best.safetensors` sees the test rows (80/10/10); or, with `--set fold=3`, fold 3 of a
seeded `n_folds`-fold cross-validation validates and there is no test split (the fold is the
held-out estimate, as Kim 2014 reports it); `bench/bench_text.py` runs the folds.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from genforge.config import ConfigError, TrainConfig
from genforge.data.batching import ShuffledBatches, sequential_batches
from genforge.data.tabular_text import load_labelled_text, split_indices
from genforge.data.vocab import BPEVocab, Vocab
from genforge.evaluate.metrics import evaluate_classifier, top_predictions
from genforge.models.text_encoders import ENCODERS

MODELS = dict(ENCODERS)  # bag | cnn | rnn | attention | transformer


TASK = "text-classification"  # what `genforge serve` offers: POST /v1/classifications


def capabilities(cfg) -> frozenset[str]:
    """What this run can do beyond TASK (values: genforge.recipes.CAPABILITIES)."""
    attention = {"attention": {"attention-pooling"}, "transformer": {"self-attention"}}
    return frozenset({"text-input", *attention.get(cfg.model, ())})


@dataclass
class Config(TrainConfig):
    model: str = "cnn"
    data: str = "rt-polarity"  # rt-polarity | path/to/file.{csv,tsv,jsonl}
    data_dir: str = ""  # extra folder searched first for named datasets
    text_column: str = "text"  # columns of the user's file
    label_column: str = "label"
    tokenizer: str = "word"  # word | bpe
    min_freq: int = 1  # word vocabulary: drop rarer words (they become <unk>)
    max_vocab: int = 0  # word vocabulary: at most this many entries (0 = no limit)
    bpe_vocab: int = 4000  # BPE vocabulary size
    max_len: int = 100  # tokens per text (longer texts are truncated)
    val_fraction: float = 0.1  # fixed seeded split when fold < 0
    # held out for `eval --split test` when fold < 0, carved from the rows before validation
    # (the validation rows stay those of the 90/10 split); 0 = no test split
    test_fraction: float = 0.1
    fold: int = -1  # >= 0: validate on this fold of an n_folds cross-validation
    n_folds: int = 10
    split_seed: int = 0  # the split is independent of the training seed
    train_limit: int = 0  # use only the first N training rows (0 = all)
    batch_size: int = 50
    epochs: float = 10.0
    lr: float = 1e-3
    metric: str = "val_accuracy"
    metric_mode: str = "max"
    # filled from the data by `build`
    classes: list[str] = field(default_factory=list)
    vocab_size: int = 0


PRESETS = {
    "bag-rt-polarity": ({"model": "bag", "epochs": 10, "lr": 3e-3, "model.emb_dim": 64,
                         "model.bigram_buckets": 20000},
                        "mean of word + hashed-bigram embeddings + linear (fastText) on rt-polarity"),
    "cnn-rt-polarity": ({"model": "cnn", "epochs": 10, "model.emb_dim": 128,
                         "model.n_filters": 100, "model.emb_dropout": 0.3,
                         "schedule": "constant"},
                        "Kim 2014 sentence CNN (widths 3,4,5 x 100 maps, random init) on rt-polarity"),
    "lstm-rt-polarity": ({"model": "rnn", "model.cell": "lstm", "epochs": 6,
                          "model.hidden": 128, "model.emb_dim": 128},
                         "bidirectional LSTM over packed sequences on rt-polarity"),
    "attention-rt-polarity": ({"model": "attention", "epochs": 6, "model.hidden": 128},
                              "BiGRU + self-attentive pooling (Lin et al. 2017) on rt-polarity"),
    "transformer-rt-polarity": ({"model": "transformer", "epochs": 8, "lr": 5e-4,
                                 "warmup_steps": 100, "weight_decay": 0.05},
                                "2-layer Transformer encoder with padding masks on rt-polarity"),
}

_TEST = {"data": "rt-polarity", "max_steps": 2, "batch_size": 8, "train_limit": 400,
         "eval_batches": 2, "max_len": 20, "model.emb_dim": 16}
TEST_CONFIGS = {
    "bag": {**_TEST, "model": "bag"},
    "cnn": {**_TEST, "model": "cnn", "model.n_filters": 4},
    "rnn": {**_TEST, "model": "rnn", "model.hidden": 8, "model.cell": "gru"},
    "attention": {**_TEST, "model": "attention", "model.hidden": 8, "model.attn_dim": 8},
    "transformer-bpe": {**_TEST, "model": "transformer", "model.n_head": 2, "tokenizer": "bpe",
                        "bpe_vocab": 300, "model.max_len": 20},
    "cnn-fold": {**_TEST, "model": "cnn", "model.n_filters": 4, "fold": 3},
}


# ---------------------------------------------------------------------------------------
# data


@functools.lru_cache(maxsize=4)
def _dataset(data: str, text_column: str, label_column: str, data_dir: str):
    return load_labelled_text(data, text_column, label_column, data_dir or None)


def _split_rows(cfg: Config) -> dict[str, torch.Tensor]:
    ds = _dataset(cfg.data, cfg.text_column, cfg.label_column, cfg.data_dir)
    train, val = split_indices(len(ds.texts), cfg.split_seed, cfg.val_fraction, cfg.fold,
                               cfg.n_folds)
    rows = {"val": val}
    if cfg.fold < 0 and cfg.test_fraction > 0:
        # rt-polarity has no official test split: carve one that neither training nor the
        # checkpoint selection (on val) sees
        if not 0 < cfg.test_fraction < 1 - cfg.val_fraction:
            raise ConfigError(f"test_fraction={cfg.test_fraction} must be in [0, "
                              f"{1 - cfg.val_fraction:g}) with val_fraction={cfg.val_fraction}")
        n_test = max(1, int(round(len(ds.texts) * cfg.test_fraction)))
        if n_test >= len(train):
            raise ConfigError(f"test_fraction={cfg.test_fraction} leaves no training rows "
                              f"({len(ds.texts)} rows); lower it")
        train, rows["test"] = train[:-n_test], train[-n_test:]
    rows["train"] = train[: cfg.train_limit] if cfg.train_limit else train
    return rows


def _no_test_split(cfg: Config) -> str:
    if cfg.fold >= 0:
        return (f"a cross-validation run (fold={cfg.fold}) has no test split: fold {cfg.fold} is its "
                "held-out estimate and it also chose best.safetensors; evaluate with --split val, "
                "or train with fold=-1 for a held-out test split")
    return ("this run has no test split (test_fraction=0): its validation rows chose "
            "best.safetensors; evaluate with --split val, or train with test_fraction > 0")


def _vocab_key(cfg: Config) -> tuple:
    return (cfg.data, cfg.text_column, cfg.label_column, cfg.data_dir, cfg.split_seed,
            cfg.val_fraction, cfg.test_fraction, cfg.fold, cfg.n_folds, cfg.train_limit, cfg.tokenizer,
            cfg.min_freq, cfg.max_vocab, cfg.bpe_vocab)


_VOCABS: dict[tuple, Vocab | BPEVocab] = {}  # set by `build` (built, or read from the run)


def _vocab_file(cfg: Config) -> str:
    return "tokenizer.json" if cfg.tokenizer == "bpe" else "vocab.json"


def vocabulary(cfg: Config, run_dir=None) -> Vocab | BPEVocab:
    """The run's vocabulary: read from RUN when it has one, else built on the training rows."""
    key = _vocab_key(cfg)
    path = Path(run_dir) / _vocab_file(cfg) if run_dir else None
    if path is not None and path.is_file():
        _VOCABS[key] = (BPEVocab if cfg.tokenizer == "bpe" else Vocab).load(path)
    elif key not in _VOCABS:
        if cfg.tokenizer not in ("word", "bpe"):
            raise ValueError(f"unknown tokenizer {cfg.tokenizer!r}; choose word or bpe")
        ds = _dataset(cfg.data, cfg.text_column, cfg.label_column, cfg.data_dir)
        texts = [ds.texts[i] for i in _split_rows(cfg)["train"].tolist()]
        _VOCABS[key] = (BPEVocab.build(texts, cfg.bpe_vocab) if cfg.tokenizer == "bpe"
                        else Vocab.build(texts, cfg.min_freq, cfg.max_vocab))
    if path is not None and not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        _VOCABS[key].save(path)
    return _VOCABS[key]


def encode_texts(vocab, texts: list[str], max_len: int) -> torch.Tensor:
    """Right-padded (N, T) int64 token ids, T = the longest encoded text (<= max_len)."""
    seqs = [vocab.encode(t, max_len) for t in texts]
    out = torch.zeros(len(seqs), max(map(len, seqs)), dtype=torch.long)  # 0 = <pad>
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s)
    return out


def _trim(tokens: torch.Tensor) -> torch.Tensor:
    """Drop the all-pad columns at the right of a batch (cheaper, same logits)."""
    return tokens[:, : max(1, int((tokens != 0).sum(1).max()))]


def _split_tensors(cfg: Config, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    ds = _dataset(cfg.data, cfg.text_column, cfg.label_column, cfg.data_dir)
    rows = _split_rows(cfg)
    if split == "test" and "test" not in rows:
        raise ConfigError(_no_test_split(cfg))
    if split not in rows:
        raise ValueError(f"unknown split {split!r}; use train, val or test")
    idx = rows[split].tolist()
    vocab = vocabulary(cfg)
    x = encode_texts(vocab, [ds.texts[i] for i in idx], cfg.max_len)
    y = torch.tensor([ds.labels[i] for i in idx], dtype=torch.long)
    return x, y


def build(cfg: Config, run_dir=None) -> torch.nn.Module:
    if not cfg.classes:  # first build (training): class names and vocabulary from the data
        ds = _dataset(cfg.data, cfg.text_column, cfg.label_column, cfg.data_dir)
        cfg.classes = list(ds.class_names)
    if not cfg.vocab_size:
        cfg.vocab_size = len(vocabulary(cfg, run_dir))
    elif run_dir is not None:
        vocabulary(cfg, run_dir)  # a saved run: read its vocabulary back
    mc = cfg.model_cfg
    mc.vocab_size, mc.n_classes, mc.pad_id = cfg.vocab_size, len(cfg.classes), 0
    return MODELS[cfg.model][1](mc)


def batches(cfg: Config, split: str, start_step: int = 0, model=None):
    x, y = _split_tensors(cfg, split)
    if split != "train":
        return ((_trim(xb), yb) for xb, yb in sequential_batches((x, y), cfg.batch_size,
                                                                  cfg.eval_batches))
    return ShuffledBatches((x, y), cfg.batch_size, cfg.seed, start_step,
                           transform=lambda b, gen: (_trim(b[0]), b[1]))


def loss(model, batch) -> dict:
    x, y = batch
    logits = model(x)
    out = {"loss": F.cross_entropy(logits, y), "accuracy": (logits.argmax(-1) == y).float().mean()}
    if getattr(model.cfg, "penalty", 0.0) > 0:  # self-attention's hop-diversity penalty
        out["loss"] = out["loss"] + model.cfg.penalty * model.last_penalty
    return out


def evaluate(model, cfg: Config, split: str = "val") -> dict:
    return evaluate_classifier(model, batches(cfg, split), len(cfg.classes))


@torch.no_grad()
def classify(model, cfg: Config, texts: list[str], top: int = 3) -> list[dict]:
    """Texts -> [{input, label, probability, top: [(label, p), ...]}] (never reads files)."""
    x = encode_texts(vocabulary(cfg), list(texts), cfg.max_len).to(next(model.parameters()).device)
    return top_predictions(model(x).float().softmax(-1), cfg.classes, list(texts), top)


def predict(model, cfg: Config, inputs: list[str], top: int = 3) -> list[dict]:
    """Each input is the text itself, or a path to a .txt file holding one text."""
    texts = [Path(t).read_text() if t.endswith(".txt") and Path(t).is_file() else t for t in inputs]
    out = classify(model, cfg, texts, top)
    for r, given in zip(out, inputs):
        r["input"] = given
    return out
