"""Recipe: class-conditional audio generation (spoken digits) as log-mel spectrogram "images".

A clip becomes an n_mels x n_mels log-mel spectrogram (as many frames as mel bands, so the
image families of models/ apply unchanged), scaled to [0, 1] by the training set's range. A
conditional diffusion model (DDPM/DDIM with classifier-free guidance) or a conditional VAE
learns them; a sample goes back to sound by non-negative least squares through the mel
filterbank and Griffin-Lim phase reconstruction (genforge.data.audio).

Quality (`classifier=RUN`, an audio-classify run): the recogniser's accuracy on generated clips
for the requested label, and FID in the recogniser's feature space against real clips.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import torch

from genforge.config import ConfigError, TrainConfig
from genforge.data.audio import (LOG_FLOOR, Features, griffin_lim, load_audio_set, log_mel,
                                 mel_to_linear, resample, write_wav)
from genforge.data.batching import ShuffledBatches, carve, sequential_batches
from genforge.generate import labels as labels_lib
from genforge.models.diffusion import Diffusion, DiffusionConfig
from genforge.models.vae import VAE, VAEConfig

MODELS = {
    "diffusion": (DiffusionConfig, Diffusion),
    "vae": (VAEConfig, VAE),
}

TASK = "audio-generation"  # what `genforge serve` offers: POST /v1/audio/speech


def capabilities(cfg) -> frozenset[str]:
    """What this run can do beyond TASK (values: genforge.recipes.CAPABILITIES)."""
    return frozenset({"guidance", "sampling-steps"}) if cfg.model == "diffusion" else frozenset()


@dataclass
class Config(TrainConfig):
    model: str = "vae"
    data: str = "fsdd"  # fsdd | path/to/folder/<label>/<clip>.wav
    data_dir: str = ""  # extra folder searched first for named datasets
    conditional: bool = True  # condition on the label (CFG diffusion / CVAE)
    sample_rate: Annotated[int, "[1, inf)"] = 8000  # clips are resampled to this rate (Hz)
    n_fft: Annotated[int, "[2, inf)"] = 512  # STFT window and FFT size (samples)
    hop: Annotated[int, "[1, inf)"] = 256  # STFT hop; a clip is (n_mels - 1) * hop samples long
    n_mels: Annotated[int, "[4, inf)"] = 32  # mel bands = frames: the side of the spectrogram image
    val_fraction: Annotated[float, "[0, 1)"] = 0.1  # carved from train with a fixed seed
    test_fraction: Annotated[float, "[0, 1)"] = 0.2  # carved as test from folders (fsdd has its customary split)
    train_limit: Annotated[int, "[0, inf)"] = 0  # use only the first N training clips (0 = all)
    gl_iters: Annotated[int, "[1, inf)"] = 64  # Griffin-Lim iterations per generated clip
    batch_size: int = 64
    epochs: float = 40.0
    # quality metrics at evaluation (needs an audio-classify run on the same labels)
    classifier: str = ""  # run directory of an audio-classify model (e.g. runs/cnn-fsdd)
    eval_samples: Annotated[int, "[0, inf)"] = 200  # generated clips per evaluation when `classifier` is set
    sample_steps: Annotated[int, "[1, inf)"] = 50  # DDIM steps (diffusion)
    guidance: Annotated[float, "[0, inf)"] = 2.0  # classifier-free guidance scale (diffusion); 1 = none
    # filled from the data by `build`, saved in config.json so runs load without the data
    classes: list[str] = field(default_factory=list)
    lo: float = 0.0  # log-mel value mapped to 0
    hi: float = 1.0  # log-mel value mapped to 1


PRESETS = {
    "diffusion-fsdd": ({"model": "diffusion", "data": "fsdd", "max_steps": 3000, "batch_size": 64,
                        "lr": 1e-3, "warmup_steps": 100, "eval_every": 1000, "eval_batches": 4,
                        "grad_clip": 1.0, "ema": 0.999, "model.base_channels": 32,
                        "model.channel_mult": (1, 2, 2), "model.min_snr_gamma": 5.0},
                       "conditional DDPM over 32x32 log-mel spectrograms of FSDD, Griffin-Lim to sound (a GPU-sized run)"),
    "vae-fsdd": ({"model": "vae", "data": "fsdd", "epochs": 30, "batch_size": 64, "lr": 2e-3,
                  "model.arch": "conv", "model.latent": 16, "model.hidden": 256},
                 "conditional conv VAE over 32x32 log-mel spectrograms of FSDD (~8 min on 2 CPU cores)"),
}

_TINY = {"data": "fsdd", "max_steps": 2, "batch_size": 8, "train_limit": 64, "eval_batches": 1,
         "sample_steps": 2, "gl_iters": 2, "n_mels": 16, "plots": False}
TEST_CONFIGS = {
    "diffusion": {**_TINY, "model": "diffusion", "model.base_channels": 8, "model.timesteps": 20},
    "vae": {**_TINY, "model": "vae", "model.arch": "conv", "model.conv_channels": 4,
            "model.hidden": 16, "model.latent": 4},
}
TEST_SAMPLE = {"n": 2}

# ---------------------------------------------------------------------------------------
# data


def features(cfg: Config) -> Features:
    return Features(cfg.sample_rate, cfg.n_fft, cfg.hop, cfg.n_mels)


def clip_length(cfg: Config) -> int:
    return (cfg.n_mels - 1) * cfg.hop  # centred frames: 1 + length // hop = n_mels


@functools.lru_cache(maxsize=4)
def _log_mels(data: str, data_dir: str, feats: Features, length: int) -> torch.Tensor:
    s = load_audio_set(data, data_dir, feats.sample_rate, length)
    return torch.cat([log_mel(w, feats) for w in s.waves.split(256)])[:, None]  # (N, 1, M, M)


def splits(cfg: Config) -> tuple[dict, list[str]]:
    """{train, val, test: (log-mels (N, 1, M, M), labels)} and label names."""
    s = load_audio_set(cfg.data, cfg.data_dir, cfg.sample_rate, clip_length(cfg))
    x, y = _log_mels(cfg.data, cfg.data_dir, features(cfg), clip_length(cfg)), s.labels
    if any(s.groups):
        is_test = torch.tensor([g == "test" for g in s.groups])
    else:
        is_test = torch.zeros(len(y), dtype=torch.bool)
        is_test[carve(len(y), cfg.test_fraction)[1]] = True
    test_idx, train_idx = is_test.nonzero()[:, 0], (~is_test).nonzero()[:, 0]
    keep, val = carve(len(train_idx), cfg.val_fraction)
    keep = keep.sort().values[:cfg.train_limit or None]
    val, train_idx = train_idx[val.sort().values], train_idx[keep]
    return ({"train": (x[train_idx], y[train_idx]), "val": (x[val], y[val]),
             "test": (x[test_idx], y[test_idx])}, s.classes)


def to_unit(x: torch.Tensor, cfg: Config) -> torch.Tensor:
    return ((x - cfg.lo) / (cfg.hi - cfg.lo)).clamp(0, 1)


def from_unit(x: torch.Tensor, cfg: Config) -> torch.Tensor:
    return cfg.lo + x * (cfg.hi - cfg.lo)


def batches(cfg: Config, split: str, start_step: int = 0, model=None):
    sp, _ = splits(cfg)
    if split not in sp:
        raise ValueError(f"unknown split {split!r}; use train, val or test")
    x, y = sp[split]
    if split != "train":
        return sequential_batches((to_unit(x, cfg), y), cfg.batch_size, cfg.eval_batches)
    return ShuffledBatches((x, y), cfg.batch_size, cfg.seed, start_step,
                           lambda b, g: (to_unit(b[0], cfg), b[1]))


# ---------------------------------------------------------------------------------------
# model


def build(cfg: Config, run_dir=None) -> torch.nn.Module:
    if not cfg.classes:  # first build (training): labels and the log-mel range from the data
        sp, classes = splits(cfg)
        x = sp["train"][0]
        cfg.classes = list(classes)
        # the floor is the silence level (log of LOG_FLOOR); the top a robust maximum
        cfg.lo = round(float(torch.log(torch.tensor(LOG_FLOOR))), 6)
        cfg.hi = round(float(torch.quantile(x.flatten()[::7], 0.9999)), 6)
    mc = cfg.model_cfg
    mc.image_size, mc.channels = cfg.n_mels, 1
    mc.n_classes = len(cfg.classes) if cfg.conditional else 0
    return MODELS[cfg.model][1](mc)


def loss(model, batch) -> dict:
    x, y = batch
    m = getattr(model, "_orig_mod", model)
    return model(x, y if m.cfg.n_classes else None)


@torch.no_grad()
def evaluate(model, cfg: Config, split: str = "val") -> dict:
    """The family's loss on `split` (seeded noise, so evaluations compare), plus the
    recogniser's accuracy on generated clips and FID when `classifier` is set."""
    m = getattr(model, "_orig_mod", model)
    device = next(m.parameters()).device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 12345)
        tot, n = {}, 0
        for x, y in batches(cfg, split):
            out = m(x.to(device), y.to(device) if m.cfg.n_classes else None)
            for k, v in out.items():
                tot[k] = tot.get(k, 0.0) + float(v) * len(x)
            n += len(x)
    res = {k: v / max(n, 1) for k, v in tot.items()}
    if cfg.classifier and cfg.eval_samples > 0:
        res.update(quality_metrics(model, cfg, cfg.classifier, cfg.eval_samples, seed=cfg.seed))
    return res


