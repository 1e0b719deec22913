"""Denoising diffusion (DDPM, Ho et al. 2020) with a small U-Net, optional class
conditioning with classifier-free guidance (Ho & Salimans 2022) and the DDIM sampler
(Song et al. 2021) for fast sampling with a configurable number of steps.

Images live in [-1, 1] inside the model; `sample` returns [0, 1]. The network predicts the
noise eps added by the forward process q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I), and
the loss is the paper's "simple" objective ||eps - eps_theta(x_t, t)||^2 with t uniform
(optionally Min-SNR weighted per timestep, `min_snr_gamma`). With `prediction="v"` it predicts
v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 instead (Salimans & Ho 2022), which stays
well-conditioned at the noisiest timesteps, where recovering x_0 from an eps prediction
divides by sqrt(abar_t) ~ 0.

U-Net (sized for 28x28 on a CPU): sinusoidal time embedding -> MLP; per resolution a residual
block (GroupNorm, SiLU, conv, + time/class embedding, conv), skip connections to the decoder,
self-attention only at the lowest resolution (7x7 = 49 tokens) where it is cheap.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from genforge.generate import diffusion_samplers as S
from genforge.models.attention import MultiHeadAttention
from genforge.models.layers import Dropout

# ---------------------------------------------------------------------------------------
# noise schedule


def make_betas(schedule: str, T: int) -> torch.Tensor:
    """float64 betas. linear: 1e-4..0.02 (Ho et al. 2020); cosine: Nichol & Dhariwal 2021,
    eq. 17, clipped at 0.999."""
    if schedule == "linear":
        return torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    if schedule == "cosine":
        s = 0.008
        t = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        abar = f / f[0]
        return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown noise schedule {schedule!r}; choose linear or cosine")


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer sinusoidal position encoding of the integer timestep (DDPM, appendix B)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)  # (B, dim)


# ---------------------------------------------------------------------------------------
# U-Net blocks


def norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, ch), ch)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2, self.conv2 = norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.dropout = Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]  # (B, c_out, 1, 1) broadcast
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the H*W positions as tokens, residual. The projections
    are Linear over channels (what a 1x1 convolution is)."""

    def __init__(self, ch: int, n_head: int):
        super().__init__()
        self.norm = norm(ch)
        self.attn = MultiHeadAttention(ch, n_head, bias=True)

    def forward(self, x):
        B, C, H, W = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        h = self.attn(tokens).transpose(1, 2).reshape(B, C, H, W)
        return x + h

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # runs saved before the shared attention had 1x1 convs `qkv`, `proj` here, weights
        # (out, in, 1, 1), same channel layout: renamed and flattened, they load unchanged
        for name in ("qkv", "proj"):
            for p in ("weight", "bias"):
                old = f"{prefix}{name}.{p}"
                if old in state_dict:
                    w = state_dict.pop(old)
                    state_dict[f"{prefix}attn.{name}.{p}"] = w.flatten(1) if w.dim() == 4 else w
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class UNet(nn.Module):
    def __init__(self, cfg: "DiffusionConfig"):
        super().__init__()
        base, emb_dim = cfg.base_channels, 4 * cfg.base_channels
        chs = [base * m for m in cfg.channel_mult]  # channels per resolution level
        self.base = base
        self.time_mlp = nn.Sequential(nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # index n_classes is the "no label" token that classifier-free guidance trains with
        self.class_emb = nn.Embedding(cfg.n_classes + 1, emb_dim) if cfg.n_classes else None
        # text conditioning through the same path as the class embedding: a text vector
        # (B, text_dim) is projected and added to the time embedding, so every ResBlock sees
        # it as a per-channel shift (FiLM-style bias, Perez et al. 2018); cheaper on a CPU than
        # cross-attention and enough for one-object captions. `null_text` is the learned
        # "no caption" vector classifier-free guidance trains with. Only built when text_dim
        # > 0, so class-conditional checkpoints load unchanged.
        if cfg.text_dim:
            self.text_proj = nn.Sequential(nn.Linear(cfg.text_dim, emb_dim), nn.SiLU(),
                                           nn.Linear(emb_dim, emb_dim))
            self.null_text = nn.Parameter(torch.zeros(cfg.text_dim))
        else:
            self.text_proj = None
        self.patch = cfg.patch_size
        c_pix = cfg.channels * cfg.patch_size**2  # channels after space-to-depth
        self.inp = nn.Conv2d(c_pix, base, 3, padding=1)

        self.down = nn.ModuleList()
        c_prev = base
        for i, c in enumerate(chs):
            blocks = nn.ModuleList(ResBlock(c_prev if j == 0 else c, c, emb_dim, cfg.dropout)
                                   for j in range(cfg.n_res_blocks))
            sample = nn.Conv2d(c, c, 3, stride=2, padding=1) if i < len(chs) - 1 else nn.Identity()
            self.down.append(nn.ModuleDict({"blocks": blocks, "sample": sample}))
            c_prev = c

        self.mid1 = ResBlock(c_prev, c_prev, emb_dim, cfg.dropout)
        self.mid_attn = Attention(c_prev, cfg.n_head)
        self.mid2 = ResBlock(c_prev, c_prev, emb_dim, cfg.dropout)

        self.up = nn.ModuleList()
        for i, c in reversed(list(enumerate(chs))):
            blocks = nn.ModuleList(ResBlock((c_prev + c) if j == 0 else c, c, emb_dim, cfg.dropout)
                                   for j in range(cfg.n_res_blocks))
            sample = (nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                    nn.Conv2d(c, c, 3, padding=1)) if i > 0 else nn.Identity())
            self.up.append(nn.ModuleDict({"blocks": blocks, "sample": sample}))
            c_prev = c
        self.out = nn.Sequential(norm(c_prev), nn.SiLU(), nn.Conv2d(c_prev, c_pix, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)  # start as "predict zero noise" (stable start)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x, t, y=None, text=None):
        emb = self.time_mlp(timestep_embedding(t, self.base))  # (B, emb_dim)
        if self.class_emb is not None:
            emb = emb + self.class_emb(y)
        if self.text_proj is not None:
            emb = emb + self.text_proj(text)
        if self.patch > 1:  # (B, C, H, W) -> (B, C*p*p, H/p, W/p)
            x = F.pixel_unshuffle(x, self.patch)
        h = self.inp(x)
        skips = []
        for level in self.down:
            for block in level["blocks"]:
                h = block(h, emb)
            skips.append(h)  # (B, c, H_l, W_l) before downsampling
            h = level["sample"](h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for level in self.up:
            h = torch.cat([h, skips.pop()], dim=1)  # (B, c_prev + c, H_l, W_l)
            for block in level["blocks"]:
                h = block(h, emb)
            h = level["sample"](h)
        h = self.out(h)
        return F.pixel_shuffle(h, self.patch) if self.patch > 1 else h


# ---------------------------------------------------------------------------------------
# config and model


@dataclass
class DiffusionConfig:
    image_size: Annotated[int, "[0, inf)"] = 28  # filled by the recipe; divisible by 2**(len(channel_mult)-1)
    channels: Annotated[int, "[0, inf)"] = 1
    n_classes: Annotated[int, "[0, inf)"] = 0  # 0 = unconditional
    base_channels: Annotated[int, "[1, inf)"] = 32
    channel_mult: Annotated[tuple[int, ...], "[1, inf)"] = (1, 2, 2)  # 28 -> 14 -> 7
    n_res_blocks: Annotated[int, "[1, inf)"] = 1
    # > 1: the U-Net works on patch_size x patch_size pixel blocks stacked as channels
    # (space-to-depth, as in patch-based diffusion models), patch_size**2 fewer positions
    patch_size: Annotated[int, "[1, inf)"] = 1
    n_head: Annotated[int, "[1, inf)"] = 4
    dropout: Annotated[float, "[0, 1)"] = 0.0
    timesteps: Annotated[int, "[1, inf)"] = 1000
    schedule: Literal["linear", "cosine"] = "linear"
    p_uncond: Annotated[float, "[0, 1)"] = 0.1  # label dropout for classifier-free guidance (Ho & Salimans 2022)

    # loss weight min(SNR_t, gamma) / SNR_t per timestep ("Min-SNR", Hang et al. 2023): the
    # nearly noise-free timesteps, easy and conflicting with the rest, stop dominating the
    # gradient, which speeds up convergence; 0 = the plain unweighted objective
    min_snr_gamma: Annotated[float, "[0, inf)"] = 0.0
    # what the network predicts: the noise ("eps", DDPM) or the velocity ("v", Salimans & Ho
    # 2022). Min-SNR's weight is min(SNR, gamma) / SNR for eps and min(SNR, gamma) / (SNR + 1)
    # for v, the same weighting of the x_0 error either way
    prediction: Literal["eps", "v"] = "eps"
    # > 0: conditioned on text vectors of this width (text2image recipe), with the null-text
    # vector dropped in at p_uncond for classifier-free guidance
    text_dim: Annotated[int, "[0, inf)"] = 0


class Diffusion(nn.Module):
    def __init__(self, cfg: DiffusionConfig):
        super().__init__()
        if cfg.patch_size < 1:
            raise ValueError(f"patch_size must be >= 1 (1 = work on pixels), got {cfg.patch_size}")
        div = cfg.patch_size * 2 ** (len(cfg.channel_mult) - 1)
        if cfg.image_size % div:
            raise ValueError(f"image_size {cfg.image_size} must be divisible by {div} "
                             f"(patch_size {cfg.patch_size} x 2**(levels-1) for channel_mult "
                             f"{cfg.channel_mult}); use fewer levels or a smaller patch_size")
        if cfg.min_snr_gamma < 0:
            raise ValueError(f"min_snr_gamma must be >= 0 (0 = unweighted loss), got {cfg.min_snr_gamma}")
        if cfg.prediction not in ("eps", "v"):
            raise ValueError(f"prediction must be 'eps' (the noise) or 'v' (the velocity), got {cfg.prediction!r}")
        self.cfg = cfg
        self.net = UNet(cfg)
        betas = make_betas(cfg.schedule, cfg.timesteps)
        abar = torch.cumprod(1 - betas, 0)
        # float64 schedule, cast at use; buffers are non-persistent (rebuilt from the config)
        self.register_buffer("betas", betas, persistent=False)
        self.register_buffer("abar", abar, persistent=False)

    @property
    def null_class(self) -> int:
        return self.cfg.n_classes

    def _gather(self, a: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return a[t].float()[:, None, None, None]  # (B, 1, 1, 1)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Sample x_t ~ q(x_t | x_0) in closed form (DDPM eq. 4)."""
        ab = self._gather(self.abar, t)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def eps(self, x, t, y=None, text=None):
        """The model's noise estimate at x_t (converted from v for a v-prediction model)."""
        out = self.net(x, t, y, text)
        if self.cfg.prediction == "eps":
            return out
        ab = self._gather(self.abar, t)
        return (1 - ab).sqrt() * x + ab.sqrt() * out

    def _x0(self, x_t: torch.Tensor, out: torch.Tensor, t: int) -> torch.Tensor:
        """x_0 from the network's output at the single timestep t."""
        ab = float(self.abar[t])
        if self.cfg.prediction == "v":
            return math.sqrt(ab) * x_t - math.sqrt(1 - ab) * out
        return (x_t - math.sqrt(1 - ab) * out) / math.sqrt(ab)

    def _text_or_null(self, text: torch.Tensor | None, n: int, device) -> torch.Tensor | None:
        if not self.cfg.text_dim:
            return None
        null = self.net.null_text.to(device).expand(n, -1)
        return null if text is None else text.to(device)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None,
                text: torch.Tensor | None = None) -> dict:
        """x: (B, C, H, W) in [0, 1]; text (B, text_dim) for a text-conditioned model.
        Returns {"loss": the simple MSE of the network's target (eps or v), Min-SNR weighted
        when min_snr_gamma > 0}."""
        x0 = x * 2 - 1
        B = x0.shape[0]
        t = torch.randint(0, self.cfg.timesteps, (B,), device=x0.device)
        noise = torch.randn_like(x0)
        if self.cfg.n_classes:
            if y is None:
                raise ValueError("this diffusion model is class-conditional: pass labels y")
            drop = torch.rand(B, device=x0.device) < self.cfg.p_uncond
            y = torch.where(drop, torch.full_like(y, self.null_class), y.long())
        else:
            y = None
        if self.cfg.text_dim:
            if text is None:
                raise ValueError("this diffusion model is text-conditional: pass text vectors")
            drop = torch.rand(B, device=x0.device) < self.cfg.p_uncond
            text = torch.where(drop[:, None], self.net.null_text.expand(B, -1), text)
        pred = self.net(self.q_sample(x0, t, noise), t, y, text)
        v = self.cfg.prediction == "v"
        if v:
            ab = self._gather(self.abar, t)
            target = ab.sqrt() * noise - (1 - ab).sqrt() * x0
        else:
            target = noise
        if not self.cfg.min_snr_gamma:
            return {"loss": F.mse_loss(pred, target)}
        err = (pred - target).pow(2).mean(dim=(1, 2, 3))  # (B,) per-image MSE of the target
        snr = self.abar[t] / (1 - self.abar[t])  # float64, (B,)
        weight = (snr.clamp(max=self.cfg.min_snr_gamma) / (snr + 1 if v else snr)).float()
        return {"loss": (weight * err).mean(), ("v_mse" if v else "eps_mse"): err.mean().detach()}

    def _guided(self, x, t, y, guidance: float, text=None):
        """The network's output (eps or v) guided: out_u + w * (out_c - out_u); w = 1 is the
        plain conditional model, w = 0 the unconditional one, w > 1 trades diversity for class
        fidelity. Both conversions to x_0 are linear in the output, so guiding v is guiding
        eps."""
        if self.cfg.text_dim:
            null = self.net.null_text.expand(len(x), -1)
            if guidance == 1.0:
                return self.net(x, t, None, text)
            if guidance == 0.0:
                return self.net(x, t, None, null)
            e = self.net(torch.cat([x, x]), torch.cat([t, t]), None, torch.cat([text, null]))
            e_c, e_u = e.chunk(2)
            return e_u + guidance * (e_c - e_u)
        if not self.cfg.n_classes:
            return self.net(x, t, None)
        null = torch.full_like(y, self.null_class)
        if guidance == 1.0:
            return self.net(x, t, y)
        if guidance == 0.0:
            return self.net(x, t, null)
        e = self.net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))  # (2B, ...)
        e_c, e_u = e.chunk(2)
        return e_u + guidance * (e_c - e_u)

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None, steps: int | None = None,
               guidance: float = 1.0, eta: float = 0.0, generator: torch.Generator | None = None,
               text: torch.Tensor | None = None, sampler: str = "ddim",
               guidance_interval: tuple[float, float] | None = None) -> torch.Tensor:
        """n images in [0, 1] by `sampler` (genforge.generate.diffusion_samplers):
        "ddim" (eta=0: deterministic, Song et al. 2021 eq. 12; default 50 steps), "ddpm"
        (ancestral, eta=1; default every timestep) or "dpm++" (DPM-Solver++(2M), Lu et al.
        2022; default 10 steps). For a conditional model, y=None samples unconditionally (the
        null label); a text-conditioned one takes `text` (n, text_dim) (None = the null text).
        `guidance_interval` (lo, hi), fractions of the timesteps: guidance only for t/T in
        [lo, hi], the plain conditional model (one forward instead of two) elsewhere
        (Kynkaanniemi et al. 2024: guidance at high noise costs diversity, at low noise it
        does little)."""
        T = self.cfg.timesteps
        S.check_sampler(sampler)
        steps = S.default_steps(sampler, T) if steps is None else steps
        S.check_steps(sampler, steps, T)
        if sampler != "ddim" and eta:
            raise ValueError(f"eta applies to the ddim sampler only (ddpm is eta=1, dpm++ is "
                             f"deterministic), got eta={eta} with sampler {sampler!r}")
        if guidance_interval is not None:
            lo, hi = S.check_guidance_interval(guidance_interval)
        dev = next(self.parameters()).device
        c = self.cfg
        x = torch.randn(n, c.channels, c.image_size, c.image_size, generator=generator).to(dev)
        if c.n_classes:
            y = torch.full((n,), self.null_class, dtype=torch.long) if y is None else y.long()
            y = y.to(dev)
            if y.shape != (n,):
                raise ValueError(f"y must have shape ({n},), got {tuple(y.shape)}")
        text = self._text_or_null(text, n, dev)

        def predict_x0(x_t: torch.Tensor, t: int) -> torch.Tensor:
            w = guidance
            if guidance_interval is not None and not lo <= t / T <= hi:
                w = 1.0
            tt = torch.full((n,), t, device=dev, dtype=torch.long)
            out = self._guided(x_t, tt, y, w, text)
            # clipped to the data range (static thresholding); the solvers take x0, so every
            # sampler clips the same way (DPM-Solver++ is the data-prediction form for this)
            return self._x0(x_t, out, t).clamp(-1, 1)

        if sampler == "dpm++":
            x = S.dpm_solver_pp_2m(x, predict_x0, self.abar, steps)
        else:
            x = S.ddim(x, predict_x0, self.abar, steps, eta=1.0 if sampler == "ddpm" else eta,
                       generator=generator)
        return ((x + 1) / 2).clamp(0, 1)
