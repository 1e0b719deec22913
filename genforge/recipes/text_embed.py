"""Recipe: sentence embeddings from a BERT-family encoder (TASK "embedding": `genforge embed`,
POST /v1/embeddings).

Mostly used through `genforge import minilm --out runs/minilm` (or any Hugging Face BERT
folder), which writes a run of this recipe with the checkpoint's own WordPiece tokenizer
(`tokenizer: pretrained`). Training here is unsupervised SimCSE (Gao et al. 2021) on any
sentences (rt-polarity by default, or a CSV/TSV/JSONL file): each sentence under two
dropout masks is its own positive, the rest of the batch the negatives; from scratch
(`tokenizer: bpe`, a byte-level BPE built on the training rows) or continuing an imported
run (`init_from=RUN`). The encoder lives under `bert.` in the state dict, as a text-classify
`model=bert` classifier's would, so fine-tuning a classifier starts from these weights.
"""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from genforge.config import ConfigError, TrainConfig
from genforge.data.batching import ShuffledBatches, sequential_batches
from genforge.data.tabular_text import load_labelled_text, split_indices
from genforge.models.bert import BertConfig, SentenceEncoder

MODELS = {"bert": (BertConfig, SentenceEncoder)}

TASK = "embedding"  # what `genforge serve` offers: POST /v1/embeddings


@dataclass
class Config(TrainConfig):
    model: str = "bert"
    data: str = "rt-polarity"  # rt-polarity | path/to/file.{csv,tsv,jsonl} (its text column)
    data_dir: str = ""  # extra folder searched first for named datasets
    text_column: str = "text"
    label_column: str = "label"
    tokenizer: str = "bpe"  # bpe (built on the training rows) | pretrained (an imported run's)
    bpe_vocab: int = 4000  # BPE vocabulary size
    max_len: int = 128  # tokens per text; longer texts are truncated (with a note)
    temperature: float = 0.05  # SimCSE's softmax temperature
    val_fraction: float = 0.1
    split_seed: int = 0
    train_limit: int = 0  # use only the first N training rows (0 = all)
    batch_size: int = 32
    epochs: float = 1.0
    lr: float = 3e-5
    metric: str = "val_loss"
    metric_mode: str = "min"
    vocab_size: int = 0  # filled by `build`


_TEST = {"max_steps": 2, "batch_size": 8, "train_limit": 200, "eval_batches": 2, "max_len": 24,
         "bpe_vocab": 300, "lr": 1e-3, "model.n_layer": 1, "model.n_head": 2, "model.d_model": 16,
         "model.intermediate": 32, "model.max_len": 24}
TEST_CONFIGS = {"bert-bpe": _TEST, "bert-cls": {**_TEST, "model.pooling": "cls"}}


# ---------------------------------------------------------------------------------------
# tokenizers


