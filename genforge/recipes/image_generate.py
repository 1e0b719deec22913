"""Recipe: image generation with a VAE, a DCGAN or a diffusion model (DDPM; sampled by
DPM-Solver++(2M), DDIM or ancestral DDPM).

Optionally class-conditional; data: Fashion-MNIST, MNIST or a folder of images (one subfolder
per class).

All three families share the data, the sample grids written during training
(`run_dir/samples/`), `genforge generate RUN` and the quality metrics of
`genforge.evaluate.fid` (FID and an Inception-Score analogue in the feature space of a genforge
classifier run given as `classifier=RUN`, class-consistency, the VAE's negative ELBO).

The GAN's update is two optimisers (D then G, Adam beta1=0.5 as in DCGAN), so this recipe
defines `optimizers` + `update`; for the VAE and the diffusion model `update` is the ordinary
one-loss step (the same clip/penalty as the trainer's) with one optimiser.

About 400 lines because it is the whole task for three families (data, update, sampling, CLI
generation, evaluation); the families themselves live in models/, the data in data/images.py.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from typing import Annotated, Literal
from pathlib import Path

import torch

from genforge.config import ConfigError, TrainConfig
from genforge.data.batching import SPLIT_SEED, ShuffledBatches, sequential_batches
from genforge.data.images import load_image_splits
from genforge.generate import diffusion_samplers
from genforge.generate import labels as labels_lib
from genforge.generate.images import save_grid
from genforge.models.diffusion import Diffusion, DiffusionConfig
from genforge.models.gan import GAN, GANConfig
from genforge.models.vae import VAE, VAEConfig
from genforge.train.device import autocast
from genforge.train.optim import make_optimizer, penalty

MODELS = {
    "vae": (VAEConfig, VAE),
    "gan": (GANConfig, GAN),
    "diffusion": (DiffusionConfig, Diffusion),
}


TASK = "image-generation"  # what `genforge serve` offers (see genforge/serve)


def capabilities(cfg) -> frozenset[str]:
    """What this run can do beyond TASK (values: genforge.recipes.CAPABILITIES)."""
    return frozenset({"guidance", "sampling-steps", "sampler"}) if cfg.model == "diffusion" else frozenset()


@dataclass
class Config(TrainConfig):
    model: str = "vae"
    data: str = "fashion-mnist"  # fashion-mnist | mnist | path/to/folder/<class>/<image>
    data_dir: str = ""  # extra folder searched first for named datasets
    conditional: bool = True  # condition on the class label (CVAE / cGAN / CFG diffusion)
    val_fraction: Annotated[float, "[0, 1)"] = 0.1  # carved from train with a fixed seed
    test_fraction: Annotated[float, "[0, 1)"] = 0.2  # carved as test from data without a test split (folders, offline MNIST)
    train_limit: Annotated[int, "[0, inf)"] = 0  # use only the first N training images (0 = all)
    image_size: Annotated[int, "[0, inf)"] = 0  # resize a folder's images to this side (0 = keep the first's size)
    skip_bad_files: bool = False  # a folder's unreadable images: leave them out (count and names printed) instead of failing
    batch_size: int = 128
    epochs: float = 10.0
    # quality metrics at evaluation (FID etc. need a genforge image-classify run on the same data)
    classifier: str = ""  # run directory of an image-classify model (e.g. runs/cnn-fashion)
    eval_samples: Annotated[int, "[0, inf)"] = 500  # generated images per evaluation when `classifier` is set

    # sampling defaults (`genforge generate` options override them)
    sample_grid: Annotated[int, "[1, inf)"] = 100  # images in the grid written at each evaluation
    # diffusion sampler: dpm++ (DPM-Solver++(2M), Lu et al. 2022), ddim or ddpm (ancestral);
    # dpm++ at 10 steps scored a lower FID than DDIM-50 at a fifth of the time in
    # bench/bench_imagegen.py --samplers (7.17 vs 7.42, n=1000; bench/README.md)
    sampler: Literal["ddpm", "ddim", "dpm++"] = "dpm++"
    # network calls per sample; 0 = the sampler's default (dpm++ 10, ddim 50, ddpm every
    # timestep). Runs saved before `sampler` existed keep their saved 50, now with dpm++.
    sample_steps: Annotated[int, "[0, inf)"] = 0
    guidance: Annotated[float, "[0, inf)"] = 2.0  # classifier-free guidance scale (conditional diffusion); 1 = none
    # (2: the lowest FID of 1.5 / 2 / 3 after ~1,700 steps in bench/bench_imagegen.py; a model
    # trained longer wants less: 1.5 had the lowest validation FID after ~5,700 steps)
    # guidance only while t/T lies in [lo, hi] (Kynkaanniemi et al. 2024, "guidance interval"),
    # the plain conditional model (one forward pass instead of two) at the other steps: guidance
    # at the highest noise levels costs diversity, at the lowest it changes little; (0, 1) =
    # every step. The diffusion-fashion preset (cosine schedule) guides t/T in [0.2, 0.8]
    # at 2.0, chosen on validation images (bench/README.md)
    guidance_interval: Annotated[tuple[float, float], "[0, 1]"] = (0.0, 1.0)

    # filled from the data by `build`, saved in config.json so runs load without the data
    classes: list[str] = field(default_factory=list)
    channels: Annotated[int, "[0, inf)"] = 0
    height: Annotated[int, "[0, inf)"] = 0
    width: Annotated[int, "[0, inf)"] = 0


PRESETS = {
    "vae-fashion": ({"model": "vae", "data": "fashion-mnist", "model.arch": "conv", "epochs": 20,
                     "batch_size": 128, "lr": 2e-3, "warmup_steps": 100, "eval_every": 2000,
                     "model.latent": 32},
                    "conditional conv VAE on Fashion-MNIST (negative ELBO in nats, sample grids)"),
    "gan-fashion": ({"model": "gan", "data": "fashion-mnist", "epochs": 15, "batch_size": 64,
                     "lr": 2e-4, "schedule": "constant", "eval_every": 2000,
                     "model.g_channels": 32, "model.d_channels": 32},
                    "conditional DCGAN (projection discriminator) on Fashion-MNIST"),
    "diffusion-fashion": ({"model": "diffusion", "data": "fashion-mnist", "max_steps": 2000,
                           "batch_size": 64, "lr": 1e-3, "warmup_steps": 100, "eval_every": 1000,
                           "eval_batches": 20, "grad_clip": 1.0, "ema": 0.999,
                           "model.min_snr_gamma": 5.0, "model.schedule": "cosine",
                           "model.prediction": "v", "guidance": 1.75, "guidance_interval": (0.2, 0.8)},
                          "conditional DDPM U-Net, v-prediction, cosine schedule, classifier-free "
                          "guidance at mid noise, DPM-Solver++"),
}

_TINY = {"data": "fashion-mnist", "max_steps": 2, "batch_size": 8, "train_limit": 128,
         "eval_batches": 1, "sample_grid": 4, "sample_steps": 2, "plots": False}
TEST_CONFIGS = {
    "vae-mlp": {**_TINY, "model": "vae", "model.hidden": 16, "model.latent": 4},
    "vae-conv": {**_TINY, "model": "vae", "model.arch": "conv", "model.conv_channels": 4,
                 "model.hidden": 16, "model.latent": 4, "conditional": False},
    "gan": {**_TINY, "model": "gan", "model.g_channels": 4, "model.d_channels": 4, "model.z_dim": 8},
    "diffusion": {**_TINY, "model": "diffusion", "model.base_channels": 8, "model.timesteps": 20},
}
TEST_SAMPLE = {"n": 4}

# ---------------------------------------------------------------------------------------
# data


def splits(cfg: Config) -> tuple[dict, list[str]]:
    """{train, val, test: (uint8 images, labels)} and class names, by the one image loader
    every image recipe shares (genforge.data.images.load_image_splits)."""
    d = load_image_splits(cfg.data, cfg.data_dir, cfg.val_fraction, cfg.test_fraction,
                          cfg.train_limit, cfg.image_size, cfg.channels,
                          skip_bad_files=cfg.skip_bad_files)
    return d.splits, d.classes


def _to_unit(batch, gen=None):
    x, y = batch
    return x.float() / 255.0, y  # images in [0, 1]; each model rescales as it needs


def batches(cfg: Config, split: str, start_step: int = 0, model=None):
    sp, _ = splits(cfg)
    if split not in sp:
        raise ValueError(f"unknown split {split!r}; use train, val or test")
    if split != "train":
        x, y = sp[split]
        return sequential_batches((x.float() / 255.0, y), cfg.batch_size, cfg.eval_batches)
    return ShuffledBatches(sp["train"], cfg.batch_size, cfg.seed, start_step, _to_unit)


# ---------------------------------------------------------------------------------------
# model


def build(cfg: Config, run_dir=None) -> torch.nn.Module:
    if not cfg.classes:  # first build (training): read shapes from the data
        sp, classes = splits(cfg)
        x = sp["train"][0]
        cfg.classes = list(classes)
        cfg.channels, cfg.height, cfg.width = x.shape[1], x.shape[2], x.shape[3]
    check_guidance_interval(cfg.guidance_interval)
    if cfg.height != cfg.width:
        raise ConfigError(f"image generation needs square images, got {cfg.height}x{cfg.width}; "
                         "set image_size=N to resize a folder's images")
    mc = cfg.model_cfg
    mc.image_size, mc.channels = cfg.height, cfg.channels
    mc.n_classes = len(cfg.classes) if cfg.conditional else 0
    return MODELS[cfg.model][1](mc)


def check_guidance_interval(interval) -> tuple[float, float] | None:
    """(lo, hi) as the sampler takes it: None for (0, 1) (guidance at every step, the path
    runs saved before the key took); ConfigError unless 0 <= lo <= hi <= 1."""
    try:
        lo, hi = diffusion_samplers.check_guidance_interval(interval)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return None if (lo, hi) == (0.0, 1.0) else (lo, hi)


def _family(model) -> str:
    m = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    return {VAE: "vae", GAN: "gan", Diffusion: "diffusion"}[type(m)]


def _labels(cfg: Config, y):
    return y if cfg.conditional else None


def loss(model, batch) -> dict:
    """One-loss families (VAE, diffusion): the model's own loss. The GAN has no single loss."""
    if _family(model) == "gan":
        raise TypeError("the GAN is trained with `update` (two optimisers), not `loss`")
    x, y = batch
    return model(x, y if model.cfg.n_classes else None)


