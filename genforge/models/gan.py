"""DCGAN (Radford et al. 2016) for small images (28x28 by default), optionally
class-conditional.

Generator: z (+ one-hot label, as in Mirza & Osindero 2014) -> linear -> (4c, s, s) -> two
stride-2 transposed convs -> tanh image in [-1, 1]. Discriminator: two stride-2 convs with
LeakyReLU(0.2), BatchNorm after the first (DCGAN's rule: none on the input layer) -> a
linear logit; the conditional D adds the projection term <embed(y), phi(x)> of Miyato &
Koyama (2018, "cGANs with Projection Discriminator"), which ties samples to their class more
firmly than feeding the label as input.

Losses (Goodfellow et al. 2014): D minimises BCE(real=1, fake=0); G minimises the
non-saturating -log D(G(z)) (section 3 of the paper: it gives strong gradients early, when D
rejects every sample). There are two optimisers, so the model exposes `d_loss` and `g_loss`
and the recipe owns the alternating update.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn as nn
import torch.nn.functional as F


def dcgan_init(m: nn.Module) -> None:
    """N(0, 0.02) weights, BatchNorm gamma ~ N(1, 0.02) (DCGAN, section 4)."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if getattr(m, "bias", None) is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


@dataclass
class GANConfig:
    image_size: Annotated[int, "[0, inf)"] = 28  # filled by the recipe from the data; must be divisible by 4
    channels: Annotated[int, "[0, inf)"] = 1
    n_classes: Annotated[int, "[0, inf)"] = 0  # 0 = unconditional
    z_dim: Annotated[int, "[1, inf)"] = 64
    g_channels: Annotated[int, "[1, inf)"] = 32  # c: the generator's widest map has 4c channels at size/4
    d_channels: Annotated[int, "[1, inf)"] = 32


class Generator(nn.Module):
    def __init__(self, cfg: GANConfig):
        super().__init__()
        c, self.s = cfg.g_channels, cfg.image_size // 4
        self.c = c
        self.n_classes = cfg.n_classes
        self.fc = nn.Sequential(
            nn.Linear(cfg.z_dim + cfg.n_classes, 4 * c * self.s * self.s, bias=False),
            nn.BatchNorm1d(4 * c * self.s * self.s), nn.ReLU(),
        )
        self.net = nn.Sequential(
            nn.ConvTranspose2d(4 * c, 2 * c, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * c), nn.ReLU(),
            nn.ConvTranspose2d(2 * c, cfg.channels, 4, 2, 1), nn.Tanh(),
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.n_classes:
            z = torch.cat([z, F.one_hot(y.long(), self.n_classes).float()], dim=1)
        h = self.fc(z).view(-1, 4 * self.c, self.s, self.s)  # (B, 4c, H/4, W/4)
        return self.net(h)  # (B, C, H, W) in [-1, 1]


class Discriminator(nn.Module):
    def __init__(self, cfg: GANConfig):
        super().__init__()
        c, s = cfg.d_channels, cfg.image_size // 4
        self.features = nn.Sequential(
            nn.Conv2d(cfg.channels, c, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(c, 2 * c, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * c), nn.LeakyReLU(0.2),
        )
        self.out = nn.Linear(2 * c * s * s, 1)
        self.embed = nn.Embedding(cfg.n_classes, 2 * c * s * s) if cfg.n_classes else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B,)."""
        phi = self.features(x).flatten(1)  # (B, 2c * H/4 * W/4)
        logit = self.out(phi).squeeze(1)
        if self.embed is not None:
            logit = logit + (self.embed(y.long()) * phi).sum(1)  # projection term
        return logit


class GAN(nn.Module):
    def __init__(self, cfg: GANConfig):
        super().__init__()
        if cfg.image_size % 4:
            raise ValueError(f"the DCGAN needs image_size divisible by 4, got {cfg.image_size}")
        self.cfg = cfg
        self.generator = Generator(cfg)
        self.discriminator = Discriminator(cfg)
        self.apply(dcgan_init)

    def noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(n, self.cfg.z_dim, generator=generator)
        return z.to(next(self.parameters()).device)

    def _check_labels(self, y):
        if self.cfg.n_classes and y is None:
            raise ValueError("this GAN is class-conditional: pass labels y (class ids)")

    def d_loss(self, real: torch.Tensor, fake: torch.Tensor, y: torch.Tensor | None = None) -> dict:
        """Discriminator loss on a real batch and a (detached) fake batch, both in [-1, 1].
        Also returns the mean D(x) and D(G(z)) probabilities, the usual health signals."""
        self._check_labels(y)
        lr = self.discriminator(real, y)
        lf = self.discriminator(fake.detach(), y)
        # BCE(real=1) + BCE(fake=0), written with softplus for stability
        loss = F.softplus(-lr).mean() + F.softplus(lf).mean()
        return {"loss": loss, "d_real": torch.sigmoid(lr).mean().detach(),
                "d_fake": torch.sigmoid(lf).mean().detach()}

    def g_loss(self, fake: torch.Tensor, y: torch.Tensor | None = None) -> dict:
        """Non-saturating generator loss -log D(G(z)) (Goodfellow et al. 2014, section 3)."""
        self._check_labels(y)
        lf = self.discriminator(fake, y)
        return {"loss": F.softplus(-lf).mean(), "d_fake_g": torch.sigmoid(lf).mean().detach()}

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """n images in [0, 1]; the generator runs in eval mode (BatchNorm running stats)."""
        self._check_labels(y)
        was_training = self.generator.training
        self.generator.eval()
        z = self.noise(n, generator)
        y = None if y is None else y.to(z.device)
        x = self.generator(z, y)
        self.generator.train(was_training)
        return (x + 1) / 2
