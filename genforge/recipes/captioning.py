"""Recipe: image captioning (image -> text) on the captions of the contrastive recipe.

A CNN encoder + Transformer decoder with cross-attention (models/captioner.py), trained with
teacher forcing on the training-wording captions (class + measured attributes). The
vocabulary is the words of those captions (a user's pairs: the words of their training
captions), fixed in config.json. Evaluation: the next-word loss, and BLEU / chrF (sacrebleu)
of greedy captions against held-out-wording references (three per image) -- wording the
model never saw, so these numbers measure content (class and attributes named in other
words), and are low by construction next to the training wording.

`genforge generate RUN --image x.png` prints the caption.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from genforge.config import ConfigError, TrainConfig
from genforge.data.captions import ASPECT, BRIGHTNESS, SIZE, TEXTURE, TRAIN_NOUNS, TRAIN_TEMPLATES, nice_name
from genforge.data.images import load_image
from genforge.models.captioner import Captioner, CaptionerConfig
from genforge.recipes import contrastive as cl

MODELS = {"captioner": (CaptionerConfig, Captioner)}

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]


@dataclass
class Config(TrainConfig):
    model: str = "captioner"
    data: str = "fashion-mnist"  # as the contrastive recipe
    data_dir: str = ""
    captions: str = ""  # the user's own pairs: CSV/JSONL naming images of the `data` folder
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    train_limit: int = 0
    image_size: int = 28
    text_max_len: int = 24  # words per caption with <bos>/<eos>
    eval_images: int = 500  # images captioned for BLEU/chrF by evaluate (0 = all)
    batch_size: int = 64
    epochs: float = 3.0
    lr: float = 1e-3
    metric: str = "val_loss"
    metric_mode: str = "min"
    # filled by `build`
    classes: list[str] = field(default_factory=list)
    channels: int = 0
    height: int = 0
    width: int = 0
    mean: float = 0.0
    std: float = 1.0
    vocab: list[str] = field(default_factory=list)


PRESETS = {
    "caption-fashion": ({"data": "fashion-mnist", "max_minutes": 20, "epochs": 5, "batch_size": 128,
                         "lr": 2e-3, "warmup_steps": 100, "eval_every": 1000, "eval_batches": 4},
                        "CNN encoder + 2-layer Transformer decoder captioning Fashion-MNIST; BLEU/chrF "
                        "against held-out wording"),
}

TEST_CONFIGS = {"tiny": {"max_steps": 2, "batch_size": 8, "train_limit": 128, "eval_batches": 1,
                         "eval_images": 8, "plots": False, "model.channels": (4, 8),
                         "model.d_model": 16, "model.n_layer": 1, "model.n_head": 2}}


def words(text: str) -> list[str]:
    return re.findall(r"[\w'-]+|,", text.lower())


class WordTokenizer:
    def __init__(self, vocab: list[str]):
        self.vocab = vocab
        self.index = {w: i for i, w in enumerate(vocab)}

    def encode(self, text: str) -> list[int]:
        unk = self.index["<unk>"]
        return [1, *(self.index.get(w, unk) for w in words(text)), 2]

    def decode(self, ids) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i == 2:
                break
            if i > 3:
                out.append(self.vocab[i])
        return " ".join(out).replace(" ,", ",")


def _vocabulary(cfg: Config) -> list[str]:
    """Every word the training captions can contain, sorted (deterministic, no data pass for
    made captions; a user's pairs: the words of the training captions)."""
    sp, classes = cl.load_splits(cfg)
    if sp["train"].captions is not None:
        ws = {w for c in sp["train"].captions for w in words(c)}
    else:
        ws = set()
        for t in TRAIN_TEMPLATES:
            ws.update(words(t.replace("{attr}", "").replace("{noun}", "")))
        for c in classes:
            for n in TRAIN_NOUNS.get(c, [nice_name(c)]):
                ws.update(words(n))
        ws.update(BRIGHTNESS + SIZE + ASPECT + TEXTURE + ("an",))
    return SPECIALS + sorted(ws - set(SPECIALS))


def build(cfg: Config, run_dir=None) -> torch.nn.Module:
    if not cfg.vocab:
        cl.fill_image_fields(cfg)
        cfg.vocab = _vocabulary(cfg)
    mc = cfg.model_cfg
    mc.in_channels, mc.image_size, mc.vocab_size = cfg.channels, cfg.height, len(cfg.vocab)
    mc.max_len = cfg.text_max_len
    if cfg.height % 2 ** len(mc.channels):
        raise ConfigError(f"image side {cfg.height} must be divisible by {2 ** len(mc.channels)} "
                          f"(one 2x2 pool per entry of model.channels); set image_size")
    model = Captioner(mc)
    model.tokenizer = WordTokenizer(cfg.vocab)
    return model


def batches(cfg: Config, split: str, start_step: int = 0, model=None):
    tok = model.tokenizer if model is not None else WordTokenizer(cfg.vocab)
    return cl.caption_batches(cfg, split, start_step, tok, lambda x: cl.normalize(x, cfg))


def loss(model, batch) -> dict:
    x, tokens = batch
    return model(x, tokens)


@torch.no_grad()
def caption_images(model, cfg: Config, images: torch.Tensor, batch: int = 250) -> list[str]:
    m = getattr(model, "_orig_mod", model)
    was = m.training
    m.eval()
    dev = next(m.parameters()).device
    out = []
    for i in range(0, len(images), batch):
        ids = m.generate(cl.normalize(images[i:i + batch], cfg).to(dev))
        out += [m.tokenizer.decode(row) for row in ids.cpu()]
    m.train(was)
    return out


@torch.no_grad()
def evaluate(model, cfg: Config, split: str = "val") -> dict:
    """Over the split's first `eval_images` images (fewer when eval_batches caps it): the
    next-word loss on held-out captions (it includes the cost of unseen wording), and BLEU /
    chrF of greedy captions against three held-out-wording references each."""
    import sacrebleu

    m = getattr(model, "_orig_mod", model)
    dev = next(m.parameters()).device
    sp, _ = cl.load_splits(cfg)
    k = len(sp[split].images) if not cfg.eval_images else min(cfg.eval_images, len(sp[split].images))
    if cfg.eval_batches:
        k = min(k, cfg.eval_batches * cfg.batch_size)
    was = m.training
    m.eval()
    tot, n = 0.0, 0
    for x, tokens in batches(cfg, split, model=m):  # the same first k images
        x, tokens = x[: k - n], tokens[: k - n]
        tot += float(m(x.to(dev), tokens.to(dev))["loss"]) * len(x)
        n += len(x)
        if n >= k:
            break
    m.train(was)
    res = {"loss": tot / max(n, 1)}
    hyps = caption_images(m, cfg, sp[split].images[:k])
    refs = [cl.split_captions(cfg, split, k, held_out=True, seed=s, targets=False)[0] for s in (1, 2, 3)]
    res["bleu"] = float(sacrebleu.corpus_bleu(hyps, refs).score)
    res["chrf"] = float(sacrebleu.corpus_chrf(hyps, refs).score)
    # the same against training-wording references: what the model can reach in its own words
    train_refs = [cl.split_captions(cfg, split, k, held_out=False, seed=s, targets=False)[0]
                  for s in (1, 2, 3)]
    res["bleu_train_wording"] = float(sacrebleu.corpus_bleu(hyps, train_refs).score)
    return res


def cli_generate(model, cfg: Config, run_dir, image=None, **unused) -> list[str]:
    """`genforge generate RUN --image x.png` prints the image's caption."""
    if unused:
        raise ConfigError(f"options {', '.join('--' + k.replace('_', '-') for k in unused)} do not "
                          "apply to captioning; use --image FILE")
    if image is None:
        raise ConfigError("captioning runs describe an image: --image x.png")
    x = load_image(Path(image), cfg.channels, (cfg.height, cfg.width))[None]
    caps = caption_images(model, cfg, x)
    print(caps[0] or "(an empty caption: the model ended at once; train it longer)")
    return caps