def optimizers(model, cfg: Config) -> dict:
    if _family(model) == "gan":
        # DCGAN (Radford et al. 2016, section 4): Adam with beta1 = 0.5; 0.9 oscillates
        betas = (0.5, cfg.betas[1])
        return {"g": torch.optim.Adam(model.generator.parameters(), lr=cfg.lr, betas=betas),
                "d": torch.optim.Adam(model.discriminator.parameters(), lr=cfg.lr, betas=betas)}
    return {"main": make_optimizer(model, cfg)}


def update(model, batch, opts: dict, step: int, cfg: Config) -> dict:
    if _family(model) == "gan":
        return gan_update(model, batch, opts, cfg)
    device = next(model.parameters()).device
    opt = opts["main"]
    with autocast(device):
        out = loss(model, batch)
        total = out["loss"]
        pen = penalty(model, cfg.l1, cfg.l2)
        if pen is not None:
            total = total + pen
    total.backward()
    if cfg.grad_clip > 0:
        out["grad_norm"] = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return {k: v.detach() for k, v in out.items()}


def gan_update(model, batch, opts: dict, cfg: Config) -> dict:
    """One D step on a real batch and a fresh fake batch, then one G step on the same fakes
    (the fakes are generated once, as in the PyTorch DCGAN example)."""
    x, y = batch
    y = _labels(cfg, y)
    real = x * 2 - 1  # the generator's tanh range
    fake = model.generator(model.noise(len(x)), y)
    d = model.d_loss(real, fake, y)  # fake is detached inside: no gradient reaches G
    opts["d"].zero_grad(set_to_none=True)
    d["loss"].backward()
    opts["d"].step()
    # G step: D's parameters are frozen so the backward pass only fills G's gradients
    model.discriminator.requires_grad_(False)
    try:
        g = model.g_loss(fake, y)
        opts["g"].zero_grad(set_to_none=True)
        g["loss"].backward()
        opts["g"].step()
    finally:
        model.discriminator.requires_grad_(True)
    return {"d_loss": d["loss"].detach(), "g_loss": g["loss"].detach(),
            "d_real": d["d_real"], "d_fake": d["d_fake"]}


