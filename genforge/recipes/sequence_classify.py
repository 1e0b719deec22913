"""Recipe: images classified as sequences of pixel rows by an RNN / LSTM / GRU.

Data and splits come from the loader every image recipe shares (genforge.data.images):
Fashion-MNIST uses its 60k/10k train/test splits (validation carved from train). MNIST offline
copies often hold only the 10k test split: then that split is carved with the fixed seed into
train 8,000 (val_fraction of it for validation) / test 2,000 (test_fraction), and the run says so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import torch
import torch.nn.functional as F

from genforge.config import TrainConfig
from genforge.data.batching import ShuffledBatches, sequential_batches
from genforge.data.images import load_image, load_image_splits
from genforge.evaluate.metrics import evaluate_classifier, top_predictions
from genforge.models.seq_image import RowSequenceClassifier, SeqImageConfig

MODELS = {"rnn": (SeqImageConfig, RowSequenceClassifier)}  # the cell is `model.cell`

TASK = "image-classification"  # what `genforge serve` offers: POST /v1/classifications


def capabilities(cfg) -> frozenset[str]:
    """What this run can do beyond TASK (values: genforge.recipes.CAPABILITIES)."""
    return frozenset({"image-input"})


@dataclass
class Config(TrainConfig):
    model: str = "rnn"
    data: str = "fashion-mnist"  # fashion-mnist | mnist | digits | path/to/folder (read in grey)
    data_dir: str = ""  # extra folder searched first for named datasets
    val_fraction: Annotated[float, "[0, 1)"] = 0.1  # carved from train with a fixed seed
    test_fraction: Annotated[float, "[0, 1)"] = 0.2  # carved as test from data without a test split (offline MNIST, folders)
    train_limit: Annotated[int, "[0, inf)"] = 0  # use only the first N training images (0 = all)
    skip_bad_files: bool = False  # a folder's unreadable images: leave them out (count and names printed) instead of failing
    batch_size: int = 128
    epochs: float = 8.0
    lr: float = 2e-3
    grad_clip: float = 1.0  # recurrent nets: clip exploding gradients (Pascanu et al. 2013)
    metric: str = "val_accuracy"
    metric_mode: str = "max"
    # filled from the data by `build`
    classes: list[str] = field(default_factory=list)
    height: Annotated[int, "[0, inf)"] = 0
    width: Annotated[int, "[0, inf)"] = 0
    mean: float = 0.0
    std: Annotated[float, "(0, inf)"] = 1.0
    test_only_source: bool = False  # the data had no training split (MNIST offline copy)


PRESETS = {
    "gru-fashion-rows": ({"model.cell": "gru", "model.hidden": 128, "epochs": 8},
                         "GRU(128) reading Fashion-MNIST row by row (28 steps of 28 pixels)"),
    "lstm-fashion-rows": ({"model.cell": "lstm", "model.hidden": 128, "epochs": 8},
                          "LSTM(128) reading Fashion-MNIST row by row"),
    "gru-mnist-rows": ({"model.cell": "gru", "model.hidden": 128, "data": "mnist", "epochs": 20},
                       "GRU(128) row by row on MNIST (the test split carved when no train split)"),
}

_TEST = {"max_steps": 2, "batch_size": 16, "train_limit": 256, "eval_batches": 2,
         "model.hidden": 8}
TEST_CONFIGS = {
    "gru-fashion": {**_TEST, "model.cell": "gru"},
    "lstm-mnist-test-split": {**_TEST, "model.cell": "lstm", "data": "mnist",
                              "model.bidirectional": True},
}


def _load(cfg: Config):
    """The one image loader every image recipe shares (genforge.data.images), in grey."""
    return load_image_splits(cfg.data, cfg.data_dir, cfg.val_fraction, cfg.test_fraction,
                             cfg.train_limit, channels=1, skip_bad_files=cfg.skip_bad_files)


def _splits(cfg: Config) -> dict:
    """{train, val, test: (uint8 images (N, 1, H, W), labels)}."""
    return _load(cfg).splits


def _normalize(x: torch.Tensor, cfg: Config) -> torch.Tensor:
    return (x.float() / 255.0 - cfg.mean) / cfg.std


def build(cfg: Config, run_dir=None) -> torch.nn.Module:
    if not cfg.classes:
        d = _load(cfg)  # says so when the test split had to be carved (offline MNIST)
        x = d.splits["train"][0].float() / 255.0
        cfg.classes, cfg.test_only_source = d.classes, d.train_missing
        cfg.height, cfg.width = x.shape[2], x.shape[3]
        cfg.mean, cfg.std = round(x.mean().item(), 6), round(x.std().item(), 6)
    mc = cfg.model_cfg
    mc.in_channels, mc.width, mc.n_classes = 1, cfg.width, len(cfg.classes)
    return RowSequenceClassifier(mc)


def batches(cfg: Config, split: str, start_step: int = 0, model=None):
    splits = _splits(cfg)
    if split not in splits:
        raise ValueError(f"unknown split {split!r}; use train, val or test")
    x, y = splits[split]
    if split != "train":
        return sequential_batches((_normalize(x, cfg), y), cfg.batch_size, cfg.eval_batches)
    return ShuffledBatches((x, y), cfg.batch_size, cfg.seed, start_step,
                           transform=lambda b, gen: (_normalize(b[0], cfg), b[1]))


def loss(model, batch) -> dict:
    x, y = batch
    logits = model(x)
    return {"loss": F.cross_entropy(logits, y), "accuracy": (logits.argmax(-1) == y).float().mean()}


def evaluate(model, cfg: Config, split: str = "val") -> dict:
    return evaluate_classifier(model, batches(cfg, split), len(cfg.classes))


def load_inputs(cfg: Config, paths: list) -> torch.Tensor:
    """Image files (or encoded image bytes) -> normalised (N, H, W) model inputs (grey,
    resized to the training size)."""
    x = torch.stack([load_image(p, 1, (cfg.height, cfg.width))[0] for p in paths])
    return _normalize(x, cfg)


@torch.no_grad()
def classify(model, cfg: Config, images: list, top: int = 3) -> list[dict]:
    """Images (encoded PNG/JPEG bytes or file paths) -> [{input, label, probability, top}]."""
    device = next(model.parameters()).device
    probs = model(load_inputs(cfg, images).to(device)).float().softmax(-1)
    return top_predictions(probs, cfg.classes, images, top)


def predict(model, cfg: Config, inputs: list[str], top: int = 3) -> list[dict]:
    """Image files -> [{input, label, probability, top: [(label, p), ...]}]."""
    return classify(model, cfg, inputs, top)