# ---------------------------------------------------------------------------------------
# sampling


def parse_label(cfg: Config, label) -> int:
    """A label name ("seven", case-insensitive), else a numeral or index ("7") -> class index."""
    return labels_lib.parse_label(cfg.classes, label)


def _labels(cfg: Config, n: int, label=None) -> torch.Tensor | None:
    if not cfg.conditional:
        if label is not None:
            raise ConfigError("this run is unconditional (trained with conditional=false); "
                              "--label needs a conditional model")
        return None
    if label is not None:
        return torch.full((n,), parse_label(cfg, label), dtype=torch.long)
    return torch.arange(n) % len(cfg.classes)


@torch.no_grad()
def spectrograms(model, cfg: Config, labels: torch.Tensor | None, n: int, steps=None,
                 guidance=None, seed: int = 0) -> torch.Tensor:
    """n log-mel "images" (n, 1, M, M) in [0, 1]."""
    m = getattr(model, "_orig_mod", model)
    was_training = m.training
    m.eval()
    g = torch.Generator().manual_seed(seed)
    dev = next(m.parameters()).device
    y = None if labels is None else labels.to(dev)
    try:
        if isinstance(m, Diffusion):
            return m.sample(n, y, steps=steps or cfg.sample_steps,
                            guidance=cfg.guidance if guidance is None else guidance, generator=g).cpu()
        return m.sample(n, y, generator=g).cpu()
    finally:
        m.train(was_training)