# ---------------------------------------------------------------------------------------
# sampling


def parse_label(cfg: Config, label) -> int:
    """A class name (case-insensitive) or, when no name matches, an index -> class index
    (the one parser of genforge.generate.labels, shared with the server)."""
    return labels_lib.parse_label(cfg.classes, label)


@torch.no_grad()
def generate_images(model, cfg: Config, labels: torch.Tensor | None, n: int, steps: int | None = None,
                    guidance: float | None = None, seed: int = 0, batch_size: int = 250,
                    sampler: str | None = None,
                    guidance_interval: tuple[float, float] | None = None) -> torch.Tensor:
    """n images (n, C, H, W) in [0, 1], generated in batches with a fixed seed.
    `labels` (n,) for conditional models (None = unconditional / the null label); diffusion:
    `sampler`, `steps`, `guidance` and `guidance_interval` default to the run's `sampler`,
    `sample_steps`, `guidance` and `guidance_interval`."""
    fam = _family(model)
    m = getattr(model, "_orig_mod", model)
    was_training = m.training
    m.eval()
    g = torch.Generator().manual_seed(seed)
    interval = check_guidance_interval(cfg.guidance_interval if guidance_interval is None
                                       else guidance_interval)
    out = []
    try:
        for i in range(0, n, batch_size):
            k = min(batch_size, n - i)
            yb = None if labels is None else labels[i:i + k].to(next(m.parameters()).device)
            if fam == "diffusion":
                out.append(m.sample(k, yb, steps=steps or cfg.sample_steps or None,
                                    guidance=cfg.guidance if guidance is None else guidance,
                                    generator=g, sampler=sampler or cfg.sampler,
                                    guidance_interval=interval).cpu())
            else:
                if fam == "vae" and m.cfg.n_classes and yb is None:
                    raise ValueError("the conditional VAE needs labels to sample")
                if fam == "gan" and m.cfg.n_classes and yb is None:
                    raise ValueError("the conditional GAN needs labels to sample")
                out.append(m.sample(k, yb, generator=g).cpu())
    finally:
        m.train(was_training)
    return torch.cat(out)


