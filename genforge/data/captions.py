"""Captions for real images, for the multimodal recipes (contrastive, text2image, captioning).

No captioned image set is available offline, so captions are *made* from labelled images:
the class name (through a set of synonyms) plus attributes measured on each image --
brightness of the object, size and aspect of its bounding box, texture (contrast inside the
object) -- put into one of several sentence templates. A second, disjoint set of templates
and synonyms ("a pair of running shoes", "trainers", "denim pants") is never used in
training; every evaluation uses it, so a score says how well the model handles wording it
has not seen, not how well it memorised the templates.

The user's own pairs: a folder of images and a CSV (columns `image,caption`) or JSONL
(`{"image": ..., "caption": ...}`) file naming them (`load_caption_pairs`).
"""
from __future__ import annotations

import csv
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from genforge.data.registry import DataError

# class -> synonyms used in training captions. Keys are genforge's Fashion-MNIST class names.
TRAIN_NOUNS: dict[str, list[str]] = {
    "t-shirt": ["t-shirt", "tee", "top"],
    "trouser": ["trousers", "pair of trousers", "pants"],
    "pullover": ["pullover", "sweater", "jumper"],
    "dress": ["dress", "gown", "frock"],
    "coat": ["coat", "jacket", "overcoat"],
    "sandal": ["sandal", "pair of sandals", "flip-flop"],
    "shirt": ["shirt", "button-up shirt", "blouse"],
    "sneaker": ["sneaker", "pair of sneakers", "sports shoe"],
    "bag": ["bag", "handbag", "purse"],
    "ankle-boot": ["ankle boot", "boot", "pair of boots"],
}
# never in training: the evaluation's wording
HELD_OUT_NOUNS: dict[str, list[str]] = {
    "t-shirt": ["short-sleeved tee shirt", "crew-neck t shirt"],
    "trouser": ["denim pants", "pair of jeans", "slacks"],
    "pullover": ["knitted jumper", "woollen sweater"],
    "dress": ["summer dress", "evening gown"],
    "coat": ["winter coat", "parka"],
    "sandal": ["pair of summer sandals", "open-toed sandal"],
    "shirt": ["collared shirt", "dress shirt"],
    "sneaker": ["pair of running shoes", "trainers", "running shoe"],
    "bag": ["tote bag", "shoulder bag", "satchel"],
    "ankle-boot": ["pair of ankle boots", "short leather boot", "chelsea boot"],
}

TRAIN_TEMPLATES = [
    "a photo of a {attr} {noun}",
    "a {attr} {noun}",
    "a picture of a {noun}, {attr}",
    "a {noun}",
    "a photo of a {noun}",
    "an image of a {attr} {noun}",
    "a black and white photo of a {attr} {noun}",
    "{noun}",
]
HELD_OUT_TEMPLATES = [
    "a product shot of a {noun}",
    "this is a {noun}",
    "a low resolution picture of a {attr} {noun}",
    "there is a {noun} in the picture",
]

# attribute words by measured value (thresholds on Fashion-MNIST's statistics)
BRIGHTNESS = ("dark", "grey", "light")
SIZE = ("small", "medium", "large")
ASPECT = ("tall", "square", "wide")
TEXTURE = ("plain", "textured")


def _fill(template: str, noun: str, attr: str) -> str:
    """The template with its blanks filled, spaces collapsed and each article agreeing with
    the word after it ("a overcoat" -> "an overcoat")."""
    text = " ".join(template.format(noun=noun, attr=attr).replace(" ,", ",").split())
    text = re.sub(r"\ba (?=[aeiou])", "an ", text)
    text = re.sub(r"\ban (?=[^aeiou\W])", "a ", text)
    return re.sub(r"\ba (?=(?:\w+ )?(?:pants|trousers|trainers|slacks|jeans)\b)", "", text)


def nice_name(cls: str) -> str:
    """A class folder's name as a noun phrase: 'ankle-boot' -> 'ankle boot'."""
    return cls.replace("_", " ").replace("-", " ") if cls not in TRAIN_NOUNS else TRAIN_NOUNS[cls][0]


