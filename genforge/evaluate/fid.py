"""Quality metrics for image generators, computed in the feature space of a genforge
classifier trained on the same dataset.

The usual FID (Heusel et al. 2017) and Inception Score (Salimans et al. 2016) use an
ImageNet Inception-v3 network whose weights cannot be downloaded on offline machines, and
whose features say little about 28x28 grey images anyway. Here the feature network is a
genforge `image-classify` run (e.g. the `cnn-fashion` preset): features are the input of its
last linear layer, probabilities its softmax. The numbers are therefore "FID (genforge
features)" and an "Inception-Score analogue": comparable between models scored with the same
classifier run, NOT with published Inception FIDs. `inception_fid` computes the standard one
with torchmetrics for users who have the Inception weights (package `torch-fidelity`).

Also here: class-consistency of conditional samples (the classifier's accuracy on images
generated for a requested class) and the real-data reference FID (test vs train) that says
what a perfect generator would score with the same features and sample sizes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------
# the math


def gaussian_stats(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features -> mean (D,) and unbiased covariance (D, D), float64."""
    f = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features,
                   dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors of shape (N, D), got {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2):
    |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)).

    tr((s1 s2)^(1/2)) = tr((s1^(1/2) s2 s1^(1/2))^(1/2)): the inner matrix is symmetric PSD,
    so a symmetric eigendecomposition gives it exactly, without the complex round-off that a
    general `sqrtm(s1 @ s2)` produces for near-singular covariances."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: means {mu1.shape}, {mu2.shape}; covariances {s1.shape}, {s2.shape}")
    r1 = _sqrt_psd(s1)
    inner = np.linalg.eigvalsh(r1 @ s2 @ r1)
    tr_sqrt = np.sqrt(np.clip(inner, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def fid_from_features(real: torch.Tensor, fake: torch.Tensor) -> float:
    return frechet_distance(*gaussian_stats(real), *gaussian_stats(fake))


def inception_score(probs: torch.Tensor, eps: float = 1e-12) -> float:
    """exp(E_x KL(p(y|x) || p(y))) over (N, K) class probabilities: K for confident,
    class-balanced samples, 1 for samples that all look alike (Salimans et al. 2016)."""
    p = probs.double().clamp_min(eps)
    marginal = p.mean(0, keepdim=True)
    kl = (p * (p.log() - marginal.log())).sum(1)
    return float(kl.mean().exp())


def class_consistency(probs_or_logits: torch.Tensor, requested: torch.Tensor) -> float:
    """Fraction of conditional samples the classifier assigns to the class they were asked for."""
    return float((probs_or_logits.argmax(-1).cpu() == requested.cpu()).float().mean())


# ---------------------------------------------------------------------------------------
# the feature network


class FeatureClassifier:
    """A trained genforge image classifier used as the feature network.

    `features_and_probs(images)` takes images in [0, 1] (N, C, H, W), applies the classifier
    run's own input normalisation, and returns (input of the last nn.Linear, softmax)."""

    def __init__(self, model: nn.Module, mean: float = 0.0, std: float = 1.0,
                 classes: list[str] | None = None, shape: tuple[int, int, int] | None = None,
                 device: str | torch.device = "cpu"):
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError("the feature classifier has no nn.Linear layer to read features from")
        self.model = model.to(device).eval()
        self.head = linears[-1]  # modules() lists in definition order: the output layer
        self.mean, self.std = mean, std
        self.classes = list(classes or [])
        self.shape = shape
        self.device = torch.device(device)

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str | torch.device = "cpu") -> "FeatureClassifier":
        from genforge.train.checkpoint import load_run

        recipe, cfg, model = load_run(run_dir, device=device)
        if not hasattr(cfg, "classes") or not hasattr(cfg, "mean"):
            raise ValueError(f"{run_dir} is not an image-classify run; train one with "
                             "`genforge train cnn-fashion` and pass its run directory")
        return cls(model, cfg.mean, cfg.std, cfg.classes, (cfg.channels, cfg.height, cfg.width), device)

    @torch.no_grad()
    def features_and_probs(self, images: torch.Tensor, batch_size: int = 500):
        if self.shape is not None and tuple(images.shape[1:]) != tuple(self.shape):
            raise ValueError(f"images of shape {tuple(images.shape[1:])} do not match the feature "
                             f"classifier's input {tuple(self.shape)}; use a classifier trained on "
                             "the same dataset")
        captured: list[torch.Tensor] = []
        hook = self.head.register_forward_hook(lambda m, inp, out: captured.append(inp[0].detach()))
        feats, probs = [], []
        try:
            for i in range(0, len(images), batch_size):
                x = (images[i:i + batch_size].float().to(self.device) - self.mean) / self.std
                logits = self.model(x).float()
                feats.append(captured.pop().float().flatten(1).cpu())
                probs.append(F.softmax(logits, -1).cpu())
        finally:
            hook.remove()
        return torch.cat(feats), torch.cat(probs)


def real_reference(clf: FeatureClassifier, train_images: torch.Tensor, test_images: torch.Tensor,
                   n: int, seed: int = 0) -> dict:
    """FID and IS analogue of `n` real test images against `n` real train images: the score
    of a generator that reproduced the data distribution exactly (with these sample sizes)."""
    g = torch.Generator().manual_seed(seed)
    tr = train_images[torch.randperm(len(train_images), generator=g)[:n]]
    te = test_images[torch.randperm(len(test_images), generator=g)[:n]]
    f_tr, _ = clf.features_and_probs(tr)
    f_te, p_te = clf.features_and_probs(te)
    return {"fid": fid_from_features(f_tr, f_te), "is": inception_score(p_te)}


def inception_fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    """The standard Inception-v3 FID (torchmetrics), for users who have its weights
    (`pip install torch-fidelity`; the weights download on first use). Images in [0, 1];
    grey images are repeated to 3 channels and resized to 299 inside torchmetrics."""
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance

        metric = FrechetInceptionDistance(feature=2048, normalize=True)
    except (ImportError, ModuleNotFoundError, RuntimeError, OSError) as e:
        raise RuntimeError("Inception FID needs torchmetrics with torch-fidelity and the "
                           f"Inception-v3 weights, which are not available here ({e}); use the "
                           "genforge-feature FID (classifier=RUN) instead") from None

    def rgb(x):
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

    for i in range(0, len(real), 100):
        metric.update(rgb(real[i:i + 100]), real=True)
    for i in range(0, len(fake), 100):
        metric.update(rgb(fake[i:i + 100]), real=False)
    return float(metric.compute())