def _default_labels(cfg: Config, n: int, label=None) -> torch.Tensor | None:
    if not cfg.conditional:
        if label is not None:
            raise ConfigError("this run is unconditional (trained with conditional=false); "
                             "--label needs a conditional model")
        return None
    if label is not None:
        return torch.full((n,), parse_label(cfg, label), dtype=torch.long)
    return torch.arange(n) % len(cfg.classes)  # every class in turn: one class per grid column


def sample(model, cfg: Config, n: int = 64, label=None, guidance: float | None = None,
           steps: int | None = None, seed: int = 0, sampler: str | None = None,
           guidance_interval: tuple[float, float] | None = None) -> torch.Tensor:
    """Generate n images (n, C, H, W) in [0, 1]; `label` is a class name or index; diffusion:
    `sampler` ddpm | ddim | dpm++ and its `steps`, `guidance` and `guidance_interval` (lo, hi)
    (None: the run's defaults)."""
    if _family(model) != "diffusion" and (guidance is not None or steps is not None or sampler is not None
                                          or guidance_interval is not None):
        raise ConfigError("--guidance, --guidance-interval, --steps and --sampler apply to "
                          "diffusion models only")
    if n < 1:
        raise ConfigError(f"n must be at least 1, got {n}")
    if _family(model) == "diffusion":  # a bad sampler/steps pair fails before any work
        name = sampler or cfg.sampler
        T = getattr(model, "_orig_mod", model).cfg.timesteps
        try:
            diffusion_samplers.check_steps(
                name, steps or cfg.sample_steps or diffusion_samplers.default_steps(name, T), T)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return generate_images(model, cfg, _default_labels(cfg, n, label), n, steps, guidance, seed,
                           sampler=sampler, guidance_interval=guidance_interval)


