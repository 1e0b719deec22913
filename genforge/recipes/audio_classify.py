"""Recipe: audio classification (spoken-digit recognition) over log-mel spectrograms, with a
CNN or a bidirectional GRU; data: `fsdd` or a folder of WAV/FLAC clips, one subfolder per
label. Clips are mono, resampled to `sample_rate` and padded/cropped to `duration` seconds;
SpecAugment masks are the training augmentation."""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, field
from typing import Annotated

import torch
import torch.nn.functional as F

from genforge.config import ConfigError, TrainConfig
from genforge.data.audio import Features, load_audio_set, load_clip, log_mel, spec_augment
from genforge.data.batching import ShuffledBatches, carve, sequential_batches
from genforge.evaluate.metrics import evaluate_classifier, top_predictions
from genforge.models.audio import AudioCNN, AudioCNNConfig, AudioGRU, AudioGRUConfig

MODELS = {
    "cnn": (AudioCNNConfig, AudioCNN),
    "gru": (AudioGRUConfig, AudioGRU),
}

TASK = "audio-classification"  # what `genforge serve` offers: POST /v1/audio/transcriptions


def capabilities(cfg) -> frozenset[str]:
    """What this run can do beyond TASK (values: genforge.recipes.CAPABILITIES)."""
    return frozenset({"audio-input"})


@dataclass
class Config(TrainConfig):
    model: str = "cnn"
    data: str = "fsdd"  # fsdd | path/to/folder/<label>/<clip>.wav
    data_dir: str = ""  # extra folder searched first for named datasets
    sample_rate: Annotated[int, "[1, inf)"] = 8000  # clips are resampled to this rate (Hz)
    duration: Annotated[float, "(0, inf)"] = 1.0  # seconds per clip: shorter ones are zero-padded, longer ones cropped
    n_fft: Annotated[int, "[2, inf)"] = 256  # STFT window and FFT size (samples)
    hop: Annotated[int, "[1, inf)"] = 128  # STFT hop (samples)
    n_mels: Annotated[int, "[1, inf)"] = 40  # mel bands
    val_fraction: Annotated[float, "[0, 1)"] = 0.1  # carved from train with a fixed seed
    test_fraction: Annotated[float, "[0, 1)"] = 0.2  # carved as test from folders (fsdd has its customary split)
    holdout_speaker: str = ""  # fsdd: test on this speaker alone and train on the others (speaker-independent accuracy)
    train_limit: Annotated[int, "[0, inf)"] = 0  # use only the first N training clips (0 = all)
    spec_augment: bool = True  # augmentation: SpecAugment frequency and time masks (Park et al. 2019)
    freq_width: Annotated[int, "[0, inf)"] = 6  # widest frequency mask (mel bins), two per clip
    time_width: Annotated[int, "[0, inf)"] = 8  # widest time mask (frames), two per clip
    batch_size: int = 64
    epochs: float = 20.0
    lr: float = 3e-3
    metric: str = "val_accuracy"
    metric_mode: str = "max"
    # filled from the data by `build`, saved in config.json so runs load without the data
    classes: list[str] = field(default_factory=list)
    mean: float = 0.0
    std: Annotated[float, "(0, inf)"] = 1.0


PRESETS = {
    "cnn-fsdd": ({"model": "cnn", "data": "fsdd", "epochs": 25, "batch_size": 64, "lr": 3e-3,
                  "weight_decay": 0.01, "warmup_steps": 50, "model.channels": (16, 32, 64),
                  "model.dense": 64},
                 "log-mel CNN on the Free Spoken Digit Dataset (a few minutes on 2 CPU cores)"),
    "gru-fsdd": ({"model": "gru", "data": "fsdd", "epochs": 20, "batch_size": 64, "lr": 3e-3,
                  "weight_decay": 0.01, "warmup_steps": 50, "grad_clip": 1.0,
                  "model.hidden": 96, "model.layers": 2},
                 "bidirectional GRU over log-mel frames of FSDD (98.3% test accuracy in ~2 CPU-minutes; bench/README.md)"),
}

_TINY = {"data": "fsdd", "max_steps": 2, "batch_size": 8, "train_limit": 64, "eval_batches": 2,
         "plots": False}
TEST_CONFIGS = {
    "cnn": {**_TINY, "model": "cnn", "model.channels": (4, 8), "model.dense": 8},
    "gru": {**_TINY, "model": "gru", "model.hidden": 8, "model.layers": 1},
}


# ---------------------------------------------------------------------------------------
# data


def features(cfg: Config) -> Features:
    return Features(cfg.sample_rate, cfg.n_fft, cfg.hop, cfg.n_mels)


def clip_length(cfg: Config) -> int:
    return int(round(cfg.duration * cfg.sample_rate))


@functools.lru_cache(maxsize=4)
def _log_mels(data: str, data_dir: str, feats: Features, length: int) -> torch.Tensor:
    s = load_audio_set(data, data_dir, feats.sample_rate, length)
    return torch.cat([log_mel(w, feats) for w in s.waves.split(256)])[:, None]  # (N, 1, n_mels, T)


