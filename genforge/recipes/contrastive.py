"""Recipe: CLIP-style contrastive image-text training, zero-shot classification and retrieval.

Data: Fashion-MNIST (or a folder with one subfolder per class) with captions made from the
class and attributes measured on each image (genforge/data/captions.py), or the user's own
pairs: `data=FOLDER captions=FILE.csv|.jsonl`. Evaluation uses the held-out templates and
synonyms only: zero-shot accuracy with the training prompts and with the held-out prompts
(class embeddings = the mean of each class's prompt embeddings, CLIP's prompt ensembling),
and text -> image / image -> text recall@1/5/10 where a caption matches every image it is
true of (same class, same value of each attribute it mentions).

The text tower is a byte-level Transformer from scratch (`model.text=transformer`) or a
BERT-family encoder (`model.text=bert` with `init_from=minilm`: its architecture and
WordPiece tokenizer are adopted; `freeze=bert` locks it, as LiT does, Zhai et al. 2022).

The tokenizers and caption helpers here are shared by the text2image and captioning recipes.
"""
from __future__ import annotations

import functools
import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from genforge.config import ConfigError, TrainConfig
from genforge.data.batching import SPLIT_SEED, ShuffledBatches, carve, sequential_batches
from genforge.data.captions import Captioner, load_caption_pairs, measure
from genforge.data.images import load_image, load_image_splits
from genforge.evaluate.metrics import top_predictions
from genforge.models.clip import CLIP, CLIPConfig, recall_at_k

MODELS = {"clip": (CLIPConfig, CLIP)}


@dataclass
class Config(TrainConfig):
    model: str = "clip"
    data: str = "fashion-mnist"  # fashion-mnist | mnist | path/to/folder/<class>/<image> | a folder of images with `captions`
    data_dir: str = ""  # extra folder searched first for named datasets
    captions: str = ""  # the user's own pairs: a CSV (image,caption) or JSONL file naming images of the `data` folder
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    train_limit: int = 0  # use only the first N training images (0 = all)
    image_size: int = 28  # folders: images are resized to this side
    text_max_len: int = 48  # tokens per caption (longer ones are cut)
    eval_images: int = 1000  # images of the split scored by evaluate (0 = all); eval_batches caps it further
    batch_size: int = 128
    epochs: float = 3.0
    lr: float = 1e-3
    weight_decay: float = 0.05
    metric: str = "val_zeroshot_heldout"
    metric_mode: str = "max"
    # filled by `build`, saved in config.json so runs load without the data
    classes: list[str] = field(default_factory=list)
    channels: int = 0
    height: int = 0
    width: int = 0
    mean: float = 0.0
    std: float = 1.0
    tokenizer_source: str = ""  # model.text=bert: the tokenizer.json it was adopted from


PRESETS = {
    "clip-fashion": ({"data": "fashion-mnist", "model.text": "bert", "init_from": "minilm",
                      "freeze": "bert", "max_minutes": 20, "epochs": 10, "batch_size": 256,
                      "lr": 2e-3, "warmup_steps": 100, "eval_every": 500, "eval_batches": 4,
                      "model.image_channels": (32, 64, 128), "model.embed_dim": 128},
                     "CLIP on captioned Fashion-MNIST: CNN image tower + locked pretrained "
                     "MiniLM text tower (<= 20 min on 2 CPU cores)"),
    "clip-scratch-fashion": ({"data": "fashion-mnist", "model.text": "transformer",
                              "max_minutes": 20, "epochs": 10, "batch_size": 256, "lr": 2e-3,
                              "warmup_steps": 100, "eval_every": 500, "eval_batches": 4},
                             "CLIP on captioned Fashion-MNIST, byte-level text Transformer from "
                             "scratch (the MiniLM tower's comparison)"),
}

_TINY = {"data": "fashion-mnist", "max_steps": 2, "batch_size": 16, "train_limit": 200,
         "eval_batches": 2, "eval_images": 64, "model.image_channels": (4, 8),
         "model.embed_dim": 16, "model.text_width": 16, "model.text_layers": 1,
         "model.text_heads": 2, "plots": False}
TEST_CONFIGS = {"clip-scratch": _TINY}


# ---------------------------------------------------------------------------------------
# tokenizers (shared with text2image and captioning)


class ByteTokenizer:
    """UTF-8 bytes + 1 (0 is padding): no vocabulary file, and any word (a held-out synonym,
    another language) is representable."""
    vocab_size = 257

    def encode(self, text: str) -> list[int]:
        return [b + 1 for b in text.encode("utf-8")]