def cli_generate(model, cfg: Config, run_dir, n: int = 64, label=None, guidance: float | None = None,
                 steps: int | None = None, out=None, seed: int = 0, sampler: str | None = None,
                 guidance_interval: tuple[float, float] | None = None, **unused) -> Path:
    """`genforge generate RUN --n 64 [--label sneaker] [--guidance 3 --guidance-interval 0.1,0.6]
    [--sampler dpm++ --steps 15] --out grid.png`"""
    if unused:
        raise ConfigError(f"options {', '.join('--' + k.replace('_', '-') for k in unused)} do not "
                         "apply to image generation; use --n, --label, --guidance, --guidance-interval, "
                         "--sampler, --steps, --seed, --out")
    if label is not None and cfg.conditional:  # say which class an index picked
        print(labels_lib.label_used(cfg.classes, label, parse_label(cfg, label)))
    t0 = time.perf_counter()
    images = sample(model, cfg, n=n, label=label, guidance=guidance, steps=steps, seed=seed,
                    sampler=sampler, guidance_interval=guidance_interval)
    dt = time.perf_counter() - t0
    out = Path(out) if out else Path(run_dir) / "samples" / "generated.png"
    nrow = len(cfg.classes) if cfg.conditional and label is None and n >= len(cfg.classes) else 0
    save_grid(out, images, nrow=nrow)
    print(f"wrote {n} {cfg.model} samples to {out} ({dt:.1f}s)")
    return out


def log_samples(model, cfg: Config, run_dir, step: int) -> str | None:
    """Grids into run_dir/samples/: samples (one class per column when conditional); for the
    VAE also reconstructions of validation images (top rows originals, bottom rows
    reconstructions) and a latent interpolation strip."""
    if run_dir is None or cfg.sample_grid < 1:
        return None
    d = Path(run_dir) / "samples"
    n = cfg.sample_grid
    imgs = generate_images(model, cfg, _default_labels(cfg, n), n, seed=cfg.seed)
    nrow = len(cfg.classes) if cfg.conditional and n >= len(cfg.classes) else 0
    paths = [save_grid(d / f"step{step:06d}.png", imgs, nrow=nrow)]
    if _family(model) == "vae":
        m = getattr(model, "_orig_mod", model)
        x, y = next(iter(batches(cfg, "val")))
        k = min(8, len(x))
        x, y = x[:k].to(next(m.parameters()).device), y[:k].to(next(m.parameters()).device)
        yy = _labels(cfg, y)
        rec = m.reconstruct(x, yy)
        paths.append(save_grid(d / f"recon{step:06d}.png", torch.cat([x, rec]).cpu(), nrow=k))
        if k >= 2:
            strip = m.interpolate(x[0], x[1], 10, None if yy is None else yy[0])
            paths.append(save_grid(d / f"interp{step:06d}.png", strip.cpu(), nrow=10))
    return "samples: " + ", ".join(str(p) for p in paths)


# ---------------------------------------------------------------------------------------
# evaluation


@functools.lru_cache(maxsize=2)
def _feature_classifier(path: str):
    from genforge.evaluate.fid import FeatureClassifier

    return FeatureClassifier.from_run(path)


