"""Labelled text datasets: rt-polarity by name, or the user's own CSV / TSV / JSONL file.

`load_labelled_text(data, ...)` returns a `TextDataset` (texts, integer labels, class names).
`split_indices(n, seed, ...)` picks the train/validation rows: a seeded 90/10 split, or fold k
of a seeded k-fold cross-validation (rt-polarity has no official split; Kim 2014 and
Pang & Lee 2005 report 10-fold CV).
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from genforge.data import registry
from genforge.data.registry import DataError

TEXT_FORMATS = (".csv", ".tsv", ".jsonl", ".json")


@dataclass
class TextDataset:
    texts: list[str]
    labels: list[int]
    class_names: list[str]


def load_rt_polarity(data_dir=None) -> TextDataset:
    """Pang & Lee's sentence polarity v1.0: one sentence per line, latin-1 encoded."""
    texts, labels = [], []
    for label, fname in ((0, "rt-polarity.neg"), (1, "rt-polarity.pos")):
        path = registry.find("rt-polarity", fname, data_dir)
        lines = path.read_text(encoding="latin-1").splitlines()
        texts += [ln.strip() for ln in lines if ln.strip()]
        labels += [label] * sum(1 for ln in lines if ln.strip())
    return TextDataset(texts, labels, ["negative", "positive"])


def _read_rows(path: Path) -> tuple[list[dict], list[str]]:
    """Rows as dicts and the column names, from .csv/.tsv (header row) or .jsonl/.json."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            rows = list(reader)
            return rows, list(reader.fieldnames or [])
    if suffix in (".jsonl", ".json"):
        text = path.read_text(encoding="utf-8")
        if suffix == ".json" and text.lstrip().startswith("["):
            rows = json.loads(text)
        else:
            rows = []
            for i, ln in enumerate(text.splitlines(), 1):
                if ln.strip():
                    try:
                        rows.append(json.loads(ln))
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path} line {i} is not valid JSON: {e}") from None
        if not all(isinstance(r, dict) for r in rows):
            raise DataError(f"{path}: every JSON line must be an object like "
                            '{"text": "...", "label": "..."}')
        columns = list(dict.fromkeys(k for r in rows for k in r))
        return rows, columns
    raise DataError(f"{path}: unsupported file type {suffix!r}; use one of "
                    f"{', '.join(TEXT_FORMATS)} (or a dataset name such as rt-polarity)")


def load_table(path: str | Path, text_column: str = "text",
               label_column: str = "label") -> TextDataset:
    """The user's labelled text file. Labels may be names or numbers; classes are sorted
    (numerically when every label is a number) and numbered from 0."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    rows, columns = _read_rows(path)
    if not rows:
        raise DataError(f"{path} has no data rows")
    for role, col in (("text", text_column), ("label", label_column)):
        if col not in columns:
            raise DataError(f"{path} has no {role} column {col!r} (columns: "
                            f"{', '.join(map(repr, columns))}); set `{role}_column` to one of them")
    texts, raw = [], []
    for i, r in enumerate(rows, 1):
        t, y = r.get(text_column), r.get(label_column)
        if t is None or y is None or str(y).strip() == "":
            missing = text_column if t is None else label_column
            raise DataError(f"{path} row {i} has no value in column {missing!r}")
        texts.append(str(t))
        raw.append(str(y).strip())
    if all(_is_number(s) for s in set(raw)):
        names = sorted(set(raw), key=float)
    else:
        names = sorted(set(raw))
    index = {n: i for i, n in enumerate(names)}
    return TextDataset(texts, [index[y] for y in raw], names)


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def load_labelled_text(data: str, text_column: str = "text", label_column: str = "label",
                       data_dir=None) -> TextDataset:
    """A dataset name (`rt-polarity`) or a path to a CSV/TSV/JSONL file."""
    if data == "rt-polarity":
        return load_rt_polarity(data_dir)
    if Path(data).suffix.lower() in TEXT_FORMATS or Path(data).exists():
        return load_table(data, text_column, label_column)
    raise DataError(f"unknown text dataset {data!r}: use rt-polarity or a path to a "
                    f"{'/'.join(s.lstrip('.') for s in TEXT_FORMATS)} file with "
                    f"{text_column!r} and {label_column!r} columns")


def split_indices(n: int, seed: int, val_fraction: float = 0.1, fold: int = -1,
                  n_folds: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """(train_idx, val_idx) from one seeded permutation of range(n).

    fold < 0: the last `val_fraction` of the permutation is validation (fixed 90/10 split).
    fold = k: the permutation is cut into `n_folds` near-equal folds and fold k is validation,
    so folds 0..n_folds-1 together validate every example exactly once."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    if fold < 0:
        n_val = max(1, int(round(n * val_fraction)))
        return perm[: n - n_val], perm[n - n_val:]
    if not 0 <= fold < n_folds:
        raise ValueError(f"fold must be in 0..{n_folds - 1} (or -1 for the 90/10 split), got {fold}")
    bounds = [round(i * n / n_folds) for i in range(n_folds + 1)]
    val = perm[bounds[fold]: bounds[fold + 1]]
    train = torch.cat([perm[: bounds[fold]], perm[bounds[fold + 1]:]])
    return train, val
