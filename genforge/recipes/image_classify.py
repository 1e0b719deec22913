"""Recipe: image classification (MLP, CNN, small ResNet) on named datasets or an image folder."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated
import torch
import torch.nn.functional as F

from genforge.config import TrainConfig
from genforge.data.batching import ShuffledBatches, sequential_batches
from genforge.data.images import load_image, load_image_splits, random_crop_flip
from genforge.evaluate.metrics import evaluate_classifier, top_predictions
from genforge.models.cnn import CNN, CNNConfig, ResNet, ResNetConfig
from genforge.models.mlp import MLP, MLPConfig

MODELS = {
    "mlp": (MLPConfig, MLP),
    "cnn": (CNNConfig, CNN),
    "resnet": (ResNetConfig, ResNet),
}


TASK = "image-classification"  # what `genforge serve` offers: POST /v1/classifications


def capabilities(cfg) -> frozenset[str]:
    """What this run can do beyond TASK (values: genforge.recipes.CAPABILITIES)."""
    return frozenset({"image-input"})


@dataclass
class Config(TrainConfig):
    model: str = "cnn"
    data: str = "fashion-mnist"  # fashion-mnist | mnist | digits | cifar10 | path/to/folder
    data_dir: str = ""  # extra folder searched first for named datasets
    val_fraction: Annotated[float, "[0, 1)"] = 0.1  # carved from train with a fixed seed
    test_fraction: Annotated[float, "[0, 1)"] = 0.2  # carved as test from data without a test split (digits, folders, offline MNIST)
    train_limit: Annotated[int, "[0, inf)"] = 0  # use only the first N training images (0 = all)
    crop_pad: Annotated[int, "[0, inf)"] = 0  # augmentation: random crop after padding by this many pixels
    flip: bool = False  # augmentation: random horizontal flip
    image_size: Annotated[int, "[0, inf)"] = 0  # resize images of a folder to this side (0 = keep the first's size)
    max_image_pixels: Annotated[int, "[0, inf)"] = 0  # refuse (before decoding) images with more pixels (0 = 64x the input, at least 4096x4096)
    skip_bad_files: bool = False  # a folder's unreadable images: leave them out (count and names printed) instead of failing
    batch_size: int = 128
    epochs: float = 5.0
    metric: str = "val_accuracy"
    metric_mode: str = "max"
    # filled from the data by `build`, saved in config.json so runs load without the data
    classes: list[str] = field(default_factory=list)
    channels: Annotated[int, "[0, inf)"] = 0
    height: Annotated[int, "[0, inf)"] = 0
    width: Annotated[int, "[0, inf)"] = 0
    mean: float = 0.0
    std: Annotated[float, "(0, inf)"] = 1.0


PRESETS = {
    "quickstart": ({"model": "cnn", "data": "fashion-mnist", "epochs": 1, "batch_size": 128,
                    "model.channels": (16, 32), "model.dense": 64, "lr": 2e-3,
                    "eval_every": 100},
                   "small CNN, one epoch of Fashion-MNIST (about a minute on 2 CPU cores)"),
    "mlp-digits": ({"model": "mlp", "data": "digits", "epochs": 60, "batch_size": 32, "lr": 3e-3,
                    "weight_decay": 0.1, "model.hidden": (64, 64), "model.dropout": 0.1},
                   "the classic Dense 64-64-10 network on scikit-learn's 8x8 digits"),
    "cnn-digits": ({"model": "cnn", "data": "digits", "epochs": 40, "batch_size": 32, "lr": 3e-3,
                    "model.channels": (32, 64), "model.dense": 64, "model.dropout": 0.2},
                   "conv-pool-conv-dense on scikit-learn's 8x8 digits"),
    "mlp-fashion": ({"model": "mlp", "data": "fashion-mnist", "epochs": 10, "batch_size": 128,
                     "lr": 1e-3, "model.hidden": (512, 256), "model.dropout": 0.2,
                     "weight_decay": 0.01},
                    "MLP 784-512-256-10 with dropout on Fashion-MNIST"),
    "cnn-fashion": ({"model": "cnn", "data": "fashion-mnist", "epochs": 11, "batch_size": 128,
                     "lr": 3e-3, "weight_decay": 0.01, "warmup_ratio": 0.0216, "crop_pad": 2,
                     "flip": True, "model.channels": (32, 64, 128), "model.dense": 128,
                     "model.batch_norm": True, "model.dropout": 0.2},
                    "conv-BN-pool x3 + dense, crop+flip augmentation, Fashion-MNIST (~5 min on 2 CPU cores)"),
    "resnet-fashion": ({"model": "resnet", "data": "fashion-mnist", "epochs": 10, "batch_size": 128,
                        "lr": 3e-3, "weight_decay": 0.05, "warmup_ratio": 0.0475, "crop_pad": 2,
                        "flip": True, "model.widths": (32, 64, 128), "model.label_smoothing": 0.1},
                       "small residual CNN with crop+flip augmentation (a GPU-sized run)"),
    "cnn-cifar10": ({"model": "cnn", "data": "cifar10", "epochs": 10, "batch_size": 64,
                     "model.channels": (32, 64, 64), "model.dense": 64},
                    "the textbook conv-pool-conv-pool-dense CIFAR-10 network"),
}

TEST_CONFIGS = {
    "mlp-digits": {"model": "mlp", "data": "digits", "max_steps": 2, "batch_size": 16,
                   "model.hidden": (16,), "eval_batches": 2},
    "cnn-fashion": {"model": "cnn", "data": "fashion-mnist", "max_steps": 2, "batch_size": 16,
                    "train_limit": 256, "model.channels": (4, 8), "model.dense": 8,
                    "crop_pad": 2, "flip": True, "eval_batches": 2},
    "resnet-digits": {"model": "resnet", "data": "digits", "max_steps": 2, "batch_size": 16,
                      "model.widths": (4, 8), "eval_batches": 2},
}


# ---------------------------------------------------------------------------------------
# data


def _splits(cfg: Config) -> tuple[dict, list[str]]:
    """{train, val, test: (uint8 images (N, C, H, W), labels)} and class names, by the one
    image loader every image recipe shares (genforge.data.images.load_image_splits)."""
    d = load_image_splits(cfg.data, cfg.data_dir, cfg.val_fraction, cfg.test_fraction,
                          cfg.train_limit, cfg.image_size, cfg.channels, cfg.max_image_pixels,
                          skip_bad_files=cfg.skip_bad_files)
    return d.splits, d.classes


def data_summary(cfg: Config) -> list[str]:
    """What training reads, printed before it starts: split sizes, image shape, classes with
    their training counts."""
    splits, classes = _splits(cfg)
    x, y = splits["train"]
    counts = torch.bincount(y, minlength=len(classes)).tolist()
    per_class = ", ".join(f"{c} {n}" for c, n in list(zip(classes, counts))[:20])
    more = f", ... ({len(classes)} classes)" if len(classes) > 20 else ""
    return [f"{cfg.data}: " + ", ".join(f"{k} {len(v[1]):,}" for k, v in splits.items())
            + f" images of {x.shape[1]}x{x.shape[2]}x{x.shape[3]}",
            f"{len(classes)} classes, training images per class: {per_class}{more}"]


def _normalize(x: torch.Tensor, cfg: Config) -> torch.Tensor:
    return (x.float() / 255.0 - cfg.mean) / cfg.std


def build(cfg: Config, run_dir=None) -> torch.nn.Module:
    if not cfg.classes:  # first build (training): read shapes and statistics from the data
        splits, classes = _splits(cfg)
        x = splits["train"][0]
        cfg.classes = list(classes)
        cfg.channels, cfg.height, cfg.width = x.shape[1], x.shape[2], x.shape[3]
        xf = x.float() / 255.0
        cfg.mean, cfg.std = round(xf.mean().item(), 6), round(xf.std().item(), 6)
    mc = cfg.model_cfg
    if isinstance(mc, MLPConfig):
        mc.in_features = cfg.channels * cfg.height * cfg.width
    else:
        mc.in_channels, mc.image_size = cfg.channels, cfg.height
    mc.n_classes = len(cfg.classes)
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
        if cfg.crop_pad or cfg.flip:
            # pad with the normalised value of black so padding looks like background
            xb = random_crop_flip(xb + cfg.mean / cfg.std, gen, cfg.crop_pad, cfg.flip) - cfg.mean / cfg.std
        return xb, yb

    return ShuffledBatches((x, y), cfg.batch_size, cfg.seed, start_step, transform)


def loss(model, batch) -> dict:
    x, y = batch
    logits = model(x)
    ls = getattr(getattr(model, "cfg", None), "label_smoothing", 0.0)
    return {"loss": F.cross_entropy(logits, y, label_smoothing=ls),
            "accuracy": (logits.argmax(-1) == y).float().mean()}


def evaluate(model, cfg: Config, split: str = "val") -> dict:
    return evaluate_classifier(model, batches(cfg, split), len(cfg.classes))


@torch.no_grad()
def classify(model, cfg: Config, images: list, top: int = 3) -> list[dict]:
    """Images (encoded PNG/JPEG bytes or file paths) -> [{input, label, probability, top}]."""
    device = next(model.parameters()).device
    x = torch.stack([load_image(p, cfg.channels, (cfg.height, cfg.width), cfg.max_image_pixels)
                     for p in images])
    probs = F.softmax(model(_normalize(x, cfg).to(device)).float(), dim=-1)
    return top_predictions(probs, cfg.classes, images, top)


def predict(model, cfg: Config, inputs: list[str], top: int = 3) -> list[dict]:
    """Image files -> [{input, label, probability, top: [(label, p), ...]}]."""
    return classify(model, cfg, inputs, top)
