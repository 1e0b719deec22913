"""Text corpora for language models: named datasets and the user's own files, split by
holding out the tail, kept as one in-memory token tensor, served as random windows.

Sources (`load_corpus(data)`):
- a named dataset of the registry (`tinyshakespeare`),
- a `.txt` (or any UTF-8) file,
- a folder: every `*.txt` below it, in sorted path order, one record per file,
- with `delimiter` (e.g. `%`, the fortune-file convention): a file of records separated by
  lines holding only the delimiter. Records are kept whole on both sides of the split.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from genforge.data import registry
from genforge.data.batching import step_generator

NAMED_TEXT = {"tinyshakespeare": "input.txt"}


@dataclass
class Corpus:
    train: str
    val: str
    separator: str  # what joins records ("" for one continuous text)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise registry.DataError(f"{path} is not UTF-8 text ({e}); convert it first, e.g. "
                                 f"`iconv -f latin1 -t utf-8 {path} > {path.stem}.utf8.txt`") from None


def split_records(text: str, delimiter: str) -> list[str]:
    """Records of a file whose records are separated by lines equal to `delimiter`."""
    records, current = [], []
    for line in text.splitlines():
        if line.strip() == delimiter:
            records.append("\n".join(current).strip("\n"))
            current = []
        else:
            current.append(line)
    records.append("\n".join(current).strip("\n"))
    return [r for r in records if r.strip()]


def load_records(data: str, data_dir: str | None = None, delimiter: str = "") -> tuple[list[str], str]:
    """-> (records, separator). A continuous text is one record."""
    if data in NAMED_TEXT:
        path = registry.find(data, NAMED_TEXT[data], data_dir or None)
        text = _read(path)
        return ([text], "") if not delimiter else (split_records(text, delimiter), f"\n{delimiter}\n")
    path = Path(data).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise registry.DataError(f"folder {path} has no .txt files")
        return [_read(p).strip("\n") for p in files], "\n\n"
    if path.is_file():
        text = _read(path)
        if delimiter:
            records = split_records(text, delimiter)
            if len(records) < 2:
                raise registry.DataError(
                    f"{path}: found {len(records)} record(s) separated by lines of {delimiter!r}; "
                    "check `delimiter` (or leave it empty for one continuous text)")
            return records, f"\n{delimiter}\n"
        return [text], ""
    raise registry.DataError(
        f"data={data!r} is neither a named text dataset ({', '.join(NAMED_TEXT)}) nor an "
        "existing text file or folder of .txt files")


def load_corpus(data: str, data_dir: str | None = None, delimiter: str = "",
                val_fraction: float = 0.1) -> Corpus:
    """Hold out the tail: the last `val_fraction` of the text (of the records when there
    are several, so none is cut in two) is the validation split."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    records, sep = load_records(data, data_dir, delimiter)
    if not "".join(records).strip():
        raise registry.DataError(f"data={data!r} contains no text")
    if len(records) == 1:
        text = records[0]
        cut = len(text) - int(len(text) * val_fraction)
        return Corpus(text[:cut], text[cut:], sep)
    n_val = math.ceil(len(records) * val_fraction) if val_fraction > 0 else 0
    n_val = min(n_val, len(records) - 1)
    train, val = records[:len(records) - n_val], records[len(records) - n_val:]
    # a trailing separator teaches the model where a record ends (and gives a stop string)
    return Corpus("".join(r + sep for r in train), "".join(r + sep for r in val), sep)


def smallest_int_dtype(vocab_size: int) -> torch.dtype:
    """Token ids stored compactly: 1M characters take 2 MB as int16 instead of 8 MB."""
    return torch.int16 if vocab_size <= 2**15 else torch.int32


def to_tensor(ids: list[int], vocab_size: int) -> torch.Tensor:
    return torch.tensor(ids, dtype=smallest_int_dtype(vocab_size))


class RandomWindows:
    """Infinite (x, y) batches of `batch_size` windows of `block_size` tokens at random
    offsets; y is x shifted by one. The offsets of step s depend only on (seed, s), so a run
    resumed at step s sees exactly the batches it would have seen."""

    def __init__(self, tokens: torch.Tensor, batch_size: int, block_size: int, seed: int,
                 start_step: int = 0):
        if len(tokens) < block_size + 1:
            raise ValueError(f"the training text has {len(tokens)} tokens, fewer than one window "
                             f"of block_size + 1 = {block_size + 1}; use more text or a smaller "
                             "model.block_size")
        # every window as a view, no copy: (N - block_size, block_size + 1)
        self.windows = tokens.unfold(0, block_size + 1, 1)
        self.batch_size, self.seed, self.step = batch_size, seed, start_step
        self.steps_per_epoch = max(1, len(tokens) // (batch_size * block_size))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        g = step_generator(self.seed, self.step)
        ix = torch.randint(len(self.windows), (self.batch_size,), generator=g)
        w = self.windows[ix].long()  # (B, T + 1)
        self.step += 1
        return w[:, :-1], w[:, 1:]


def sequential_windows(tokens: torch.Tensor, batch_size: int, block_size: int,
                       limit_batches: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Non-overlapping windows covering the text once (each token predicted once), for
    evaluation; the last, shorter window is kept so no token is skipped."""
    n = len(tokens) - 1
    starts = list(range(0, n, block_size))
    nb = math.ceil(len(starts) / batch_size)
    if limit_batches:
        nb = min(nb, limit_batches)
    for b in range(nb):
        chunk = starts[b * batch_size:(b + 1) * batch_size]
        full = [s for s in chunk if s + block_size <= n]
        if full:
            w = torch.stack([tokens[s:s + block_size + 1] for s in full]).long()
            yield w[:, :-1], w[:, 1:]
        for s in chunk:
            if s + block_size > n:  # the tail: its own (1, n - s) batch
                w = tokens[s:n + 1].long().unsqueeze(0)
                yield w[:, :-1], w[:, 1:]
