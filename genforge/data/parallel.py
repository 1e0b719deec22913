"""Parallel text (sentence pairs) for translation: Multi30k by language keys, or the user's own
pairs (a TSV of source<TAB>target, or two line-aligned files `a.de,b.en`); byte-level BPE
tokenizers trained on the training side; length-bucketed batches under a token budget.

Every reader checks what it reads and says what it skipped: a pair with an empty side is
dropped and counted (`ParallelText.skipped`), files of different line counts are refused
naming both counts and the first line where one side runs out.
"""
from __future__ import annotations

import gzip
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from genforge.data import registry
from genforge.data.batching import carve, step_generator
from genforge.data.registry import DataError

MULTI30K_LANGS = ("en", "de", "fr")
# file stem of each split in the Multi30k task 1 release
MULTI30K_SPLITS = {"train": "train", "val": "val", "test": "test_2016_flickr"}
SPECIALS = ("<pad>", "<s>", "</s>")  # ids 0, 1, 2 in every tokenizer trained here
PAD, BOS, EOS = 0, 1, 2


@dataclass
class ParallelText:
    src: list[str]
    tgt: list[str]
    skipped: int = 0  # pairs dropped because one side was empty
    origin: str = ""  # where the pairs came from, for messages
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.src)


def _read_lines(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e}); convert it with iconv -t utf-8") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":  # the final newline ends the last line, it starts none
        lines.pop()
    return [ln.rstrip("\r") for ln in lines]


def _pairs(src: list[str], tgt: list[str], origin: str, src_name: str, tgt_name: str) -> ParallelText:
    if len(src) != len(tgt):
        short, long_ = (src_name, tgt_name) if len(src) < len(tgt) else (tgt_name, src_name)
        raise DataError(
            f"misaligned parallel files: {src_name} has {len(src)} lines, {tgt_name} has "
            f"{len(tgt)}; {short} ends at line {min(len(src), len(tgt))}, so line "
            f"{min(len(src), len(tgt)) + 1} of {long_} has no partner. Each line of one file "
            "must translate the same line of the other")
    out = ParallelText([], [], origin=origin)
    for s, t in zip(src, tgt):
        s, t = s.strip(), t.strip()
        if not s or not t:
            out.skipped += 1
            continue
        out.src.append(s)
        out.tgt.append(t)
    if out.skipped:
        out.notes.append(f"{origin}: skipped {out.skipped} pairs with an empty side")
    return out


def check_langs(src: str, tgt: str) -> None:
    for key, lang in (("src", src), ("tgt", tgt)):
        if not lang:
            raise DataError(f"the language pair is missing its {key} language; set "
                            f"{key}= one of {', '.join(MULTI30K_LANGS)} (e.g. src=de tgt=en)")
        if lang not in MULTI30K_LANGS:
            raise DataError(f"{key}={lang!r}: Multi30k has {', '.join(MULTI30K_LANGS)}; "
                            "for other languages pass your own pairs (data=pairs.tsv or data=a.xx,b.yy)")
    if src == tgt:
        raise DataError(f"src and tgt are both {src!r}; choose two different languages")


def load_multi30k(split: str, src: str, tgt: str, data_dir: str | None = None) -> ParallelText:
    check_langs(src, tgt)
    stem = MULTI30K_SPLITS[split]
    a = registry.find("multi30k", f"{stem}.{src}.gz", data_dir)
    b = registry.find("multi30k", f"{stem}.{tgt}.gz", data_dir)
    return _pairs(_read_lines(a), _read_lines(b), f"multi30k {split}", a.name, b.name)


def load_user_pairs(data: str) -> ParallelText:
    """`a.de,b.en` (two line-aligned files) or a TSV file of source<TAB>target lines."""
    if "," in data:
        parts = [p.strip() for p in data.split(",")]
        if len(parts) != 2 or not all(parts):
            raise DataError(f"data={data!r}: give two line-aligned files as data=SOURCE,TARGET "
                            "(e.g. data=train.de,train.en)")
        paths = [Path(p) for p in parts]
        for p in paths:
            if not p.is_file():
                raise DataError(f"data: {p} is not a file (data=SOURCE,TARGET names two line-aligned files)")
        return _pairs(_read_lines(paths[0]), _read_lines(paths[1]), data, str(paths[0]), str(paths[1]))
    path = Path(data)
    if not path.is_file():
        raise DataError(f"data={data!r} is neither multi30k, a TSV file of source<TAB>target "
                        "lines, nor two files SOURCE,TARGET")
    src, tgt = [], []
    for i, line in enumerate(_read_lines(path), 1):
        if not line.strip():
            src.append("")
            tgt.append("")
            continue
        cols = line.split("\t")
        if len(cols) != 2:
            raise DataError(f"{path} line {i}: expected source<TAB>target (2 columns), found "
                            f"{len(cols)}; a tab inside a sentence must be removed")
        src.append(cols[0])
        tgt.append(cols[1])
    return _pairs(src, tgt, str(path), str(path), str(path))


