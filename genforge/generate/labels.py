"""Class labels as users type them (`genforge generate --label`, the image API's prompt):
one parser for the CLI and the server.

A label is matched against the class names first (case-insensitive), and read as an index
only when no name matches: on a run whose classes are "1", "10", "2", `--label 2` is the
class named "2", not index 2. An index is still accepted, and `label_used` spells out which
class it picked, since class names are sorted alphabetically ("zero".."nine" puts "three" at
index 7)."""
from __future__ import annotations

from typing import Sequence

from genforge.config import ConfigError


def parse_label(classes: Sequence[str], label: str | int) -> int:
    """A class name (case-insensitive) or, when no name matches, an index -> class index."""
    if isinstance(label, int):
        idx = label
    else:
        names = [c.lower() for c in classes]
        text = str(label).strip().lower()
        if text in names:
            return names.index(text)
        if not text.lstrip("-").isdigit():
            raise ConfigError(f"unknown label {label!r}; classes: {', '.join(classes)}")
        idx = int(text)
    if not 0 <= idx < len(classes):
        raise ConfigError(f"label {label!r} names no class and index {idx} is out of range "
                          f"0..{len(classes) - 1}; classes: {', '.join(classes)}")
    return idx


def label_used(classes: Sequence[str], label: str | int, idx: int) -> str:
    """What `label` was taken to mean, for the user to see."""
    if str(label).strip().lower() == classes[idx].lower():
        return f"label: {classes[idx]}"
    return (f"label: {classes[idx]} (no class is named {str(label)!r}, so it was read as index "
            f"{idx} of the classes in order: {', '.join(classes)})")