class PretrainedTokenizer:
    """An imported checkpoint's tokenizer.json ([CLS] text [SEP], as the encoder was trained)."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(path))
        self.cls, self.sep = self.tok.token_to_id("[CLS]"), self.tok.token_to_id("[SEP]")

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def wrap(self, ids: list[int]) -> list[int]:
        return [self.cls, *ids, self.sep]

    def truncate(self, ids: list[int], max_len: int) -> list[int]:
        return ids[: max_len - 1] + [self.sep]  # keep the final [SEP], as transformers does


class BPETokenizer:
    def __init__(self, vocab):
        self.vocab = vocab

    def encode(self, text: str) -> list[int]:
        return self.vocab.encode(text)

    def wrap(self, ids: list[int]) -> list[int]:
        return list(ids)

    def truncate(self, ids: list[int], max_len: int) -> list[int]:
        return ids[:max_len]


@functools.lru_cache(maxsize=4)
def _texts(data: str, text_column: str, label_column: str, data_dir: str) -> list[str]:
    return load_labelled_text(data, text_column, label_column, data_dir or None).texts


def _rows(cfg: Config) -> dict[str, list[str]]:
    texts = _texts(cfg.data, cfg.text_column, cfg.label_column, cfg.data_dir)
    train, val = split_indices(len(texts), cfg.split_seed, cfg.val_fraction)
    train = train[: cfg.train_limit] if cfg.train_limit else train
    return {"train": [texts[i] for i in train.tolist()], "val": [texts[i] for i in val.tolist()]}


def tokenizer(cfg: Config, run_dir=None):
    """The run's tokenizer: tokenizer.json of RUN, else (bpe) one built on the training rows
    (and saved into RUN)."""
    from genforge.data.vocab import BPEVocab

    path = Path(run_dir) / "tokenizer.json" if run_dir else None
    if cfg.tokenizer == "pretrained":
        if path is None or not path.is_file():
            raise ConfigError("tokenizer=pretrained needs an imported run's tokenizer.json; make "
                              "one with `genforge import minilm --out runs/minilm` and pass "
                              "init_from=runs/minilm, or use tokenizer=bpe")
        return PretrainedTokenizer(path)
    if cfg.tokenizer != "bpe":
        raise ConfigError(f"unknown tokenizer {cfg.tokenizer!r}; choose bpe or pretrained")
    if path is not None and path.is_file():
        return BPETokenizer(BPEVocab.load(path))
    vocab = BPEVocab.build(_rows(cfg)["train"], cfg.bpe_vocab)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        vocab.save(path)
    return BPETokenizer(vocab)


def tokenize(tok, cfg: Config, inputs: list, limit: int) -> tuple[list[list[int]], int]:
    """Texts (or lists of token ids) -> token id lists of at most `limit`, and how many
    inputs were truncated to fit."""
    seqs, truncated = [], 0
    for x in inputs:
        ids = tok.wrap(list(x)) if isinstance(x, (list, tuple)) else tok.encode(x)
        if len(ids) > limit:
            ids, truncated = tok.truncate(ids, limit), truncated + 1
        seqs.append(ids or [cfg.model_cfg.pad_id])
    return seqs, truncated


def pad(seqs: list[list[int]], pad_id: int) -> torch.Tensor:
    """Right-padded (N, longest) ids."""
    out = torch.full((len(seqs), max(map(len, seqs))), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s)
    return out


def encode(tok, cfg: Config, inputs: list, limit: int) -> tuple[torch.Tensor, int, int]:
    """Texts (or lists of token ids) -> right-padded (N, T) ids, the token count and how
    many inputs were truncated to `limit` tokens."""
    seqs, truncated = tokenize(tok, cfg, inputs, limit)
    return pad(seqs, cfg.model_cfg.pad_id), sum(map(len, seqs)), truncated


def _limit(cfg: Config) -> int:
    return min(cfg.max_len, cfg.model_cfg.max_len)


# ---------------------------------------------------------------------------------------
# the contract


# `--quantize int8`: each token scaled by its largest magnitude (faster here than the LLMs'
# shifted ranges; the trade-off and its figures: genforge/pretrained/quantize.py)
QUANT_TOKEN_RANGE = "sym"


def quantize_calibration(cfg: Config, run_dir):
    """For `--quantize int8`: one batch of genforge's calibration text, a line per input
    (genforge/pretrained/calibration.py); a vocabulary that cannot spell it calibrates on
    training rows."""
    from genforge.pretrained.calibration import CALIBRATION_TEXT

    tok = tokenizer(cfg, run_dir)
    lines = [ln for ln in CALIBRATION_TEXT.splitlines() if ln.strip()]
    try:
        ids = encode(tok, cfg, lines, _limit(cfg))[0]
    except ValueError:
        ids = encode(tok, cfg, _rows(cfg)["train"][:64], _limit(cfg))[0]

    def run(model):
        with torch.no_grad():
            model(ids.to(next(model.parameters()).device))
    return run


def _adopt_source(cfg: Config, run_dir) -> None:
    """A new run with init_from=RUN (an imported encoder, or a BERT classifier) continues
    that encoder: its architecture (dropout stays ours) and its tokenizer, copied into the
    new run so the run stands alone."""
    import shutil

    from genforge.pretrained.sources import bert_source

    if (found := bert_source(cfg.init_from, cfg.model_cfg)) is None:
        return
    src, theirs = found
    if theirs.tokenizer != "bpe":  # a WordPiece tokenizer (imported), not one built here
        cfg.tokenizer = "pretrained"
    if run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / "tokenizer.json", Path(run_dir) / "tokenizer.json")


def build(cfg: Config, run_dir=None) -> torch.nn.Module:
    if cfg.init_from and not cfg.vocab_size:  # a new run continuing another encoder
        _adopt_source(cfg, run_dir)
    tok = tokenizer(cfg, run_dir)
    if not cfg.vocab_size:
        cfg.vocab_size = len(tok.vocab) if isinstance(tok, BPETokenizer) else tok.tok.get_vocab_size()
    cfg.model_cfg.vocab_size = cfg.vocab_size
    if isinstance(tok, BPETokenizer):
        cfg.model_cfg.pad_id = 0
    model = SentenceEncoder(cfg.model_cfg)
    model.tokenizer = tok  # plain attributes (not state): `embed` encodes with the tokenizer,
    model.temperature = cfg.temperature  # `loss` (which gets no cfg) uses the temperature
    return model


def _batches_of(cfg: Config, split: str, tok) -> tuple[torch.Tensor]:
    ids, _, _ = encode(tok, cfg, _rows(cfg)[split], _limit(cfg))
    return (ids,)


def batches(cfg: Config, split: str, start_step: int = 0, model=None):
    if split not in ("train", "val"):
        raise ConfigError(f"unknown split {split!r}; text-embed runs have train and val")
    tok = model.tokenizer if model is not None else tokenizer(cfg)
    data = _batches_of(cfg, split, tok)
    trim = lambda b: (b[0][:, : max(1, int((b[0] != cfg.model_cfg.pad_id).sum(1).max()))],)  # noqa: E731
    if split != "train":
        return (trim(b) for b in sequential_batches(data, cfg.batch_size, cfg.eval_batches))
    return ShuffledBatches(data, cfg.batch_size, cfg.seed, start_step, transform=lambda b, g: trim(b))


def loss(model, batch) -> dict:
    (tokens,) = batch
    return {"loss": model.loss(tokens, model.temperature)}


@torch.no_grad()
def evaluate(model, cfg: Config, split: str = "val") -> dict:
    """SimCSE loss and the mean cosine similarity of different sentences (lower = the
    vectors spread out, Wang & Isola 2020's uniformity in one number)."""
    was = model.training
    model.train()  # the loss needs dropout: two views of each sentence
    torch.manual_seed(0)
    losses, sims, n = 0.0, 0.0, 0
    for (tokens,) in batches(cfg, split, model=model):
        tokens = tokens.to(next(model.parameters()).device)
        losses += float(model.loss(tokens, cfg.temperature)) * len(tokens)
        model.eval()
        v = torch.nn.functional.normalize(model(tokens), dim=-1)
        model.train()
        s = v @ v.T
        if len(v) > 1:
            sims += float((s.sum() - s.diagonal().sum()) / (len(v) - 1))
        n += len(tokens)
    model.train(was)
    return {"loss": losses / max(n, 1), "mean_cosine": sims / max(n, 1)}


_NOTED: set[int] = set()


@torch.no_grad()
def embed(model, cfg: Config, inputs: list, batch_size: int = 64) -> dict:
    """Texts (or token-id lists) -> {"vectors": (N, D) float32, "tokens": count,
    "truncated": how many inputs were cut to the maximum length}. The first truncation per
    model is noted once on stderr."""
    tok = model.tokenizer
    device = next(model.parameters()).device
    out = []
    vocab = cfg.model_cfg.vocab_size
    for x in inputs:
        if isinstance(x, (list, tuple)) and any(not 0 <= int(t) < vocab for t in x):
            raise ConfigError(f"token ids must be in 0..{vocab - 1} for this model")
    # batch inputs of similar token count together: a batch is padded to its longest member.
    # Sorting by token count, not by characters as sentence-transformers does, matters: on
    # 512 rt-polarity sentences 29% of the character-sorted batches' positions were padding
    seqs, n_cut = tokenize(tok, cfg, inputs, _limit(cfg))
    n_tokens = sum(map(len, seqs))
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]), reverse=True)
    with torch.inference_mode():
        for i in range(0, len(order), batch_size):
            ids = pad([seqs[j] for j in order[i: i + batch_size]], cfg.model_cfg.pad_id)
            out.append(model(ids.to(device)).float().cpu())
    if n_cut and id(model) not in _NOTED:
        _NOTED.add(id(model))
        print(f"note: {n_cut} input(s) longer than {_limit(cfg)} tokens were truncated "
              "(the encoder's maximum length)", file=sys.stderr)
    vectors = torch.zeros(0, cfg.model_cfg.d_model)
    if out:
        vectors = torch.empty(len(inputs), out[0].size(1))
        vectors[torch.tensor(order)] = torch.cat(out)  # back to the caller's order
    return {"vectors": vectors, "tokens": n_tokens, "truncated": n_cut}
