"""Recipe: text-to-image -- the diffusion U-Net (models/diffusion.py) conditioned on the text
tower of a contrastive (CLIP) run, with classifier-free guidance on a learned null text.

Like DALL-E 2 / Stable Diffusion at a 28x28 scale: a caption is embedded by the CLIP run's
text tower (locked; `clip=RUN`), the unit vector is projected into the U-Net's time/class
embedding path (FiLM-style shifts in every residual block), and the "no caption" vector is
dropped in at `model.p_uncond` so that sampling can extrapolate away from it (Ho & Salimans
2022). Since the CLIP text tower maps unseen wordings near the trained ones (MiniLM does, for
"a pair of running shoes" vs "sneaker"), a free-text prompt never seen in training works.

Without `clip`, a small byte-level text Transformer trains jointly with the U-Net (the
fallback, and what the tiny tests use). The run is self-contained: the text tower's weights,
config and tokenizer are saved in it.

Captions are those of the contrastive recipe (class + measured attributes, training
wording); evaluation uses the held-out wording: class-consistency of images generated from
held-out prompts and FID, both in a genforge classifier's features (`classifier=RUN`).

A retrieval prior bridges the gap between a new wording and what the U-Net was trained on
(the role of DALL-E 2's prior, Ramesh et al. 2022, done by lookup instead of a second
network): the run keeps the locked text tower's vectors of its distinct training captions
(`caption_bank`), and sampling conditions on the softmax(similarity / prior_temperature)
weighted mean of the prompt's `prior_k` nearest captions instead of on the prompt's own
vector, which the U-Net never saw. `prior_k=0` conditions on the prompt's vector.
"""
from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

import torch
import torch.nn as nn

from genforge.config import ConfigError, TrainConfig
from genforge.data.captions import Captioner, looks_english, nice_name
from genforge.generate import labels as labels_lib
from genforge.generate.images import save_grid
from genforge.models.clip import CLIP, CLIPConfig
from genforge.models.diffusion import Diffusion, DiffusionConfig
from genforge.recipes import contrastive as cl


def caption_prior(e: torch.Tensor, bank: torch.Tensor, k: int, temperature: float) -> torch.Tensor:
    """Unit prompt vectors (B, D) -> the unit-normalised softmax(cosine / temperature)-weighted
    mean of each one's k nearest rows of `bank` (N, D), the training captions' vectors."""
    sims, idx = (e @ bank.T).topk(min(k, len(bank)), dim=-1)  # (B, k)
    w = torch.softmax(sims / temperature, dim=-1)
    m = (w.unsqueeze(-1) * bank[idx]).sum(1)
    return m / m.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class TextToImage(nn.Module):
    """A CLIP text tower (under `clip.`) + a text-conditioned Diffusion (under `diffusion.`),
    and the text vectors of `bank` training captions for the retrieval prior (a buffer, so the
    run carries them)."""

    def __init__(self, clip_cfg: CLIPConfig, cfg: DiffusionConfig, train_text: bool, bank: int = 0):
        super().__init__()
        cfg.text_dim = clip_cfg.embed_dim
        self.clip = CLIP(clip_cfg)
        self.diffusion = Diffusion(cfg)
        self.cfg = cfg
        self.register_buffer("caption_bank", torch.zeros(bank, clip_cfg.embed_dim) if bank else None)
        # the image tower of a CLIP run plays no part here; the text tower trains only in the
        # fallback (no clip run)
        self.clip.image.requires_grad_(False)
        self.clip.image_proj.requires_grad_(False)
        self.clip.logit_scale.requires_grad_(False)
        if not train_text:
            self.clip.requires_grad_(False)

    def text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(tokens)  # (B, D) unit vectors

    def condition(self, tokens: torch.Tensor, prior_k: int, temperature: float) -> torch.Tensor:
        """What sampling conditions on: the prompts' vectors through the retrieval prior (when
        the run has a caption bank and prior_k > 0), else the vectors themselves."""
        e = self.text(tokens)
        if self.caption_bank is None or prior_k < 1:
            return e
        return caption_prior(e, self.caption_bank, prior_k, temperature)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> dict:
        return self.diffusion(x, text=self.text(tokens))


MODELS = {"diffusion": (DiffusionConfig, TextToImage)}

TASK = "image-generation"


def capabilities(cfg) -> frozenset[str]:
    return frozenset({"guidance", "sampling-steps", "text-prompt"})