def _splits(cfg: Config) -> tuple[dict, list[str]]:
    """{train, val, test: (log-mels (N, 1, n_mels, T), labels)} and class names."""
    s = load_audio_set(cfg.data, cfg.data_dir, cfg.sample_rate, clip_length(cfg))
    x = _log_mels(cfg.data, cfg.data_dir, features(cfg), clip_length(cfg))
    y = s.labels
    n = len(y)
    if cfg.holdout_speaker:
        if cfg.holdout_speaker not in s.speakers:
            raise ConfigError(f"holdout_speaker={cfg.holdout_speaker!r} is not a speaker of "
                              f"{cfg.data}; speakers: {', '.join(sorted(set(s.speakers) - {''}))}")
        is_test = torch.tensor([sp == cfg.holdout_speaker for sp in s.speakers])
    elif any(s.groups):  # the dataset's own split
        is_test = torch.tensor([g == "test" for g in s.groups])
    else:
        is_test = torch.zeros(n, dtype=torch.bool)
        is_test[carve(n, cfg.test_fraction)[1]] = True
    test_idx, train_idx = is_test.nonzero()[:, 0], (~is_test).nonzero()[:, 0]
    keep, val = carve(len(train_idx), cfg.val_fraction)
    keep = keep.sort().values
    if cfg.train_limit:
        keep = keep[:cfg.train_limit]
    val = train_idx[val.sort().values]
    train_idx = train_idx[keep]
    return ({"train": (x[train_idx], y[train_idx]), "val": (x[val], y[val]),
             "test": (x[test_idx], y[test_idx])}, s.classes)


def _normalize(x: torch.Tensor, cfg: Config) -> torch.Tensor:
    return (x - cfg.mean) / cfg.std


def audio_input(cfg: Config, items: list) -> tuple[torch.Tensor, list[str | None]]:
    """Files or bytes -> (normalised log-mels (N, 1, n_mels, T), per item a note when the clip
    was cropped, else None). What `classify`, `predict` and `genforge explain` feed the model."""
    clips = [load_clip(it, cfg.sample_rate, clip_length(cfg)) for it in items]
    notes = [f"note: {'the upload' if isinstance(it, (bytes, bytearray)) else it} is "
             f"{c.seconds:.1f} s long; only its first {cfg.duration:g} s were classified "
             "(the run's `duration`)" if c.cropped else None for it, c in zip(items, clips)]
    x = log_mel(torch.stack([c.wave for c in clips]), features(cfg))[:, None]
    return _normalize(x, cfg), notes


def build(cfg: Config, run_dir=None) -> torch.nn.Module:
    if not cfg.classes:  # first build (training): classes and statistics from the data
        splits, classes = _splits(cfg)
        x = splits["train"][0]
        cfg.classes = list(classes)
        cfg.mean, cfg.std = round(x.mean().item(), 6), round(x.std().item(), 6)
    mc = cfg.model_cfg
    mc.n_mels, mc.n_classes = cfg.n_mels, len(cfg.classes)
    return MODELS[cfg.model][1](mc)


def batches(cfg: Config, split: str, start_step: int = 0, model=None):
    splits, _ = _splits(cfg)
    if split not in splits:
        raise ValueError(f"unknown split {split!r}; use train, val or test")
    x, y = splits[split]
    if split != "train":
        return sequential_batches((_normalize(x, cfg), y), cfg.batch_size, cfg.eval_batches)

    def transform(batch, gen):
        xb, yb = batch
        xb = _normalize(xb, cfg)
        if cfg.spec_augment:  # masked to 0 = the normalised mean
            xb = spec_augment(xb, gen, freq_width=cfg.freq_width, time_width=cfg.time_width)
        return xb, yb

    return ShuffledBatches((x, y), cfg.batch_size, cfg.seed, start_step, transform)


def loss(model, batch) -> dict:
    x, y = batch
    logits = model(x)
    return {"loss": F.cross_entropy(logits, y), "accuracy": (logits.argmax(-1) == y).float().mean()}


def evaluate(model, cfg: Config, split: str = "val") -> dict:
    return evaluate_classifier(model, batches(cfg, split), len(cfg.classes))


@torch.no_grad()
def classify(model, cfg: Config, inputs: list, top: int = 3) -> list[dict]:
    """Clips (WAV/FLAC bytes or file paths) -> [{input, label, probability, top, note?}]."""
    device = next(model.parameters()).device
    x, notes = audio_input(cfg, inputs)
    was_training = model.training
    model.eval()
    try:
        probs = F.softmax(model(x.to(device)).float(), dim=-1)
    finally:
        model.train(was_training)
    out = top_predictions(probs, cfg.classes, inputs, top)
    for i, (r, item, note) in enumerate(zip(out, inputs, notes)):
        if isinstance(item, (bytes, bytearray)):
            r["input"] = f"clip {i}"
        if note:
            r["note"] = note
    return out


def predict(model, cfg: Config, inputs: list[str], top: int = 3) -> list[dict]:
    """Audio files -> [{input, label, probability, top}]; a cropped clip is noted on stderr."""
    results = classify(model, cfg, inputs, top)
    for r in results:
        if "note" in r:
            print(r.pop("note"), file=sys.stderr)
    return results
