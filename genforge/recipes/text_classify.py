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
from typing import Annotated
from pathlib import Path

import torch
import torch.nn.functional as F

from genforge.config import ConfigError, TrainConfig
from genforge.data.batching import ShuffledBatches, sequential_batches
from genforge.data.tabular_text import load_labelled_text, split_indices
from genforge.data.vocab import BPEVocab, Vocab
from genforge.evaluate.metrics import evaluate_classifier, top_predictions
from genforge.models.text_encoders import ENCODERS, BertClassifier, BertTextConfig

# bag | cnn | rnn | attention | transformer | bert (a BERT encoder, usually pretrained: init_from)
MODELS = {**ENCODERS, "bert": (BertTextConfig, BertClassifier)}


TASK = "text-classification"  # what `genforge serve` offers: POST /v1/classifications
# runs saved before test_fraction existed had no test split (their "test" was the validation
# rows/tail): reading their config.json with today's default would call training data "test"
SAVED_BEFORE = {"test_fraction": 0.0}


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
    # word | bpe | pretrained (model=bert with init_from: the source run's WordPiece tokenizer)
    tokenizer: str = "word"
    min_freq: Annotated[int, "[1, inf)"] = 1  # word vocabulary: drop rarer words (they become <unk>)
    max_vocab: Annotated[int, "[0, inf)"] = 0  # word vocabulary: at most this many entries (0 = no limit)
    bpe_vocab: Annotated[int, "[1, inf)"] = 4000  # BPE vocabulary size
    max_len: Annotated[int, "[1, inf)"] = 100  # tokens per text (longer texts are truncated)
    val_fraction: Annotated[float, "[0, 1)"] = 0.1  # fixed seeded split when fold < 0
    # held out for `eval --split test` when fold < 0, carved from the rows before validation
    # (the validation rows stay those of the 90/10 split); 0 = no test split
    test_fraction: Annotated[float, "[0, 1)"] = 0.1
    fold: Annotated[int, "[-1, inf)"] = -1  # >= 0: validate on this fold of an n_folds cross-validation
    n_folds: Annotated[int, "[2, inf)"] = 10
    split_seed: Annotated[int, "[0, inf)"] = 0  # the split is independent of the training seed
    train_limit: Annotated[int, "[0, inf)"] = 0  # use only the first N training rows (0 = all)
    batch_size: int = 50
    # training batches of similar-length texts: each run of this many batches is sorted by
    # length before it is cut (less padding, faster steps; 0 = plain shuffled batches)
    group_by_length: Annotated[int, "[0, inf)"] = 0
    epochs: float = 10.0
    lr: float = 1e-3
    metric: str = "val_accuracy"
    metric_mode: str = "max"
    # filled from the data by `build`
    classes: list[str] = field(default_factory=list)
    vocab_size: Annotated[int, "[0, inf)"] = 0
    # a word-embeddings run whose vectors initialise a word-level model's embedding (Kim
    # 2014's CNN-non-static; add freeze=embed for CNN-static)
    init_embeddings: str = ""


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
                                 "warmup_ratio": 0.065, "weight_decay": 0.05},
                                "2-layer Transformer encoder with padding masks on rt-polarity"),
    "minilm-rt-polarity": ({"model": "bert", "init_from": "minilm", "max_len": 64, "epochs": 2,
                            "batch_size": 32, "lr": 4e-5, "warmup_ratio": 0.1, "weight_decay": 0.01,
                            "group_by_length": 16, "eval_every": 100, "eval_batches": 0},
                           "all-MiniLM-L6-v2 fine-tuned end to end on rt-polarity (Devlin et al. "
                           "2019's recipe: small lr, warmup, 2 epochs; length-grouped batches)"),
    "minilm-probe-rt-polarity": ({"model": "bert", "init_from": "minilm", "freeze": "bert",
                                  "model.dropout": 0.0, "max_len": 64, "epochs": 3,
                                  "batch_size": 64, "lr": 3e-3, "schedule": "constant",
                                  "eval_every": 100, "eval_batches": 0},
                                 "linear probe: a linear head on frozen all-MiniLM-L6-v2 "
                                 "sentence vectors on rt-polarity"),
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
    "bert-bpe": {**{k: v for k, v in _TEST.items() if k != "model.emb_dim"}, "model": "bert",
                 "tokenizer": "bpe", "bpe_vocab": 300, "model.n_layer": 1, "model.n_head": 2,
                 "model.d_model": 16, "model.intermediate": 32, "model.max_len": 20},
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


def data_summary(cfg: Config) -> list[str]:
    """What training reads, printed before it starts: rows per split, classes with their
    training counts."""
    ds = _dataset(cfg.data, cfg.text_column, cfg.label_column, cfg.data_dir)
    rows = _split_rows(cfg)
    labels = torch.as_tensor(ds.labels)
    counts = torch.bincount(labels[rows["train"]], minlength=len(ds.class_names)).tolist()
    per_class = ", ".join(f"{c} {n:,}" for c, n in list(zip(ds.class_names, counts))[:20])
    more = f", ... ({len(ds.class_names)} classes)" if len(ds.class_names) > 20 else ""
    return [f"{cfg.data}: {len(ds.texts):,} rows -> "
            + ", ".join(f"{k} {len(v):,}" for k, v in rows.items()),
            f"{len(ds.class_names)} classes, training rows per class: {per_class}{more}"]


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