@dataclass
class Config(TrainConfig):
    model: str = "diffusion"
    data: str = "fashion-mnist"  # as the contrastive recipe: a named dataset, a class folder, or a folder with `captions`
    data_dir: str = ""
    captions: str = ""  # the user's own pairs: CSV/JSONL naming images of the `data` folder
    clip: str = ""  # a contrastive run whose (locked) text tower conditions the U-Net; empty = a small text tower trained jointly
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    train_limit: int = 0
    image_size: int = 28
    text_max_len: int = 48
    batch_size: int = 64
    epochs: float = 10.0
    # quality metrics at evaluation (need a genforge image-classify run on the same data)
    classifier: str = ""  # e.g. runs/cnn-fashion
    eval_samples: int = 200  # generated images per evaluation when `classifier` is set (held-out prompts)
    sample_grid: int = 20  # images in the grid written at each evaluation (two per class prompt)
    sample_steps: int = 50  # DDIM steps
    guidance: float = 5.0  # classifier-free guidance scale; 1 = none
    # retrieval prior (needs a locked `clip` tower): sampling conditions on the weighted mean of
    # the prompt's prior_k nearest training captions' vectors; 0 = on the prompt's own vector
    prior_k: Annotated[int, "[0, inf)"] = 16
    prior_temperature: Annotated[float, "(0, inf)"] = 0.05  # softmax temperature over cosine similarities
    prior_bank_max: Annotated[int, "[1, inf)"] = 20000  # at most this many distinct training captions in the bank
    # filled by `build`, saved so the run loads without the data or the clip run
    classes: list[str] = field(default_factory=list)
    channels: int = 0
    height: int = 0
    width: int = 0
    mean: float = 0.0
    std: float = 1.0
    tokenizer_source: str = ""
    clip_config: str = ""  # the text tower's CLIPConfig as JSON
    caption_bank: int = 0  # training captions whose vectors the run keeps for the prior (0 = none)


_JOINT_TEXT = {"embed_dim": 64, "image_channels": [4], "text_width": 64, "text_layers": 2, "text_heads": 4}

PRESETS = {
    "text2image-fashion": ({"data": "fashion-mnist", "clip": "runs/clip-fashion", "max_minutes": 20,
                            "max_steps": 4000, "batch_size": 64, "lr": 1e-3, "warmup_steps": 100,
                            "eval_every": 1000, "eval_batches": 10, "grad_clip": 1.0, "ema": 0.999,
                            "model.min_snr_gamma": 5.0, "model.p_uncond": 0.15},
                           "diffusion U-Net conditioned on the text tower of runs/clip-fashion "
                           "(train `genforge train clip-fashion --out runs/clip-fashion` first)"),
}

TEST_CONFIGS = {"joint-text": {"max_steps": 2, "batch_size": 8, "train_limit": 128, "eval_batches": 1,
                               "sample_grid": 4, "sample_steps": 2, "plots": False,
                               "model.base_channels": 8, "model.timesteps": 20}}
TEST_SAMPLE = {"n": 4, "prompt": "a pair of running shoes"}


# ---------------------------------------------------------------------------------------
# the contract


def _clip_cfg(cfg: Config) -> CLIPConfig:
    d = json.loads(cfg.clip_config)
    d["image_channels"] = tuple(d["image_channels"])
    return CLIPConfig(**d)


def build(cfg: Config, run_dir=None) -> torch.nn.Module:
    fresh = not cfg.clip_config
    state = None
    if fresh:
        cl.fill_image_fields(cfg)
        if cfg.clip:
            from genforge.config import from_dict
            from genforge.recipes import get_recipe
            from genforge.train.checkpoint import weights_path
            from safetensors.torch import load_file

            src = Path(cfg.clip)
            if not (src / "config.json").is_file():
                raise ConfigError(f"clip={cfg.clip}: no such run; train one first: "
                                  f"`genforge train clip-fashion --out {cfg.clip}`")
            d = json.loads((src / "config.json").read_text())
            if d.get("recipe") != "contrastive":
                raise ConfigError(f"clip={cfg.clip} is a {d.get('recipe')} run; pass a contrastive run")
            theirs = from_dict(get_recipe("contrastive"), d)
            cfg.clip_config = json.dumps(asdict(theirs.model_cfg))
            if theirs.model_cfg.text == "bert":
                cfg.tokenizer_source = str((src / "tokenizer.json").resolve())
            state = load_file(str(weights_path(src, "best")))
        else:
            cfg.clip_config = json.dumps(asdict(CLIPConfig(**{**_JOINT_TEXT, "in_channels": cfg.channels})))
    if cfg.height != cfg.width:
        raise ConfigError(f"text2image needs square images, got {cfg.height}x{cfg.width}; set image_size=N")
    mc = cfg.model_cfg
    mc.image_size, mc.channels, mc.n_classes = cfg.height, cfg.channels, 0
    bank = bank_captions(cfg) if fresh and cfg.clip and cfg.prior_k > 0 else []
    if fresh:
        cfg.caption_bank = len(bank)
    model = TextToImage(_clip_cfg(cfg), mc, train_text=not cfg.clip, bank=cfg.caption_bank)
    if state is not None:
        model.clip.load_state_dict(state)
    cl.save_tokenizer(cfg, run_dir)
    model.tokenizer = cl.tokenizer(_TokCfg(cfg), run_dir)
    if bank:  # the locked tower's vectors of the training captions (a loaded run reads them)
        with torch.no_grad():
            model.caption_bank.copy_(torch.cat([
                model.text(cl.encode_texts(model.tokenizer, bank[i:i + 256], cfg.text_max_len))
                for i in range(0, len(bank), 256)]))
    return model


