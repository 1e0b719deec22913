"""Word-level vocabulary: tokenisation, min frequency, max size, unknown token, JSON save/load.

Ids 0 and 1 are fixed: `<pad>` (what batches are right-padded with; models zero its embedding)
and `<unk>` (every word not in the vocabulary). Words are then ordered by descending count,
ties broken alphabetically, so the same corpus always gives the same ids.
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Iterable

PAD, UNK = "<pad>", "<unk>"

# Lower-cased words (with internal hyphens), English clitics split off ("it's" -> "it", "'s";
# "don't" -> "do", "n't"), numbers, and every other non-space character as its own token.
# This matches how rt-polarity is already tokenised and cleans raw user text the same way.
_TOKEN = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*(?=n't)|n't|'[a-z]+|[a-z0-9]+(?:-[a-z0-9]+)*|[^\sa-z0-9]")


def tokenize(text: str) -> list[str]:
    """'The movie's GREAT!' -> ['the', 'movie', "'s", 'great', '!']"""
    return _TOKEN.findall(text.lower().replace("\u2019", "'"))


class Vocab:
    def __init__(self, words: Iterable[str]):
        self.itos: list[str] = [PAD, UNK] + [w for w in words if w not in (PAD, UNK)]
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}

    pad_id = 0
    unk_id = 1

    @classmethod
    def build(cls, texts: Iterable[str], min_freq: int = 1, max_size: int = 0) -> "Vocab":
        """From raw texts: keep words seen >= min_freq times; at most max_size entries in all
        (specials included; 0 = no limit)."""
        if min_freq < 1:
            raise ValueError(f"min_freq must be >= 1, got {min_freq}")
        counts = Counter(tok for t in texts for tok in tokenize(t))
        words = sorted((w for w, c in counts.items() if c >= min_freq),
                       key=lambda w: (-counts[w], w))
        if max_size:
            if max_size < 3:
                raise ValueError(f"max_size must be 0 (no limit) or >= 3, got {max_size}")
            words = words[: max_size - 2]
        return cls(words)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str, max_len: int = 0) -> list[int]:
        """Token ids of `text` (unknown words -> <unk>), truncated to max_len when > 0. An empty
        text encodes to [<unk>] so every example has at least one token."""
        ids = [self.stoi.get(t, self.unk_id) for t in tokenize(text)] or [self.unk_id]
        return ids[:max_len] if max_len else ids

    def tokens(self, text: str, max_len: int = 0) -> list[str]:
        """The tokens `encode` sees, as strings (unknown ones shown as <unk>)."""
        return [self.itos[i] for i in self.encode(text, max_len)]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[i] for i in ids]

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps({"type": "word", "itos": self.itos}, ensure_ascii=False))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Vocab":
        d = json.loads(Path(path).read_text())
        if d.get("type") != "word" or d.get("itos", [None])[:2] != [PAD, UNK]:
            raise ValueError(f"{path} is not a genforge word vocabulary (expected "
                             f"type 'word' and itos starting with {PAD}, {UNK})")
        return cls(d["itos"][2:])


class BPEVocab:
    """Byte-level BPE (genforge.data.tokenizers) behind the same interface as `Vocab`: ids are
    shifted by one so that id 0 is `<pad>`, which BPE itself does not have."""

    pad_id = 0

    def __init__(self, bpe):
        self.bpe = bpe

    @classmethod
    def build(cls, texts: Iterable[str], vocab_size: int = 4000) -> "BPEVocab":
        from genforge.data.tokenizers import BPETokenizer

        return cls(BPETokenizer.train(list(texts), vocab_size))

    def __len__(self) -> int:
        return self.bpe.vocab_size + 1

    def encode(self, text: str, max_len: int = 0) -> list[int]:
        ids = [i + 1 for i in self.bpe.encode(text.lower())] or [1]
        return ids[:max_len] if max_len else ids

    def tokens(self, text: str, max_len: int = 0) -> list[str]:
        return [self.bpe.decode([i - 1]) for i in self.encode(text, max_len)]

    def save(self, path: str | os.PathLike) -> None:
        self.bpe.save(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BPEVocab":
        from genforge.data.tokenizers import load_tokenizer

        return cls(load_tokenizer(path))
