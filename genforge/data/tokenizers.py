"""Text tokenizers: character-level, and byte-level BPE trained with Hugging Face `tokenizers`.

Both have `encode(str) -> list[int]`, `decode(ids) -> str`, `vocab_size`, `save(path)`, and
are read back by `load_tokenizer(path)` from the run directory's `tokenizer.json`.

- `char`: one id per distinct character of the training text (Karpathy's char-rnn). Small
  vocabulary, long sequences; text with characters it never saw cannot be encoded.
- `bpe`: byte-level BPE (Sennrich et al. 2016; byte-level as in GPT-2): the base alphabet is
  the 256 bytes, so any Unicode string round-trips, and merges learned from the training
  text make common character runs a single token.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

CHAR_FORMAT = "genforge-char-tokenizer"


class CharTokenizer:
    kind = "char"

    def __init__(self, chars: str):
        if len(set(chars)) != len(chars):
            raise ValueError("CharTokenizer: the vocabulary has duplicate characters")
        self.chars = chars
        self._ids = {c: i for i, c in enumerate(chars)}

    @classmethod
    def train(cls, text: str | Iterable[str]) -> "CharTokenizer":
        seen: set[str] = set()
        for piece in [text] if isinstance(text, str) else text:
            seen.update(piece)
        if not seen:
            raise ValueError("cannot build a character vocabulary from empty text")
        return cls("".join(sorted(seen)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self._ids[c] for c in text]
        except KeyError:
            unknown = sorted({c for c in text if c not in self._ids})
            raise ValueError(
                f"the text has characters this character-level vocabulary never saw: "
                f"{''.join(unknown)!r} (train with `--set tokenizer=bpe` to handle any text)"
            ) from None

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"format": CHAR_FORMAT, "chars": self.chars}),
                              encoding="utf-8")


class BPETokenizer:
    kind = "bpe"

    def __init__(self, tok):  # tok: tokenizers.Tokenizer
        self.tok = tok

    @classmethod
    def train(cls, text: str | Iterable[str], vocab_size: int = 1024) -> "BPETokenizer":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if vocab_size < 257:
            raise ValueError(f"byte-level BPE needs vocab_size >= 257 (256 bytes + merges), got {vocab_size}")
        tok = Tokenizer(models.BPE())
        # add_prefix_space=False: the text is encoded exactly as given, so decode(encode(x)) == x
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator([text] if isinstance(text, str) else text, trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids))

    def save(self, path: str | Path) -> None:
        self.tok.save(str(path))


Tokenizer = CharTokenizer | BPETokenizer


def train_tokenizer(kind: str, text: str | Iterable[str], vocab_size: int = 1024) -> Tokenizer:
    if kind == "char":
        return CharTokenizer.train(text)
    if kind == "bpe":
        return BPETokenizer.train(text, vocab_size)
    raise ValueError(f"unknown tokenizer {kind!r}; choose one of: char, bpe")


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer at {path}")
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") == CHAR_FORMAT:
        return CharTokenizer(data["chars"])
    from tokenizers import Tokenizer as HFTokenizer

    return BPETokenizer(HFTokenizer.from_file(str(path)))