def to_waves(images: torch.Tensor, cfg: Config, seed: int = 0) -> torch.Tensor:
    """(n, 1, M, M) in [0, 1] -> waveforms (n, clip_length): mel power -> linear power (NNLS)
    -> magnitudes -> Griffin-Lim phases."""
    mel = (torch.exp(from_unit(images[:, 0].float(), cfg)) - LOG_FLOOR).clamp(min=0)
    mag = mel_to_linear(mel, features(cfg)).sqrt()
    return griffin_lim(mag, cfg.n_fft, cfg.hop, clip_length(cfg), cfg.gl_iters, seed=seed).clamp(-1, 1)


def sample(model, cfg: Config, n: int = 4, label=None, guidance: float | None = None,
           steps: int | None = None, seed: int = 0) -> torch.Tensor:
    """n clips (n, clip_length) at cfg.sample_rate, in [-1, 1]; `label` is a name or index."""
    if not isinstance(getattr(model, "_orig_mod", model), Diffusion) and (guidance is not None or steps is not None):
        raise ConfigError("--guidance and --steps apply to diffusion models only")
    if n < 1:
        raise ConfigError(f"n must be at least 1, got {n}")
    imgs = spectrograms(model, cfg, _labels(cfg, n, label), n, steps, guidance, seed)
    return to_waves(imgs, cfg, seed)