@functools.lru_cache(maxsize=4)
def _pretrained_tokenizer(path: str):
    from genforge.recipes.text_embed import PretrainedTokenizer

    return PretrainedTokenizer(Path(path))


def tokenizer(cfg, run_dir=None):
    """The run's text tokenizer: bytes (text=transformer) or the adopted encoder's WordPiece."""
    if cfg.model_cfg.text != "bert":
        return ByteTokenizer()
    for p in ([Path(run_dir) / "tokenizer.json"] if run_dir else []) + [Path(cfg.tokenizer_source)]:
        if str(p) and p.is_file():
            return _pretrained_tokenizer(str(p.resolve()))
    raise ConfigError("model.text=bert needs a BERT-family run to start from: init_from=minilm "
                      "(or init_from=RUN of `genforge import`), whose tokenizer it uses")


def encode_texts(tok, texts: list[str], max_len: int) -> torch.Tensor:
    """Right-padded (N, T) token ids (0 = padding), each text cut to max_len tokens."""
    seqs = []
    for t in texts:
        ids = tok.encode(t)
        if hasattr(tok, "wrap"):  # WordPiece: [CLS] ... [SEP], as the encoder was trained
            ids = tok.truncate(tok.wrap(ids), max_len) if len(ids) + 2 > max_len else tok.wrap(ids)
        seqs.append(ids[:max_len] or [0])
    out = torch.zeros(len(seqs), max(map(len, seqs)), dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s)
    return out


def adopt_bert(cfg, mc: CLIPConfig) -> None:
    """model.text=bert from init_from: the source encoder's shape and tokenizer."""
    from genforge.pretrained.sources import resolve

    if not cfg.init_from:
        raise ConfigError("model.text=bert needs init_from=minilm (the packaged MiniLM) or "
                          "init_from=RUN (a text-embed run, e.g. from `genforge import`)")
    src = resolve(cfg.init_from)
    d = json.loads((src / "config.json").read_text())
    if d.get("model") != "bert":
        raise ConfigError(f"init_from={cfg.init_from} is a {d.get('model')} run; model.text=bert "
                          "needs a BERT-family encoder run (text-embed)")
    m = d["model_cfg"]
    for k in ("vocab_size", "max_len", "n_layer", "n_head", "d_model", "intermediate"):
        setattr(mc, f"bert_{k}", m[k])
    mc.pad_id = m.get("pad_id", 0)
    if not (src / "tokenizer.json").is_file():
        raise ConfigError(f"init_from={cfg.init_from}: {src} has no tokenizer.json")
    cfg.tokenizer_source = str((src / "tokenizer.json").resolve())


def save_tokenizer(cfg, run_dir) -> None:
    if run_dir is not None and cfg.tokenizer_source and not (Path(run_dir) / "tokenizer.json").is_file():
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cfg.tokenizer_source, Path(run_dir) / "tokenizer.json")


# ---------------------------------------------------------------------------------------
# data (shared with text2image and captioning)


@dataclass
class CaptionData:
    """One split: uint8 images, labels (-1 without classes), measured attributes, and the
    user's captions (pairs mode) or None (captions are made from labels and attributes)."""
    images: torch.Tensor
    labels: torch.Tensor
    attrs: torch.Tensor
    captions: list[str] | None


def load_splits(cfg) -> tuple[dict[str, CaptionData], list[str]]:
    return _load_splits(cfg.data, cfg.data_dir, cfg.captions, cfg.val_fraction, cfg.test_fraction,
                        cfg.train_limit, cfg.image_size)


@functools.lru_cache(maxsize=2)
def _load_splits(data, data_dir, captions, val_fraction, test_fraction, train_limit, image_size):
    if captions:  # the user's pairs: carve test, then validation, with the fixed seed
        x, texts = load_caption_pairs(data, captions, 1, image_size)
        rest, test = carve(len(x), test_fraction)
        rest = rest[:train_limit] if train_limit else rest
        tr, va = carve(len(rest), val_fraction)
        idx = {"train": rest[tr], "val": rest[va], "test": test}
        out = {k: CaptionData(x[i], torch.full((len(i),), -1), measure(x[i]),
                              [texts[j] for j in i.tolist()]) for k, i in idx.items()}
        return out, []
    d = load_image_splits(data, data_dir, val_fraction, test_fraction, train_limit, image_size)
    out = {k: CaptionData(x, y, measure(x), None) for k, (x, y) in d.splits.items()}
    return out, list(d.classes)


