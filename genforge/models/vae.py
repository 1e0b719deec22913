"""Variational autoencoders: the MLP VAE of Kingma & Welling (2014, "Auto-Encoding
Variational Bayes", 784-400-20) and a small convolutional VAE, both optionally
class-conditional (CVAE, Sohn et al. 2015: the one-hot label is given to encoder and decoder).

Images are in [0, 1]. The decoder outputs Bernoulli logits per pixel, so the reconstruction
term is the summed binary cross-entropy (the paper's choice for MNIST; on grey levels this is
a convention rather than a normalised likelihood, see `negative_elbo`). The model owns its loss
(`forward` returns recon, KL and loss = recon + beta * KL, all per image, averaged over the
batch) and its samplers (`sample`, `reconstruct`, `interpolate`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------
# helpers


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) per row, in nats.

    Closed form (Kingma & Welling 2014, appendix B): -1/2 * sum(1 + logvar - mu^2 - exp(logvar)).
    """
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=-1)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps with eps ~ N(0, I): the sample is a differentiable function of
    (mu, logvar), which is what lets the ELBO be optimised by backprop (ibid., section 2.4)."""
    std = torch.exp(0.5 * logvar)
    return mu + std * torch.randn_like(std)


def one_hot(y: torch.Tensor | None, n_classes: int, device) -> torch.Tensor | None:
    if n_classes == 0:
        return None
    if y is None:
        raise ValueError("this VAE is class-conditional: pass labels y (a LongTensor of class ids)")
    return F.one_hot(y.to(device).long(), n_classes).float()


# ---------------------------------------------------------------------------------------
# encoders / decoders


class MLPEncoder(nn.Module):
    def __init__(self, cfg: "VAEConfig"):
        super().__init__()
        d_in = cfg.channels * cfg.image_size**2 + cfg.n_classes
        self.hidden = nn.Linear(d_in, cfg.hidden)
        self.mu = nn.Linear(cfg.hidden, cfg.latent)
        self.logvar = nn.Linear(cfg.hidden, cfg.latent)

    def forward(self, x, c):
        h = x.flatten(1)  # (B, C*H*W)
        if c is not None:
            h = torch.cat([h, c], dim=1)
        h = F.relu(self.hidden(h))
        return self.mu(h), self.logvar(h)


class MLPDecoder(nn.Module):
    def __init__(self, cfg: "VAEConfig"):
        super().__init__()
        self.shape = (cfg.channels, cfg.image_size, cfg.image_size)
        self.hidden = nn.Linear(cfg.latent + cfg.n_classes, cfg.hidden)
        self.out = nn.Linear(cfg.hidden, math.prod(self.shape))

    def forward(self, z, c):
        if c is not None:
            z = torch.cat([z, c], dim=1)
        logits = self.out(F.relu(self.hidden(z)))
        return logits.view(-1, *self.shape)  # (B, C, H, W)


class ConvEncoder(nn.Module):
    """28 -> 14 -> 7 with stride-2 convs; the label enters as extra constant input planes."""

    def __init__(self, cfg: "VAEConfig"):
        super().__init__()
        ch = cfg.conv_channels
        self.net = nn.Sequential(
            nn.Conv2d(cfg.channels + cfg.n_classes, ch, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(ch, 2 * ch, 4, 2, 1), nn.ReLU(),
        )
        s = cfg.image_size // 4
        self.hidden = nn.Linear(2 * ch * s * s, cfg.hidden)
        self.mu = nn.Linear(cfg.hidden, cfg.latent)
        self.logvar = nn.Linear(cfg.hidden, cfg.latent)

    def forward(self, x, c):
        if c is not None:
            planes = c[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])  # (B, K, H, W)
            x = torch.cat([x, planes], dim=1)
        h = self.net(x).flatten(1)  # (B, 2ch * H/4 * W/4)
        h = F.relu(self.hidden(h))
        return self.mu(h), self.logvar(h)


class ConvDecoder(nn.Module):
    def __init__(self, cfg: "VAEConfig"):
        super().__init__()
        ch, self.s = cfg.conv_channels, cfg.image_size // 4
        self.ch = ch
        self.hidden = nn.Sequential(
            nn.Linear(cfg.latent + cfg.n_classes, cfg.hidden), nn.ReLU(),
            nn.Linear(cfg.hidden, 2 * ch * self.s * self.s), nn.ReLU(),
        )
        self.net = nn.Sequential(
            nn.ConvTranspose2d(2 * ch, ch, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(ch, cfg.channels, 4, 2, 1),
        )

    def forward(self, z, c):
        if c is not None:
            z = torch.cat([z, c], dim=1)
        h = self.hidden(z).view(-1, 2 * self.ch, self.s, self.s)  # (B, 2ch, H/4, W/4)
        return self.net(h)  # (B, C, H, W) logits


# ---------------------------------------------------------------------------------------
# config and model


@dataclass
class VAEConfig:
    arch: Literal["mlp", "conv"] = "mlp"
    image_size: Annotated[int, "[0, inf)"] = 28  # filled by the recipe from the data; conv needs a multiple of 4
    channels: Annotated[int, "[0, inf)"] = 1
    n_classes: Annotated[int, "[0, inf)"] = 0  # 0 = unconditional; >0 = CVAE conditioned on a one-hot label
    hidden: Annotated[int, "[1, inf)"] = 400  # 784-400-20 (Kingma & Welling 2014)
    latent: Annotated[int, "[1, inf)"] = 20
    conv_channels: Annotated[int, "[1, inf)"] = 32
    beta: Annotated[float, "[0, inf)"] = 1.0  # weight of the KL term; 1 = the ELBO (beta-VAE, Higgins et al. 2017)


class VAE(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        if cfg.arch == "conv" and cfg.image_size % 4:
            raise ValueError(f"the conv VAE needs image_size divisible by 4, got {cfg.image_size}")
        self.cfg = cfg
        if cfg.arch == "mlp":
            self.encoder, self.decoder = MLPEncoder(cfg), MLPDecoder(cfg)
        elif cfg.arch == "conv":
            self.encoder, self.decoder = ConvEncoder(cfg), ConvDecoder(cfg)
        else:
            raise ValueError(f"unknown VAE arch {cfg.arch!r}; choose mlp or conv")

    def _cond(self, y):
        return one_hot(y, self.cfg.n_classes, next(self.parameters()).device)

    def encode(self, x, y=None):
        return self.encoder(x, self._cond(y))

    def decode(self, z, y=None):
        """Latents -> Bernoulli logits (B, C, H, W)."""
        return self.decoder(z, self._cond(y))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict:
        """x: (B, C, H, W) in [0, 1]. Returns per-image means over the batch of the
        reconstruction term (summed BCE, nats), the KL (nats) and loss = recon + beta * KL."""
        c = self._cond(y)
        mu, logvar = self.encoder(x, c)
        z = reparameterize(mu, logvar)
        logits = self.decoder(z, c)
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
        kl = kl_standard_normal(mu, logvar)
        return {
            "loss": (recon + self.cfg.beta * kl).mean(),
            "recon": recon.mean(),
            "kl": kl.mean(),
        }

    @torch.no_grad()
    def negative_elbo(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """-ELBO per image in nats (beta = 1, one posterior sample): an upper bound on
        -log p(x) under the Bernoulli decoder. On grey-level images the Bernoulli likelihood is
        the conventional (not normalised) choice, so compare these numbers only with models
        scored the same way."""
        c = self._cond(y)
        mu, logvar = self.encoder(x, c)
        logits = self.decoder(reparameterize(mu, logvar), c)
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
        return recon + kl_standard_normal(mu, logvar)  # (B,)

    # -- samplers ------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None, generator=None) -> torch.Tensor:
        """n images in [0, 1] (the decoder's Bernoulli means) from z ~ N(0, I)."""
        dev = next(self.parameters()).device
        z = torch.randn(n, self.cfg.latent, generator=generator, device="cpu").to(dev)
        return torch.sigmoid(self.decode(z, y))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decode the posterior mean: the deterministic reconstruction."""
        mu, _ = self.encode(x, y)
        return torch.sigmoid(self.decode(mu, y))

    @torch.no_grad()
    def interpolate(self, x1: torch.Tensor, x2: torch.Tensor, steps: int = 8,
                    y1: torch.Tensor | None = None, y2: torch.Tensor | None = None) -> torch.Tensor:
        """Decode `steps` points on the straight line between the posterior means of two
        images (each (C, H, W)); returns (steps, C, H, W). A conditional model keeps the label
        of x1 (so the strip shows style changing within one class) unless y2 is given."""
        yy1 = None if y1 is None else y1.view(1)
        yy2 = yy1 if y2 is None else y2.view(1)
        mu1, _ = self.encode(x1[None], yy1)
        mu2, _ = self.encode(x2[None], yy2)
        w = torch.linspace(0, 1, steps, device=mu1.device)[:, None]  # (steps, 1)
        z = (1 - w) * mu1 + w * mu2  # (steps, latent)
        c = None
        if self.cfg.n_classes:
            c = (1 - w) * self._cond(yy1) + w * self._cond(yy2)  # soft label path
        return torch.sigmoid(self.decoder(z, c))