def bank_captions(cfg: Config) -> list[str]:
    """The distinct training-wording captions of the training images (one caption each, the
    run's seed; the user's own captions as given), at most prior_bank_max of them (seeded)."""
    d = cl.load_splits(cfg)[0]["train"]
    caps = d.captions if d.captions is not None else Captioner(cfg.classes).captions(d.labels, d.attrs, cfg.seed)
    caps = sorted(set(caps))
    if len(caps) > cfg.prior_bank_max:
        caps = sorted(random.Random(cfg.seed).sample(caps, cfg.prior_bank_max))
    return caps


class _TokCfg:
    """The attributes contrastive.tokenizer reads, from a text2image config."""

    def __init__(self, cfg: Config):
        self.model_cfg = _clip_cfg(cfg)
        self.tokenizer_source = cfg.tokenizer_source


def _tok(cfg: Config, model=None):
    return model.tokenizer if model is not None else cl.tokenizer(_TokCfg(cfg))


def data_summary(cfg: Config) -> list[str]:
    sp, classes = cl.load_splits(cfg)
    text = f"the locked text tower of {cfg.clip}" if cfg.clip else "a text tower trained jointly"
    return [f"{cfg.data}: " + ", ".join(f"{k} {len(v.images):,}" for k, v in sp.items())
            + f" images, captions from class + measured attributes; conditioned on {text}"]


def batches(cfg: Config, split: str, start_step: int = 0, model=None):
    return cl.caption_batches(cfg, split, start_step, _tok(cfg, model), lambda x: x.float() / 255.0)


def loss(model, batch) -> dict:
    x, tokens = batch
    return model(x, tokens)


# ---------------------------------------------------------------------------------------
# sampling


def parse_label(cfg: Config, label) -> int:
    return labels_lib.parse_label(cfg.classes, label)


def label_prompt(cfg: Config, label) -> str:
    """A class (name or index) as a training-style prompt."""
    return f"a photo of a {nice_name(cfg.classes[parse_label(cfg, label)])}"


def prompt_note(cfg: Config, prompt: str) -> str | None:
    """A note for a prompt that does not look English (it still runs)."""
    if looks_english(prompt, Captioner(cfg.classes).english_words()):
        return None
    return ("note: this prompt does not look like English; the model was trained on English "
            "captions only, so expect images that follow the prompt loosely or not at all")


def _check_prompt(prompt) -> str:
    if prompt is None or not str(prompt).strip():
        raise ConfigError("the prompt is empty; describe the image, e.g. --prompt \"a pair of running shoes\"")
    return str(prompt).strip()


@torch.no_grad()
def generate_images(model, cfg: Config, prompts: list[str] | None, n: int, steps=None, guidance=None,
                    seed: int = 0, batch_size: int = 200) -> torch.Tensor:
    """n images in [0, 1]; prompts: one per image (None = the null text, unconditional)."""
    m = getattr(model, "_orig_mod", model)
    was = m.training
    m.eval()
    dev = next(m.parameters()).device
    g = torch.Generator().manual_seed(seed)
    out = []
    try:
        for i in range(0, n, batch_size):
            k = min(batch_size, n - i)
            text = None
            if prompts is not None:
                tokens = cl.encode_texts(m.tokenizer, prompts[i:i + k], cfg.text_max_len).to(dev)
                text = m.condition(tokens, cfg.prior_k, cfg.prior_temperature)
            out.append(m.diffusion.sample(k, steps=steps or cfg.sample_steps, generator=g, text=text,
                                          guidance=cfg.guidance if guidance is None else guidance).cpu())
    finally:
        m.train(was)
    return torch.cat(out)