def split_captions(cfg, split: str, n: int | None = None, held_out: bool = True,
                   seed: int = SPLIT_SEED, targets: bool = True) -> tuple[list[str], torch.Tensor | None]:
    """Captions of the first n images of `split` (held-out wording by default) and the
    (captions x images) matrix of which images each caption is true of (None when not
    `targets`: it is n x n, costly for a whole split)."""
    sp, classes = load_splits(cfg)
    d = sp[split]
    n = len(d.images) if n is None else min(n, len(d.images))
    if d.captions is not None:
        return d.captions[:n], torch.eye(n, dtype=torch.bool) if targets else None
    if not targets:
        return Captioner(classes).captions(d.labels[:n], d.attrs[:n], seed, held_out), None
    return Captioner(classes).matches(d.labels[:n], d.attrs[:n], seed, held_out)


def normalize(x: torch.Tensor, cfg) -> torch.Tensor:
    return (x.float() / 255.0 - cfg.mean) / cfg.std


def fill_image_fields(cfg) -> None:
    sp, classes = load_splits(cfg)
    x = sp["train"].images
    cfg.classes = list(classes)
    cfg.channels, cfg.height, cfg.width = x.shape[1], x.shape[2], x.shape[3]
    xf = x.float() / 255.0
    cfg.mean, cfg.std = round(xf.mean().item(), 6), round(xf.std().item(), 6)


def train_captions(cfg, labels: torch.Tensor, attrs: torch.Tensor, captions, gen: torch.Generator) -> list[str]:
    """Training-wording captions of a batch, seeded by the step's generator (deterministic
    in (seed, step), so --resume sees the same captions)."""
    if captions is not None:
        return captions
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    return Captioner(cfg.classes).captions(labels, attrs, seed)


def caption_batches(cfg, split: str, start_step: int, tok, image_fn):
    """Batches (image_fn(uint8 images), token ids); train: training wording, other splits:
    held-out wording, fixed."""
    sp, _ = load_splits(cfg)
    if split not in sp:
        raise ConfigError(f"unknown split {split!r}; use train, val or test")
    d = sp[split]
    index = torch.arange(len(d.images))
    if split != "train":
        texts, _ = split_captions(cfg, split, targets=False)
        toks = encode_texts(tok, texts, cfg.text_max_len)
        return sequential_batches((image_fn(d.images), toks), cfg.batch_size, cfg.eval_batches)

    def transform(batch, gen):
        (i,) = batch
        caps = None if d.captions is None else [d.captions[j] for j in i.tolist()]
        texts = train_captions(cfg, d.labels[i], d.attrs[i], caps, gen)
        return image_fn(d.images[i]), encode_texts(tok, texts, cfg.text_max_len)

    return ShuffledBatches((index,), cfg.batch_size, cfg.seed, start_step, transform)


# ---------------------------------------------------------------------------------------
# the contract


def build(cfg: Config, run_dir=None) -> torch.nn.Module:
    mc = cfg.model_cfg
    if not cfg.channels:  # first build (training): shapes, statistics, the text tower's source
        fill_image_fields(cfg)
        if mc.text == "bert":
            adopt_bert(cfg, mc)
        if cfg.captions and cfg.metric == "val_zeroshot_heldout":
            cfg.metric = "val_t2i_recall@10"  # no classes to classify: retrieval decides
    mc.in_channels = cfg.channels
    save_tokenizer(cfg, run_dir)
    model = CLIP(mc)
    model.tokenizer = tokenizer(cfg, run_dir)  # a plain attribute: `batches` encodes with it
    return model


def data_summary(cfg: Config) -> list[str]:
    sp, classes = load_splits(cfg)
    what = f"{len(classes)} classes, captions made from class + measured attributes" if classes \
        else f"captions from {cfg.captions}"
    example = split_captions(cfg, "train", 3, held_out=False)[0]
    return [f"{cfg.data}: " + ", ".join(f"{k} {len(v.images):,}" for k, v in sp.items()) + f" images; {what}",
            "training captions e.g.: " + " | ".join(example),
            "held-out (evaluation) captions e.g.: " + " | ".join(split_captions(cfg, "val", 3)[0])]