def cli_generate(model, cfg: Config, run_dir, n: int = 4, label=None, guidance: float | None = None,
                 steps: int | None = None, out=None, seed: int = 0, **unused) -> Path:
    """`genforge generate RUN --label seven --n 4 --out seven.wav`: the n clips one after
    another (a quarter second apart) in OUT, and each alone as OUT_0.wav, OUT_1.wav, ..."""
    if unused:
        raise ConfigError(f"options {', '.join('--' + k.replace('_', '-') for k in unused)} do not "
                          "apply to audio generation; use --n, --label, --guidance, --steps, --seed, --out")
    if label is not None and cfg.conditional:
        print(labels_lib.label_used(cfg.classes, label, parse_label(cfg, label)))
    out = Path(out) if out else Path(run_dir) / "samples" / "generated.wav"
    if out.suffix.lower() != ".wav":
        raise ConfigError(f"--out {out}: audio runs write WAV files; give a name ending in .wav")
    t0 = time.perf_counter()
    waves = sample(model, cfg, n=n, label=label, guidance=guidance, steps=steps, seed=seed)
    gap = torch.zeros(cfg.sample_rate // 4)
    write_wav(out, torch.cat([torch.cat([w, gap]) for w in waves])[:-len(gap)], cfg.sample_rate)
    for i, w in enumerate(waves):
        write_wav(out.with_name(f"{out.stem}_{i}.wav"), w, cfg.sample_rate)
    print(f"wrote {n} {cfg.model} clips to {out} (and {out.stem}_0.wav ... "
          f"{out.stem}_{n - 1}.wav, {cfg.sample_rate} Hz) in {time.perf_counter() - t0:.1f}s")
    return out


def log_samples(model, cfg: Config, run_dir, step: int) -> str | None:
    """One generated clip per label into run_dir/samples/ (WAVs)."""
    if run_dir is None:
        return None
    n = len(cfg.classes) if cfg.conditional else 4
    waves = sample(model, cfg, n=n, seed=cfg.seed)
    d = Path(run_dir) / "samples" / f"step{step:06d}"
    for i, w in enumerate(waves):
        name = cfg.classes[i % len(cfg.classes)] if cfg.conditional else str(i)
        write_wav(d / f"{name}.wav", w, cfg.sample_rate)
    return f"samples: {d}/*.wav"


# ---------------------------------------------------------------------------------------
# quality in a recogniser's feature space


@functools.lru_cache(maxsize=2)
def _recogniser(path: str):
    from genforge.train.checkpoint import load_run

    recipe, rcfg, model = load_run(path)
    if getattr(recipe, "TASK", None) != "audio-classification":
        raise ConfigError(f"classifier={path} is not an audio-classify run")
    return recipe, rcfg, model.eval()


def recogniser_features(path: str, waves: torch.Tensor, sample_rate: int):
    """Clips (n, L) at `sample_rate` -> (penultimate features, class probabilities) of the
    audio-classify run at `path`, each clip resampled and padded/cropped as it expects."""
    recipe, rcfg, model = _recogniser(str(path))
    x = torch.from_numpy(resample(waves.numpy(), sample_rate, rcfg.sample_rate))
    L = recipe.clip_length(rcfg)
    x = x[:, :L] if x.shape[1] >= L else torch.nn.functional.pad(x, (0, L - x.shape[1]))
    feats, probs = [], []
    with torch.no_grad():
        for xb in x.split(256):
            z = recipe._normalize(log_mel(xb, recipe.features(rcfg))[:, None], rcfg)
            f = model.embed(z)
            feats.append(f)
            probs.append(model(z).softmax(-1))
    return torch.cat(feats), torch.cat(probs)


def quality_metrics(model, cfg: Config, classifier: str, n: int = 200, seed: int = 0,
                    steps=None, guidance=None) -> dict:
    """For n generated clips with balanced labels: the recogniser's accuracy on the requested
    label, and FID (recogniser features) against n real test clips."""
    from genforge.evaluate.fid import fid_from_features

    _, rcfg, _ = _recogniser(str(classifier))
    if cfg.conditional and list(rcfg.classes) != list(cfg.classes):
        raise ConfigError(f"classifier={classifier} has labels {rcfg.classes}, this run {cfg.classes}")
    labels = torch.arange(n) % len(cfg.classes)
    waves = to_waves(spectrograms(model, cfg, labels if cfg.conditional else None, n, steps,
                                  guidance, seed), cfg, seed)
    f_fake, p_fake = recogniser_features(classifier, waves, cfg.sample_rate)
    real = real_test_waves(cfg)[:n]
    f_real, _ = recogniser_features(classifier, real, cfg.sample_rate)
    res = {"fid": fid_from_features(f_real, f_fake)}
    if cfg.conditional:
        res["recognised"] = float((p_fake.argmax(-1) == labels).float().mean())
    return res


def real_test_waves(cfg: Config, split: str = "test") -> torch.Tensor:
    """Real clips of the dataset's test (or train) group at the run's rate and clip length,
    in a fixed shuffled order."""
    s = load_audio_set(cfg.data, cfg.data_dir, cfg.sample_rate, clip_length(cfg))
    idx = [i for i, g in enumerate(s.groups) if g == split] or list(range(len(s.names)))
    perm = torch.randperm(len(idx), generator=torch.Generator().manual_seed(1234))
    return s.waves[torch.tensor(idx)[perm]]