# ---------------------------------------------------------------------------------------
# attributes measured on the images


def measure(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, C, H, W) -> attribute indices (N, 4): brightness, size, aspect, texture.

    The object is the pixels brighter than 10% of the maximum (Fashion-MNIST's background is
    black); its bounding box gives size (area fraction) and aspect (height / width); the mean
    and standard deviation of its pixels give brightness and texture."""
    x = images.float().mean(1) / 255.0  # (N, H, W)
    N, H, W = x.shape
    obj = x > 0.1
    rows, cols = obj.any(2), obj.any(1)  # (N, H), (N, W)

    def extent(m: torch.Tensor) -> torch.Tensor:
        idx = torch.arange(m.shape[1]).expand_as(m)
        first = torch.where(m, idx, m.shape[1]).min(1).values
        last = torch.where(m, idx, -1).max(1).values
        return (last - first + 1).clamp(min=1).float()
    h, w = extent(rows), extent(cols)
    area = h * w / (H * W)
    aspect = h / w
    n_obj = obj.sum((1, 2)).clamp(min=1)
    mean = (x * obj).sum((1, 2)) / n_obj
    var = ((x - mean[:, None, None]) ** 2 * obj).sum((1, 2)) / n_obj
    std = var.sqrt()
    out = torch.stack([
        torch.bucketize(mean, torch.tensor([0.35, 0.6])),
        torch.bucketize(area, torch.tensor([0.4, 0.7])),
        2 - torch.bucketize(aspect, torch.tensor([0.8, 1.25])),  # h/w: wide, square, tall
        (std > 0.22).long(),
    ], dim=1)
    return out.long()


def attribute_words(attrs: torch.Tensor | list[int]) -> list[str]:
    b, s, a, t = (int(v) for v in attrs)
    return [BRIGHTNESS[b], SIZE[s], ASPECT[a], TEXTURE[t]]


# ---------------------------------------------------------------------------------------
# captions


@dataclass
class Captioner:
    """Makes captions for the classes of a dataset. Classes without synonyms (a user's
    folder) are named by their folder name in both sets; only the templates differ then."""
    classes: list[str]

    def nouns(self, c: int, held_out: bool) -> list[str]:
        name = self.classes[c]
        table = HELD_OUT_NOUNS if held_out else TRAIN_NOUNS
        return table.get(name, [nice_name(name)])

    def templates(self, held_out: bool) -> list[str]:
        return HELD_OUT_TEMPLATES if held_out else TRAIN_TEMPLATES

    def caption(self, c: int, attrs, rng: random.Random, held_out: bool = False) -> tuple[str, dict]:
        """One caption of an image of class `c` with measured attributes `attrs` (4,), and
        the attributes it mentions {slot index: value} (what makes it true of other images)."""
        words = attribute_words(attrs)
        template = rng.choice(self.templates(held_out))
        slots = sorted(rng.sample(range(4), rng.choice((1, 1, 2)))) if "{attr}" in template else []
        attr = " ".join(words[j] for j in slots)
        text = _fill(template, rng.choice(self.nouns(c, held_out)), attr)
        return text, {j: int(attrs[j]) for j in slots}

    def captions(self, labels: torch.Tensor, attrs: torch.Tensor, seed: int,
                 held_out: bool = False) -> list[str]:
        rng = random.Random(seed)
        return [self.caption(int(y), a.tolist(), rng, held_out)[0] for y, a in zip(labels, attrs)]

    def matches(self, labels: torch.Tensor, attrs: torch.Tensor, seed: int,
                held_out: bool = False) -> tuple[list[str], torch.Tensor]:
        """One caption per image and the (captions x images) bool matrix of which images each
        caption is true of: same class and the same value of every attribute it mentions."""
        rng = random.Random(seed)
        texts, target = [], torch.zeros(len(labels), len(labels), dtype=torch.bool)
        for i, (y, a) in enumerate(zip(labels.tolist(), attrs.tolist())):
            text, slots = self.caption(y, a, rng, held_out)
            texts.append(text)
            ok = labels == y
            for j, v in slots.items():
                ok &= attrs[:, j] == v
            target[i] = ok
        return texts, target

    def prompts(self, c: int, held_out: bool = False) -> list[str]:
        """Attribute-free prompts for class `c` (zero-shot classification averages their
        embeddings, as CLIP's prompt ensembles do)."""
        return [_fill(t, n, "").strip() for t in self.templates(held_out) for n in self.nouns(c, held_out)]

    def english_words(self) -> set[str]:
        """Every word the training captions use (to tell an English prompt from another language)."""
        words = set()
        for table in (TRAIN_NOUNS, HELD_OUT_NOUNS):
            for nouns in table.values():
                for n in nouns:
                    words.update(n.replace("-", " ").split())
        for t in TRAIN_TEMPLATES + HELD_OUT_TEMPLATES:
            words.update(w for w in t.replace(",", "").split() if "{" not in w)
        words.update(BRIGHTNESS + SIZE + ASPECT + TEXTURE)
        for c in self.classes:
            words.update(nice_name(c).split())
        return words


ENGLISH_HINT = {"a", "an", "the", "of", "in", "with", "and", "on", "photo", "picture", "image",
                "black", "white", "red", "blue", "shoe", "shoes", "pair", "my", "for", "is"}


def looks_english(text: str, known: set[str]) -> bool:
    """True when at least one word of `text` is an English word the captions use (or a common
    one) and most letters are ASCII."""
    letters = [ch for ch in text if ch.isalpha()]
    if letters and sum(ch.isascii() for ch in letters) < 0.8 * len(letters):
        return False
    words = {w.strip(".,!?;:'\"").lower() for w in text.split()}
    return bool(words & (known | ENGLISH_HINT))


# ---------------------------------------------------------------------------------------
# the user's own image/caption pairs


def read_caption_file(path: str | Path) -> list[tuple[str, str]]:
    """CSV (header with `image` and `caption` columns) or JSONL (`image`, `caption` keys) ->
    [(image path as written, caption)]."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"caption file not found: {path}")
    rows: list[tuple[str, str]] = []
    if path.suffix.lower() == ".jsonl":
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                rows.append((str(d["image"]), str(d["caption"])))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DataError(f"{path}:{i}: expected a JSON object with \"image\" and \"caption\" "
                                f"keys, got {line[:80]!r}") from None
    elif path.suffix.lower() in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            if not reader.fieldnames or not {"image", "caption"} <= set(reader.fieldnames):
                raise DataError(f"{path}: the header must name the columns image and caption, "
                                f"got {reader.fieldnames}")
            rows = [(r["image"], r["caption"]) for r in reader]
    else:
        raise DataError(f"{path}: captions are read from .csv, .tsv or .jsonl files")
    if not rows:
        raise DataError(f"{path} holds no image/caption rows")
    return rows


def load_caption_pairs(folder: str | Path, caption_file: str | Path, channels: int = 1,
                       size: int = 28) -> tuple[torch.Tensor, list[str]]:
    """Images of `folder` named by `caption_file` -> (uint8 images (N, C, size, size), captions).
    An image may have several captions (several rows). Rows naming a missing image: one error
    naming them."""
    from genforge.data.images import load_image

    folder = Path(folder)
    rows = read_caption_file(caption_file)
    missing = [name for name, _ in rows if not (folder / name).is_file()]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DataError(f"{caption_file} names {len(missing)} image(s) not found in {folder}: "
                        f"{', '.join(missing[:3])}{more}; fix the names or add the images")
    cache: dict[str, torch.Tensor] = {}
    images = []
    for name, _ in rows:
        if name not in cache:
            cache[name] = load_image(folder / name, channels, (size, size))
        images.append(cache[name])
    return torch.stack(images), [c for _, c in rows]