def batches(cfg: Config, split: str, start_step: int = 0, model=None):
    tok = model.tokenizer if model is not None else tokenizer(cfg)
    return caption_batches(cfg, split, start_step, tok, lambda x: normalize(x, cfg))


def loss(model, batch) -> dict:
    x, tokens = batch
    return model(x, tokens)


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def image_embeddings(model, cfg, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    dev = _device(model)
    return torch.cat([model.encode_image(normalize(images[i:i + batch], cfg).to(dev)).cpu()
                      for i in range(0, len(images), batch)])


@torch.no_grad()
def text_embeddings(model, cfg, texts: list[str], batch: int = 500) -> torch.Tensor:
    dev = _device(model)
    tok = model.tokenizer
    return torch.cat([model.encode_text(encode_texts(tok, texts[i:i + batch], cfg.text_max_len).to(dev)).cpu()
                      for i in range(0, len(texts), batch)])


@torch.no_grad()
def class_embeddings(model, cfg, held_out: bool) -> torch.Tensor:
    """(classes, D): the normalised mean of each class's prompt embeddings."""
    cap = Captioner(cfg.classes)
    out = [F.normalize(text_embeddings(model, cfg, cap.prompts(c, held_out)).mean(0), dim=0)
           for c in range(len(cfg.classes))]
    return torch.stack(out)


@torch.no_grad()
def evaluate(model, cfg: Config, split: str = "val") -> dict:
    """Zero-shot accuracy (training / held-out prompts), recall@1/5/10 both ways with held-out
    captions, and the InfoNCE loss on those pairs, over the split's first `eval_images`
    images (fewer when eval_batches caps the evaluation during training)."""
    was = model.training
    model.eval()
    sp, _ = load_splits(cfg)
    d = sp[split]
    n = len(d.images)
    if cfg.eval_images:
        n = min(n, cfg.eval_images)
    if cfg.eval_batches:
        n = min(n, cfg.eval_batches * cfg.batch_size)
    img = image_embeddings(model, cfg, d.images[:n])
    res: dict[str, float] = {}
    if cfg.classes:
        y = d.labels[:n]
        for key, held in (("zeroshot_train", False), ("zeroshot_heldout", True)):
            res[key] = float(((img @ class_embeddings(model, cfg, held).T).argmax(1) == y).float().mean())
    texts, target = split_captions(cfg, split, n)
    txt = text_embeddings(model, cfg, texts)
    from genforge.models.clip import clip_loss

    res["loss"] = float(clip_loss(img, txt, model.scale().cpu()))
    sim = txt @ img.T  # (captions, images)
    for k, r in recall_at_k(sim, target).items():
        res[f"t2i_recall@{k}"] = r
    for k, r in recall_at_k(sim.T, target.T).items():
        res[f"i2t_recall@{k}"] = r
    res["temperature"] = float((-model.scale()).exp())
    model.train(was)
    return res


def _parse_labels(labels) -> list[str]:
    names = [s.strip() for s in (labels.split(",") if isinstance(labels, str) else labels)]
    names = [s for s in names if s]
    if len(names) < 2:
        raise ConfigError(f"--labels needs at least two labels separated by commas (zero-shot "
                          f"classification picks the best of them), got {names or labels!r}; "
                          "e.g. --labels \"a sneaker,a bag,a dress\"")
    return names


@torch.no_grad()
def zero_shot(model, cfg, images: torch.Tensor, labels=None) -> tuple[torch.Tensor, list[str]]:
    """Probabilities (N, L) over `labels` (texts) or, when None, over the run's classes with
    the training prompts."""
    img = image_embeddings(model, cfg, images)
    if labels is None:
        if not cfg.classes:
            raise ConfigError("this run has no classes (trained on captions); pass --labels "
                              "\"a first label,a second label,...\"")
        names, txt = list(cfg.classes), class_embeddings(model, cfg, held_out=False)
    else:
        names = _parse_labels(labels)
        txt = text_embeddings(model, cfg, names)
    return F.softmax(model.scale().exp().cpu() * img @ txt.T, dim=-1), names


def predict(model, cfg: Config, inputs: list[str], top: int = 3, labels=None) -> list[dict]:
    """Image files -> zero-shot [{input, label, probability, top}] over `labels` (a comma-
    separated string or a list of texts) or the run's classes."""
    x = torch.stack([load_image(p, cfg.channels, (cfg.height, cfg.width)) for p in inputs])
    probs, names = zero_shot(model, cfg, x, labels)
    return top_predictions(probs, names, inputs, top)