def split_pairs(pairs: ParallelText, split: str, val_fraction: float, test_fraction: float) -> ParallelText:
    """A fixed-seed split of the user's pairs (they come with none): val and test are carved
    once, independent of the training seed."""
    n = len(pairs)
    rest, held = carve(n, val_fraction + test_fraction)
    n_val = int(round(n * val_fraction))
    idx = {"train": rest, "val": held[:n_val], "test": held[n_val:]}[split]
    idx = idx.sort().values.tolist()
    return ParallelText([pairs.src[i] for i in idx], [pairs.tgt[i] for i in idx],
                        pairs.skipped if split == "train" else 0, f"{pairs.origin} ({split})",
                        list(pairs.notes) if split == "train" else [])


# ---------------------------------------------------------------------------------------
# tokenizers


def train_bpe(texts: list[str], vocab_size: int):
    """Byte-level BPE (Sennrich et al. 2016; byte-level as GPT-2) with <pad>, <s>, </s> as ids
    0, 1, 2. Without a prefix space, so decode(encode(x)) == x for any text: BLEU is scored on
    exactly the text the model wrote."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from genforge.data.tokenizers import BPETokenizer

    if vocab_size < 256 + len(SPECIALS):
        raise DataError(f"bpe_vocab={vocab_size}: byte-level BPE needs at least "
                        f"{256 + len(SPECIALS)} (256 bytes + 3 special tokens)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    for i, s in enumerate(SPECIALS):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    return BPETokenizer(tok)


# ---------------------------------------------------------------------------------------
# batching


def pad(seqs: list[list[int]], value: int = PAD) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def collate(src: list[list[int]], tgt: list[list[int]]) -> dict[str, torch.Tensor]:
    """src (B, S) padded; tgt_in = <s> y (B, T), tgt_out = y </s> (B, T)."""
    return {"src": pad(src), "tgt_in": pad([[BOS] + t for t in tgt]),
            "tgt_out": pad([t + [EOS] for t in tgt])}


def length_buckets(lengths: list[int], batch_tokens: int, order: torch.Tensor) -> list[list[int]]:
    """Consecutive runs of `order` (indices sorted by length) with (longest * count) <=
    batch_tokens: similar lengths share a batch, so little of it is padding (Vaswani et al.
    2017 batch by approximate length under a token budget)."""
    batches, cur, longest = [], [], 0
    for i in order.tolist():
        longest_if = max(longest, lengths[i])
        if cur and longest_if * (len(cur) + 1) > batch_tokens:
            batches.append(cur)
            cur, longest_if = [], lengths[i]
        cur.append(i)
        longest = longest_if
    if cur:
        batches.append(cur)
    return batches


class TokenBudgetBatches:
    """Infinite training batches of about `batch_tokens` tokens (padding counted), deterministic
    in (seed, step): epoch e sorts the pairs by length with ties broken by a permutation seeded
    by (seed, e), cuts the buckets, and visits them in an order seeded the same way; step s is
    bucket s - (steps before epoch e). So a resumed run sees exactly the batches it would have."""

    def __init__(self, src: list[list[int]], tgt: list[list[int]], batch_tokens: int, seed: int,
                 start_step: int = 0):
        if not src:
            raise DataError("no training pairs to batch")
        self.src, self.tgt = src, tgt
        self.lengths = [max(len(s), len(t) + 1) for s, t in zip(src, tgt)]
        longest = max(self.lengths)
        if batch_tokens < longest:
            raise DataError(f"batch_tokens={batch_tokens} is smaller than the longest pair "
                            f"({longest} tokens); raise batch_tokens or lower max_len")
        self.batch_tokens, self.seed, self.step = batch_tokens, seed, start_step
        self._epoch, self._buckets, self._first = -1, [], 0
        # every epoch cuts about the same number of buckets; the count of epoch 0 is the estimate
        self.steps_per_epoch = len(self._epoch_buckets(0))

    def _epoch_buckets(self, epoch: int) -> list[list[int]]:
        g = step_generator(self.seed, epoch, 3)
        tie = torch.randperm(len(self.lengths), generator=g)
        lengths = torch.tensor(self.lengths)
        order = tie[torch.argsort(lengths[tie], stable=True)]
        buckets = length_buckets(self.lengths, self.batch_tokens, order)
        visit = torch.randperm(len(buckets), generator=g).tolist()
        return [buckets[i] for i in visit]

    def _seek(self, step: int) -> None:
        # steps before each epoch depend on the bucket counts of earlier epochs: walk them
        # (cheap: one sort per epoch) from the last position known
        if self._epoch < 0 or step < self._first:
            self._epoch, self._first = 0, 0
            self._buckets = self._epoch_buckets(0)
        while step >= self._first + len(self._buckets):
            self._first += len(self._buckets)
            self._epoch += 1
            self._buckets = self._epoch_buckets(self._epoch)

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        self._seek(self.step)
        idx = self._buckets[self.step - self._first]
        self.step += 1
        return collate([self.src[i] for i in idx], [self.tgt[i] for i in idx])


def sequential(src: list[list[int]], tgt: list[list[int]], batch_tokens: int) -> Iterator[dict]:
    """Finite evaluation batches in length order (padding stays low), every pair once."""
    lengths = [max(len(s), len(t) + 1) for s, t in zip(src, tgt)]
    order = torch.argsort(torch.tensor(lengths), stable=True)
    for b in length_buckets(lengths, max(batch_tokens, max(lengths, default=1)), order):
        yield collate([src[i] for i in b], [tgt[i] for i in b])


def n_batches(n: int, size: int) -> int:
    return math.ceil(n / size)