def sample(model, cfg: Config, n: int = 16, label=None, prompt=None, guidance: float | None = None,
           steps: int | None = None, seed: int = 0) -> torch.Tensor:
    """n images (n, C, H, W) in [0, 1] for a free-text `prompt`, or a class `label` (name or
    index, as a training prompt), or neither (unconditional: the null text)."""
    if n < 1:
        raise ConfigError(f"n must be at least 1, got {n}")
    if prompt is not None:
        prompt = _check_prompt(prompt)
    elif label is not None:
        prompt = label_prompt(cfg, label)
    return generate_images(model, cfg, None if prompt is None else [prompt] * n, n, steps, guidance, seed)


def cli_generate(model, cfg: Config, run_dir, prompt=None, n: int = 8, label=None, guidance=None,
                 steps=None, out=None, seed: int = 0, **unused) -> Path:
    """`genforge generate RUN --prompt "a pair of running shoes" --n 8 --out shoes.png`"""
    if unused:
        raise ConfigError(f"options {', '.join('--' + k.replace('_', '-') for k in unused)} do not "
                          "apply to text-to-image; use --prompt, --n, --label, --guidance, --steps, --seed, --out")
    if prompt is None and label is None:
        raise ConfigError("give a prompt: --prompt \"a pair of running shoes\" (or --label CLASS)")
    if prompt is not None:
        prompt = _check_prompt(prompt)
        note = prompt_note(cfg, prompt)
        if note:
            print(note, file=sys.stderr)
    t0 = time.perf_counter()
    images = sample(model, cfg, n=n, label=label, prompt=prompt, guidance=guidance, steps=steps, seed=seed)
    out = Path(out) if out else Path(run_dir) / "samples" / "generated.png"
    save_grid(out, images)
    print(f"wrote {n} images for {prompt or label_prompt(cfg, label)!r} to {out} "
          f"({time.perf_counter() - t0:.1f}s)")
    return out


def log_samples(model, cfg: Config, run_dir, step: int) -> str | None:
    if run_dir is None or cfg.sample_grid < 1 or not cfg.classes:
        return None
    k = len(cfg.classes)
    prompts = [label_prompt(cfg, i % k) for i in range(cfg.sample_grid)]
    imgs = generate_images(model, cfg, prompts, len(prompts), seed=cfg.seed)
    path = save_grid(Path(run_dir) / "samples" / f"step{step:06d}.png", imgs, nrow=min(k, len(prompts)))
    return f"samples: {path}"


# ---------------------------------------------------------------------------------------
# evaluation


def heldout_prompts(cfg: Config, n: int, seed: int = 0) -> tuple[list[str], torch.Tensor]:
    """n held-out-wording prompts, classes balanced (i % K), and their classes."""
    cap, rng = Captioner(cfg.classes), random.Random(seed)
    labels = torch.arange(n) % len(cfg.classes)
    return [rng.choice(cap.prompts(int(c), held_out=True)) for c in labels], labels


def quality_metrics(model, cfg: Config, split: str = "test", n: int = 200, seed: int = 0,
                    classifier: str = "", steps=None, guidance=None) -> dict:
    """Class-consistency of images generated from held-out prompts and their FID against
    real images of `split`, in the features of a genforge classifier run."""
    from genforge.evaluate.fid import class_consistency, fid_from_features
    from genforge.recipes.image_generate import _feature_classifier

    clf = _feature_classifier(str(classifier or cfg.classifier))
    sp, _ = cl.load_splits(cfg)
    real = sp[split].images
    g = torch.Generator().manual_seed(seed)
    real = real[torch.randperm(len(real), generator=g)[:n]].float() / 255.0
    prompts, labels = heldout_prompts(cfg, n, seed)
    fake = generate_images(model, cfg, prompts, n, steps, guidance, seed)
    f_real, _ = clf.features_and_probs(real)
    f_fake, p_fake = clf.features_and_probs(fake)
    return {"class_consistency_heldout": class_consistency(p_fake, labels),
            "fid": fid_from_features(f_real, f_fake)}


@torch.no_grad()
def evaluate(model, cfg: Config, split: str = "val") -> dict:
    """The eps-MSE at random t on `split`'s images with held-out captions (seeded), plus
    class-consistency and FID when `classifier` is set."""
    m = getattr(model, "_orig_mod", model)
    dev = next(m.parameters()).device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 12345)
        tot, n = 0.0, 0
        for x, tokens in batches(cfg, split, model=m):
            tot += float(m(x.to(dev), tokens.to(dev))["loss"]) * len(x)
            n += len(x)
    res = {"loss": tot / max(n, 1)}
    if cfg.classifier and cfg.eval_samples > 0 and cfg.classes:
        res.update(quality_metrics(model, cfg, split, cfg.eval_samples, seed=cfg.seed))
    return res