def quality_metrics(model, cfg: Config, split: str = "test", n: int = 1000, seed: int = 0,
                    classifier: str = "", steps: int | None = None, guidance: float | None = None,
                    sampler: str | None = None,
                    guidance_interval: tuple[float, float] | None = None) -> dict:
    """FID and IS analogue (genforge-classifier features) of n samples against n real images
    of `split`, and class-consistency for conditional models. Labels of the samples are
    balanced over the classes, as the data are."""
    from genforge.evaluate.fid import class_consistency, fid_from_features, inception_score

    clf = _feature_classifier(str(classifier or cfg.classifier))
    sp, _ = splits(cfg)
    x, _ = sp[split]
    g = torch.Generator().manual_seed(SPLIT_SEED)
    real = x[torch.randperm(len(x), generator=g)[:n]].float() / 255.0
    labels = torch.arange(n) % len(cfg.classes) if cfg.conditional else None
    fake = generate_images(model, cfg, labels, n, steps, guidance, seed, sampler=sampler,
                           guidance_interval=guidance_interval)
    f_real, _ = clf.features_and_probs(real)
    f_fake, p_fake = clf.features_and_probs(fake)
    res = {"fid": fid_from_features(f_real, f_fake), "is": inception_score(p_fake)}
    if labels is not None:
        res["class_consistency"] = class_consistency(p_fake, labels)
    return res


@torch.no_grad()
def evaluate(model, cfg: Config, split: str = "val") -> dict:
    """Cheap family loss on `split` (VAE: negative ELBO in nats per image; diffusion: the
    (weighted) eps-MSE at random t; GAN: a Jensen-Shannon estimate from D's held-out loss, a proxy that
    only means something while D is near its optimum, plus D(x), D(G(z)) and both losses), plus FID / IS analogue / class-consistency when
    `classifier` is set. Random draws are seeded, so evaluations are comparable."""
    fam = _family(model)
    m = getattr(model, "_orig_mod", model)
    device = next(m.parameters()).device
    res: dict[str, float] = {}
    with torch.random.fork_rng(devices=[]):  # leave the training RNG stream untouched
        torch.manual_seed(cfg.seed + 12345)
        tot, n = {}, 0
        for x, y in batches(cfg, split):
            x, y = x.to(device), y.to(device)
            yy = _labels(cfg, y)
            b = len(x)
            if fam == "vae":
                nelbo = m.negative_elbo(x, yy)
                parts = m(x, yy)
                vals = {"loss": nelbo.sum(), "recon": parts["recon"] * b, "kl": parts["kl"] * b}
            elif fam == "diffusion":  # loss (Min-SNR weighted if set) and the plain eps-MSE
                vals = {k: v * b for k, v in m(x, yy).items()}
            else:
                fake = m.generator(m.noise(b), yy)
                d = m.d_loss(x * 2 - 1, fake, yy)
                # D's loss on held-out real images and fresh fakes is 2 log 2 - 2 JSD at the
                # optimal D (Goodfellow et al. 2014, Theorem 1): log 2 - d_loss / 2 estimates the
                # Jensen-Shannon divergence, lower = samples harder to tell from real data
                vals = {"loss": (math.log(2) - d["loss"] / 2) * b, "d_loss": d["loss"] * b,
                        "g_loss": m.g_loss(fake, yy)["loss"] * b, "d_real": d["d_real"] * b,
                        "d_fake": d["d_fake"] * b}
            for k, v in vals.items():
                tot[k] = tot.get(k, 0.0) + float(v)
            n += b
        res = {k: v / max(n, 1) for k, v in tot.items()}
        if fam == "vae":
            res["neg_elbo"] = res["loss"]  # nats per image
            res["bits_per_dim"] = res["loss"] / (math.log(2) * cfg.channels * cfg.height * cfg.width)
    if cfg.classifier and cfg.eval_samples > 0:
        res.update(quality_metrics(model, cfg, split, cfg.eval_samples, seed=cfg.seed))
    return res
