"""Samplers for a discrete-time diffusion model: DDPM (ancestral), DDIM and DPM-Solver++(2M).

All three work on the model's own schedule `abar` (float64, abar[t] = prod_{s<=t} (1 - beta_s))
and on a data predictor `predict_x0(x, t) -> x0_hat`, which the model builds from its eps
output (and its guidance); the solvers never see the network, so the tests can give them the
exact predictor of a Gaussian toy problem and check the updates against closed forms.

With alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t) and the half log-SNR
lambda_t = log(alpha_t / sigma_t), the probability-flow ODE solved exactly over its linear part
gives x_s = (sigma_s / sigma_t) x_t + alpha_s (1 - e^{-h}) x0_hat + O(h^2), h = lambda_s - lambda_t:
DDIM (eta = 0) is that first-order step, and DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++",
Algorithm 2) makes it second order by extrapolating x0_hat linearly in lambda from the previous
step's prediction, with one network call per step.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

SAMPLERS = ("ddpm", "ddim", "dpm++")
# steps when none are given: DPM-Solver++(2M) is close to converged at 10-20 calls on small
# images (Lu et al. 2022, section 6); on this project's Fashion-MNIST U-Net 10 steps scored
# the lowest FID of 10 / 15 / 20 and DDIM-50 (bench/README.md); DDIM at 50 is this project's
# long-standing default;
# DDPM is the ancestral chain over every trained timestep
DEFAULT_STEPS = {"dpm++": 10, "ddim": 50}
# below this many steps the last update is first order: the final interval ends near sigma = 0
# where lambda jumps, so the step ratio r is small and the 1/(2r) extrapolation is unstable
# (Lu et al. 2022, section 5 "lower order final", also the diffusers default)
LOWER_ORDER_FINAL_BELOW = 15
# the noisiest point of the log-SNR grid after its start: sigma / alpha = 160, where the DDPM
# linear schedule (T = 1000) ends. A cosine schedule ends at sigma / alpha ~ 20,000 (its betas
# clipped at 0.999), and a grid uniform in lambda over that whole range put 5 of 10 network
# calls at sigma / alpha >= 49, where x_t carries nothing of the image (bench/README.md)
MAX_NOISE_RATIO = 160.0

Predictor = Callable[[torch.Tensor, int], torch.Tensor]


def default_steps(sampler: str, timesteps: int) -> int:
    check_sampler(sampler)
    return DEFAULT_STEPS.get(sampler, timesteps)


def check_sampler(sampler: str) -> None:
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")


def check_steps(sampler: str, steps: int, timesteps: int) -> None:
    """One message per invalid (sampler, steps) pair, naming the valid range."""
    check_sampler(sampler)
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise ValueError(f"steps must be an integer, got {steps!r}")
    # dpm++ integrates between steps + 1 distinct timesteps, so at most timesteps - 1 steps
    most = timesteps - 1 if sampler == "dpm++" else timesteps
    if not 1 <= steps <= most:
        raise ValueError(f"{sampler}: steps must be between 1 and {most} for this model "
                         f"({timesteps} timesteps), got {steps}")


def check_guidance_interval(interval) -> tuple[float, float]:
    """(lo, hi) as floats; ValueError unless 0 <= lo <= hi <= 1 (fractions of the timesteps)."""
    lo, hi = (float(v) for v in interval)
    if not 0 <= lo <= hi <= 1:
        raise ValueError(f"guidance_interval={lo:g},{hi:g} is not an interval of t/T: "
                         "guidance_interval must be (lo, hi) with 0 <= lo <= hi <= 1 (fractions "
                         "of the timesteps; 0,1 = guidance at every step)")
    return lo, hi


def _alpha_sigma(abar: torch.Tensor, t: int) -> tuple[float, float]:
    """alpha_t, sigma_t as Python floats (float64); t = -1 is clean data (alpha 1, sigma 0)."""
    if t < 0:
        return 1.0, 0.0
    a = float(abar[t])
    return math.sqrt(a), math.sqrt(1.0 - a)


def ddim(x: torch.Tensor, predict_x0: Predictor, abar: torch.Tensor, steps: int, eta: float = 0.0,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12) over `steps` evenly spaced timesteps from T-1 down to 0,
    then to clean data. eta = 0: deterministic; eta = 1 with steps = T: ancestral DDPM."""
    T = len(abar)
    ts = torch.linspace(T - 1, 0, steps).round().long().tolist()  # descending timesteps
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        ab = float(abar[t])
        ab_prev = float(abar[t_prev]) if t_prev >= 0 else 1.0
        x0 = predict_x0(x, t)
        e = (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)  # eps consistent with x0_hat
        sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
        x = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * e
        if t_prev >= 0 and eta > 0:
            x = x + sigma * torch.randn(x.shape, generator=generator).to(x.device)
    return x