class WordPieceVocab:
    """A pretrained encoder's tokenizer.json, as text-classify's vocabularies: encode gives
    [CLS] text [SEP] (what the encoder was trained on) and truncation keeps the final [SEP]."""

    pad_id = 0

    def __init__(self, text: str):
        from tokenizers import Tokenizer

        self.text = text
        self.tok = Tokenizer.from_str(text)
        self.tok.no_padding()
        self.tok.no_truncation()
        self.sep = self.tok.token_to_id("[SEP]")
        pad = self.tok.token_to_id("[PAD]")
        if pad not in (None, 0):
            raise ConfigError(f"this tokenizer's [PAD] id is {pad}; text-classify pads with 0")

    @classmethod
    def load(cls, path) -> "WordPieceVocab":
        return cls(Path(path).read_text(encoding="utf-8"))

    def save(self, path) -> None:
        Path(path).write_text(self.text, encoding="utf-8")

    def __len__(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, text: str, max_len: int = 0) -> list[int]:
        ids = self.tok.encode(text).ids
        if max_len and len(ids) > max_len:
            ids = ids[: max_len - 1] + ([self.sep] if self.sep is not None else ids[max_len - 1: max_len])
        return ids


VOCAB_CLASSES = {"word": Vocab, "bpe": BPEVocab, "pretrained": WordPieceVocab}
_VOCABS: dict[tuple, Vocab | BPEVocab | WordPieceVocab] = {}  # set by `build` (built, or read from the run)


def _vocab_file(cfg: Config) -> str:
    return "vocab.json" if cfg.tokenizer == "word" else "tokenizer.json"


def _source_run(cfg: Config) -> Path | None:
    """The run a `model=bert` classifier starts from (init_from; a packaged model's name is
    imported once), whose architecture and tokenizer it adopts, as language-model does."""
    if cfg.model != "bert" or not cfg.init_from:
        return None
    from genforge.pretrained.sources import resolve

    return resolve(cfg.init_from)


def _adopt_source(cfg: Config) -> None:
    """A new model=bert classifier from a BERT run (text-embed, or another classifier)
    takes that encoder's architecture and tokenizer; dropout and the head stay ours."""
    if cfg.model != "bert" or not cfg.init_from:
        return
    from genforge.pretrained.sources import bert_source

    if (found := bert_source(cfg.init_from, cfg.model_cfg, keep=("dropout", "normalize"))) is None:
        return
    cfg.tokenizer = found[1].tokenizer
    cfg.vocab_size = 0


def vocabulary(cfg: Config, run_dir=None) -> Vocab | BPEVocab | WordPieceVocab:
    """The run's vocabulary: read from RUN when it has one, else init_from's tokenizer
    (model=bert), else built on the training rows."""
    if cfg.tokenizer not in VOCAB_CLASSES:
        raise ConfigError(f"unknown tokenizer {cfg.tokenizer!r}; choose word, bpe or pretrained")
    key = (*_vocab_key(cfg), cfg.init_from if cfg.model == "bert" else "")
    path = Path(run_dir) / _vocab_file(cfg) if run_dir else None
    if path is not None and path.is_file():
        _VOCABS[key] = VOCAB_CLASSES[cfg.tokenizer].load(path)
    elif key in _VOCABS:
        pass
    elif cfg.tokenizer != "word" and (src := _source_run(cfg)) and (src / "tokenizer.json").is_file():
        _VOCABS[key] = VOCAB_CLASSES[cfg.tokenizer].load(src / "tokenizer.json")
    elif cfg.tokenizer == "pretrained":
        raise ConfigError("tokenizer=pretrained is the tokenizer of a pretrained encoder: train "
                          "model=bert with init_from=RUN (e.g. init_from=minilm)")
    else:
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
    fresh = not cfg.classes
    if fresh:  # first build (training): class names and vocabulary from the data
        if cfg.model == "bert" and cfg.init_from:
            _adopt_source(cfg)
        ds = _dataset(cfg.data, cfg.text_column, cfg.label_column, cfg.data_dir)
        cfg.classes = list(ds.class_names)
    if not cfg.vocab_size:
        cfg.vocab_size = len(vocabulary(cfg, run_dir))
    elif run_dir is not None:
        vocabulary(cfg, run_dir)  # a saved run: read its vocabulary back
    mc = cfg.model_cfg
    mc.n_classes, mc.pad_id = len(cfg.classes), 0
    if cfg.model == "bert" and cfg.tokenizer == "pretrained":
        # an imported checkpoint's embedding may be padded past its tokenizer
        if cfg.vocab_size > mc.vocab_size:
            raise ConfigError(f"the tokenizer has {cfg.vocab_size} tokens but the encoder only "
                              f"{mc.vocab_size} embeddings")
    else:
        mc.vocab_size = cfg.vocab_size
    if cfg.model == "bert" and cfg.max_len > mc.max_len:
        raise ConfigError(f"max_len={cfg.max_len} is longer than the encoder's {mc.max_len} "
                          f"positions; set max_len <= {mc.max_len}")
    model = MODELS[cfg.model][1](mc)
    if cfg.init_embeddings and fresh:
        from genforge.recipes.word_embeddings import init_embeddings

        init_embeddings(model, vocabulary(cfg), cfg.init_embeddings)
    return model


def batches(cfg: Config, split: str, start_step: int = 0, model=None):
    x, y = _split_tensors(cfg, split)
    if split != "train":
        return ((_trim(xb), yb) for xb, yb in sequential_batches((x, y), cfg.batch_size,
                                                                  cfg.eval_batches))
    return ShuffledBatches((x, y), cfg.batch_size, cfg.seed, start_step,
                           transform=lambda b, gen: (_trim(b[0]), b[1]),
                           lengths=(x != 0).sum(1) if cfg.group_by_length else None,
                           window=cfg.group_by_length)


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