def dpm_solver_pp_grid(abar: torch.Tensor, steps: int) -> list[int]:
    """steps + 1 strictly decreasing timesteps from T-1 to 0, uniform in lambda (log-SNR): one
    network call at each point but the last, where the solve ends (sigma_0 ~ 0.01 for the
    linear schedule). Uniform in lambda, not in t, as Lu et al. (2022) recommend for
    low-resolution pixel models: uniform-in-t grids leave one huge lambda jump between the
    last two points (t = 67 -> 0 at 15 steps is 3.2 of the 9.7 total), where most of the
    image's detail is decided. The grid starts at T - 1 and is uniform from
    max(lambda_{T-1}, -log MAX_NOISE_RATIO): a schedule that ends noisier than that (cosine)
    makes its first step from T - 1 straight to the uniform grid's second point. Each point is
    the timestep nearest its lambda, then moved just enough to keep the points distinct
    (steps <= T - 1)."""
    T = len(abar)
    lam = 0.5 * (torch.log(abar) - torch.log1p(-abar))  # (T,) decreasing in t
    start = max(float(lam[T - 1]), -math.log(MAX_NOISE_RATIO))
    targets = torch.linspace(start, float(lam[0]), steps + 1, dtype=torch.float64)
    targets[0] = float(lam[T - 1])  # the solve starts at the schedule's last timestep
    near = [int((lam - v).abs().argmin()) for v in targets]  # non-increasing
    # room for the remaining points: t_i in [steps - i, T - 1 - i], then strictly decreasing
    ts = [min(max(u, steps - i), T - 1 - i) for i, u in enumerate(near)]
    for i in range(steps - 1, -1, -1):
        ts[i] = max(ts[i], ts[i + 1] + 1)
    return ts


def dpm_solver_pp_update(x: torch.Tensor, abar: torch.Tensor, t: int, s: int, d: torch.Tensor,
                         t_prev: int | None = None, d_prev: torch.Tensor | None = None) -> torch.Tensor:
    """One DPM-Solver++ step from timestep t to s < t with data prediction d = x0_hat(x, t).
    Without (t_prev, d_prev): first order (= DDIM). With the previous step's timestep and
    prediction: second order (2M), d replaced by (1 + 1/(2r)) d - 1/(2r) d_prev, r = h_prev / h."""
    a_t, s_t = _alpha_sigma(abar, t)
    a_s, s_s = _alpha_sigma(abar, s)
    lam_t, lam_s = math.log(a_t / s_t), math.log(a_s / s_s)
    h = lam_s - lam_t
    if d_prev is not None:
        a_p, s_p = _alpha_sigma(abar, t_prev)
        r = (lam_t - math.log(a_p / s_p)) / h
        d = (1 + 1 / (2 * r)) * d - (1 / (2 * r)) * d_prev
    return (s_s / s_t) * x + a_s * (-math.expm1(-h)) * d


def dpm_solver_pp_2m(x: torch.Tensor, predict_x0: Predictor, abar: torch.Tensor, steps: int,
                     lower_order_final: bool = True) -> torch.Tensor:
    """DPM-Solver++(2M) from x_{T-1} ~ N(0, I) to x_0, `steps` network calls: the first step
    first order (no previous prediction yet), the rest second order, except the last when
    `lower_order_final` and steps < LOWER_ORDER_FINAL_BELOW."""
    ts = dpm_solver_pp_grid(abar, steps)
    d_prev, t_prev = None, None
    for i in range(steps):
        t, s = ts[i], ts[i + 1]
        d = predict_x0(x, t)
        first_order = d_prev is None or (lower_order_final and i == steps - 1
                                         and steps < LOWER_ORDER_FINAL_BELOW)
        if first_order:
            x = dpm_solver_pp_update(x, abar, t, s, d)
        else:
            x = dpm_solver_pp_update(x, abar, t, s, d, t_prev, d_prev)
        d_prev, t_prev = d, t
    return x
