"""Oracle tests for the generative image models (VAE, DCGAN, DDPM/DDIM)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Normal, kl_divergence

from genforge.models.diffusion import Diffusion, DiffusionConfig, make_betas
from genforge.models.gan import GAN, GANConfig
from genforge.models.vae import VAE, VAEConfig, kl_standard_normal, reparameterize

# ---------------------------------------------------------------------------------------
# VAE


def test_kl_term_matches_torch_distributions_oracle():
    torch.manual_seed(0)
    mu, logvar = torch.randn(16, 20) * 2, torch.randn(16, 20)
    oracle = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(kl_standard_normal(mu, logvar), oracle, rtol=1e-5, atol=1e-5)
    assert torch.all(kl_standard_normal(torch.zeros(3, 5), torch.zeros(3, 5)) == 0)


@pytest.mark.parametrize("arch", ["mlp", "conv"])
@pytest.mark.parametrize("n_classes", [0, 10])
def test_vae_loss_is_bernoulli_nll_plus_beta_kl(arch, n_classes):
    torch.manual_seed(0)
    model = VAE(VAEConfig(arch=arch, n_classes=n_classes, beta=0.5))
    x = (torch.rand(8, 1, 28, 28) > 0.5).float()  # binary pixels: BCE is exactly -log Bernoulli
    y = torch.randint(0, 10, (8,)) if n_classes else None
    torch.manual_seed(1)
    out = model(x, y)
    torch.manual_seed(1)
    mu, logvar = model.encode(x, y)
    logits = model.decode(reparameterize(mu, logvar), y)
    recon = -Bernoulli(logits=logits).log_prob(x).flatten(1).sum(1).mean()
    kl = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(-1).mean()
    torch.testing.assert_close(out["recon"], recon, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(out["kl"], kl, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out["loss"], recon + 0.5 * kl, rtol=1e-5, atol=1e-3)


def test_vae_samplers_shapes_and_interpolation_endpoints():
    torch.manual_seed(0)
    model = VAE(VAEConfig(arch="conv", latent=8)).eval()
    x = torch.rand(2, 1, 28, 28)
    assert model.sample(5).shape == (5, 1, 28, 28)
    strip = model.interpolate(x[0], x[1], steps=6)
    assert strip.shape == (6, 1, 28, 28)
    rec = model.reconstruct(x)  # decodes the posterior mean: the strip's two ends
    torch.testing.assert_close(strip[0], rec[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(strip[-1], rec[1], rtol=1e-5, atol=1e-5)


def test_conditional_vae_requires_labels_and_learns():
    torch.manual_seed(0)
    model = VAE(VAEConfig(n_classes=3, hidden=64, latent=4))
    templates = (torch.rand(3, 1, 28, 28) > 0.5).float()
    y = torch.randint(0, 3, (16,))
    x = templates[y]  # one binary image per class: the decoder can learn it from the label
    with pytest.raises(ValueError, match="class-conditional"):
        model(x)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    first = model(x, y)["loss"].item()
    for _ in range(30):
        loss = model(x, y)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 2  # nats per image; untrained recon is ~543
    assert model.negative_elbo(x, y).shape == (16,)


# ---------------------------------------------------------------------------------------
# DDPM


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ddpm_forward_marginals_match_closed_form(schedule):
    """Run the Markov chain q(x_t | x_{t-1}) = N(sqrt(1-b_t) x_{t-1}, b_t I) step by step and
    compare the empirical mean/variance of x_t with the closed form used by q_sample."""
    torch.manual_seed(0)
    model = Diffusion(DiffusionConfig(schedule=schedule, timesteps=200, base_channels=8,
                                      channel_mult=(1,)))
    betas = model.betas.float()
    x0 = torch.tensor([-1.0, -0.3, 0.4, 1.0]).view(1, 4, 1, 1)  # 4 "pixels"
    n = 40_000
    x = x0.expand(n, 4, 1, 1).clone()
    checked = {9, 99, 199}
    for t in range(200):
        x = (1 - betas[t]).sqrt() * x + betas[t].sqrt() * torch.randn_like(x)
        if t in checked:
            ab = float(torch.prod(1 - betas[: t + 1].double()))
            mean, var = x.mean(0), x.var(0)
            torch.testing.assert_close(mean, math.sqrt(ab) * x0[0], rtol=0, atol=0.02)
            torch.testing.assert_close(var, torch.full_like(var, 1 - ab), rtol=0.05, atol=1e-4)
            # q_sample draws the same marginal in one step
            tt = torch.full((n,), t, dtype=torch.long)
            xs = model.q_sample(x0.expand(n, 4, 1, 1), tt, torch.randn(n, 4, 1, 1))
            torch.testing.assert_close(xs.mean(0), mean, rtol=0, atol=0.03)
            torch.testing.assert_close(xs.var(0), var, rtol=0.06, atol=1e-4)


def test_betas_schedules_are_valid():
    for s in ["linear", "cosine"]:
        b = make_betas(s, 1000)
        assert b.shape == (1000,) and torch.all(b > 0) and torch.all(b < 1)
    with pytest.raises(ValueError, match="schedule"):
        make_betas("quadratic", 10)


def test_ddim_sampler_shapes_guidance_and_determinism():
    torch.manual_seed(0)
    model = Diffusion(DiffusionConfig(n_classes=3, base_channels=8, timesteps=50, image_size=8,
                                      channel_mult=(1, 2))).eval()
    # give the zero-initialised output layer weights so guidance has something to combine
    torch.nn.init.normal_(model.net.out[-1].weight, std=0.1)
    y = torch.tensor([0, 1, 2, 0])
    a = model.sample(4, y, steps=5, guidance=3.0, generator=torch.Generator().manual_seed(1))
    b = model.sample(4, y, steps=5, guidance=3.0, generator=torch.Generator().manual_seed(1))
    assert a.shape == (4, 1, 8, 8) and a.min() >= 0 and a.max() <= 1
    torch.testing.assert_close(a, b)  # eta=0 DDIM is deterministic given the start noise
    c = model.sample(4, y, steps=5, guidance=1.0, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(a, c)
    # guidance combines the two predictions linearly
    x, t = torch.randn(4, 1, 8, 8), torch.full((4,), 10)
    e_c, e_u = model.net(x, t, y), model.net(x, t, torch.full_like(y, 3))
    torch.testing.assert_close(model._guided(x, t, y, 3.0), e_u + 3.0 * (e_c - e_u),
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="steps"):
        model.sample(2, y[:2], steps=0)


@pytest.mark.parametrize("patch_size,prediction", [(1, "eps"), (2, "eps"), (1, "v")])
def test_diffusion_loss_trains(patch_size, prediction):
    torch.manual_seed(0)
    model = Diffusion(DiffusionConfig(base_channels=8, timesteps=100, image_size=8,
                                      channel_mult=(1, 2), patch_size=patch_size,
                                      prediction=prediction))
    # two images, eight copies each: data a small net can learn in a few steps (v's target
    # carries x0, which is noise to the net when every image is a fresh random one)
    x = torch.rand(2, 1, 8, 8).repeat(8, 1, 1, 1)
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    losses = []
    for _ in range(40 * patch_size):  # 4x4 positions of 4 channels: slower to start learning
        loss = model(x)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:5]) / 5


def test_patched_unet_is_a_pixel_unet_on_stacked_2x2_blocks():
    """patch_size=2: the U-Net of a 1-channel 8x8 image is the plain U-Net of the 4-channel
    4x4 image whose channels are the pixels of each 2x2 block (space-to-depth), mapped back."""
    torch.manual_seed(0)
    patched = Diffusion(DiffusionConfig(n_classes=3, base_channels=8, timesteps=50, image_size=8,
                                        channel_mult=(1, 2), patch_size=2)).net
    plain = Diffusion(DiffusionConfig(n_classes=3, base_channels=8, timesteps=50, image_size=4,
                                      channels=4, channel_mult=(1, 2))).net
    plain.load_state_dict(patched.state_dict())
    torch.nn.init.normal_(patched.out[-1].weight, std=0.1)
    plain.out[-1].weight.data.copy_(patched.out[-1].weight)
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([3, 40]), torch.tensor([0, 2])
    blocks = x.reshape(2, 1, 4, 2, 4, 2).permute(0, 1, 3, 5, 2, 4).reshape(2, 4, 4, 4)
    out = patched(x, t, y)
    assert out.shape == x.shape
    ref = plain(blocks, t, y).reshape(2, 1, 2, 2, 4, 4).permute(0, 1, 4, 2, 5, 3).reshape(2, 1, 8, 8)
    torch.testing.assert_close(out, ref)
    with pytest.raises(ValueError, match="divisible by 8"):
        Diffusion(DiffusionConfig(image_size=28, patch_size=2, channel_mult=(1, 2, 2)))
    with pytest.raises(ValueError, match="patch_size must be >= 1"):
        Diffusion(DiffusionConfig(image_size=28, patch_size=0))


def test_unet_attention_is_conv_attention_and_loads_conv_checkpoints(tmp_path):
    """The U-Net's attention over H*W tokens (shared MultiHeadAttention, Linear projections)
    equals the 1x1-conv formulation runs were saved with, and such a run's weights (conv
    shapes, old names) still load through the run loader and give the same noise prediction."""
    from safetensors.torch import save_file

    from genforge.models.diffusion import Attention
    from genforge.train.checkpoint import load_weights

    torch.manual_seed(0)
    cfg = DiffusionConfig(n_classes=3, base_channels=8, timesteps=50, image_size=8,
                          channel_mult=(1, 2), n_head=4)
    model = Diffusion(cfg).eval()
    torch.nn.init.normal_(model.net.out[-1].weight, std=0.1)  # non-zero output
    attn = model.net.mid_attn
    # the conv formulation, written out: qkv and proj as 1x1 convs over (B, C, H, W)
    x = torch.randn(2, 16, 4, 4)
    B, C, H, W = x.shape
    qkv_w = attn.attn.qkv.weight[:, :, None, None]
    proj_w = attn.attn.proj.weight[:, :, None, None]
    qkv = F.conv2d(attn.norm(x), qkv_w, attn.attn.qkv.bias).reshape(B, 3, 4, C // 4, H * W)
    q, k, v = (a.transpose(-1, -2) for a in qkv.unbind(1))  # (B, nh, HW, hs)
    h = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(B, C, H, W)
    torch.testing.assert_close(attn(x), x + F.conv2d(h, proj_w, attn.attn.proj.bias))

    old = {}
    for k_, v_ in model.state_dict().items():
        if ".mid_attn.attn." in k_:
            k_ = k_.replace(".mid_attn.attn.", ".mid_attn.")
            v_ = v_[:, :, None, None] if v_.dim() == 2 else v_
        old[k_] = v_.contiguous()
    assert "net.mid_attn.qkv.weight" in old and old["net.mid_attn.qkv.weight"].dim() == 4
    save_file(old, str(tmp_path / "model.safetensors"))
    torch.manual_seed(1)
    loaded = Diffusion(cfg).eval()
    load_weights(loaded, tmp_path / "model.safetensors")
    xt, t, y = torch.randn(2, 1, 8, 8), torch.tensor([3, 40]), torch.tensor([0, 2])
    torch.testing.assert_close(loaded.eps(xt, t, y), model.eps(xt, t, y))
    assert isinstance(loaded.net.mid_attn, Attention)


def test_min_snr_weighting_matches_its_formula():
    """Min-SNR-gamma: loss = mean_i min(SNR_t, gamma) / SNR_t * ||eps_i - eps_theta||^2, which
    is the plain objective when gamma exceeds every timestep's SNR."""
    cfg = dict(base_channels=8, timesteps=100, image_size=8, channel_mult=(1, 2))
    x = torch.rand(32, 1, 8, 8)
    plain = Diffusion(DiffusionConfig(**cfg))
    for gamma in (5.0, 1e9):
        weighted = Diffusion(DiffusionConfig(**cfg, min_snr_gamma=gamma))
        weighted.load_state_dict(plain.state_dict())
        torch.manual_seed(1)
        out = weighted(x)
        # replay the same draws: t, then noise
        torch.manual_seed(1)
        t = torch.randint(0, 100, (32,))
        noise = torch.randn_like(x)
        with torch.no_grad():
            pred = plain.net(plain.q_sample(x * 2 - 1, t, noise), t, None)
        err = (pred - noise).pow(2).mean(dim=(1, 2, 3))
        snr = plain.abar[t] / (1 - plain.abar[t])
        w = (snr.clamp(max=gamma) / snr).float()
        assert torch.allclose(out["loss"], (w * err).mean(), rtol=1e-5)
        assert torch.allclose(out["eps_mse"], err.mean(), rtol=1e-5)
        if gamma == 1e9:
            assert torch.allclose(out["loss"], err.mean(), rtol=1e-5)
        else:  # the low-noise timesteps (SNR > gamma) are down-weighted
            assert (w[snr > gamma] < 1).all() and (w[snr <= gamma] == 1).all()


def test_v_prediction_loss_is_the_min_snr_eps_loss_in_v_form():
    """prediction="v": the target is v = sqrt(abar) eps - sqrt(1 - abar) x0, weighted by
    min(SNR, gamma) / (SNR + 1); that equals the eps-form Min-SNR loss of the same network's
    implied noise estimate (eps error = sqrt(abar) * v error), so both forms weight the x0
    error alike."""
    cfg = dict(base_channels=8, timesteps=100, image_size=8, channel_mult=(1, 2), schedule="cosine")
    x = torch.rand(32, 1, 8, 8)
    torch.manual_seed(0)
    model = Diffusion(DiffusionConfig(**cfg, prediction="v", min_snr_gamma=5.0))
    torch.nn.init.normal_(model.net.out[-1].weight, std=0.1)
    torch.manual_seed(1)
    out = model(x)
    torch.manual_seed(1)
    t = torch.randint(0, 100, (32,))
    noise = torch.randn_like(x)
    x0 = x * 2 - 1
    ab = model.abar[t].float()[:, None, None, None]
    xt = model.q_sample(x0, t, noise)
    with torch.no_grad():
        pred = model.net(xt, t, None)
        eps_hat = model.eps(xt, t)
    v = ab.sqrt() * noise - (1 - ab).sqrt() * x0
    err = (pred - v).pow(2).mean(dim=(1, 2, 3))
    snr = model.abar[t] / (1 - model.abar[t])
    w = (snr.clamp(max=5.0) / (snr + 1)).float()
    assert torch.allclose(out["loss"], (w * err).mean(), rtol=1e-5)
    assert torch.allclose(out["v_mse"], err.mean(), rtol=1e-5)
    eps_err = (eps_hat - noise).pow(2).mean(dim=(1, 2, 3))
    w_eps = (snr.clamp(max=5.0) / snr).float()
    assert torch.allclose(out["loss"], (w_eps * eps_err).mean(), rtol=1e-4)
    # unweighted: plain MSE against v
    plain = Diffusion(DiffusionConfig(**cfg, prediction="v"))
    plain.load_state_dict(model.state_dict())
    torch.manual_seed(1)
    assert torch.allclose(plain(x)["loss"], F.mse_loss(pred, v), rtol=1e-5)
    with pytest.raises(ValueError, match="prediction must be"):
        Diffusion(DiffusionConfig(**cfg, prediction="x0"))


class _Exact(torch.nn.Module):
    """The exact eps- or v-predictor for data that is one fixed image x0 (x_t determines eps)."""

    def __init__(self, abar, x0, prediction):
        super().__init__()
        self.abar, self.x0, self.prediction = abar, x0, prediction
        self.unused = torch.nn.Parameter(torch.zeros(()))  # the model reads its device from here

    def forward(self, x, t, y=None, text=None):
        ab = self.abar[t].float()[:, None, None, None]
        eps = (x - ab.sqrt() * self.x0) / (1 - ab).sqrt()
        return eps if self.prediction == "eps" else ab.sqrt() * eps - (1 - ab).sqrt() * self.x0


@pytest.mark.parametrize("sampler,steps", [("dpm++", 5), ("ddim", 5)])
def test_v_prediction_sampling_follows_the_same_path_as_eps(sampler, steps):
    """Exact predictors of a one-image data set, one predicting eps and one v, give the same
    samples from the same noise, and both land on that image (up to the noise left at t = 0):
    the v -> x0 conversion is right at every timestep, the noisiest included."""
    x0 = torch.rand(1, 1, 8, 8) * 1.6 - 0.8
    got = {}
    for pred in ("eps", "v"):
        model = Diffusion(DiffusionConfig(base_channels=8, timesteps=1000, image_size=8,
                                          channel_mult=(1, 2), schedule="cosine", prediction=pred))
        model.net = _Exact(model.abar, x0, pred)
        got[pred] = model.sample(3, steps=steps, sampler=sampler, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(got["v"], got["eps"], atol=1e-4, rtol=0)
    assert (got["v"] - (x0 + 1) / 2).abs().max() < 0.02


# ---------------------------------------------------------------------------------------
# GAN


def test_gan_losses_route_gradients_to_the_right_network():
    torch.manual_seed(0)
    model = GAN(GANConfig(n_classes=4, g_channels=8, d_channels=8))
    y = torch.randint(0, 4, (8,))
    real = torch.rand(8, 1, 28, 28) * 2 - 1
    fake = model.generator(model.noise(8), y)
    d = model.d_loss(real, fake, y)
    d["loss"].backward()
    assert all(p.grad is None for p in model.generator.parameters())  # fake is detached
    assert all(p.grad is not None for p in model.discriminator.parameters())
    assert 0 < d["d_real"] < 1 and 0 < d["d_fake"] < 1
    model.zero_grad(set_to_none=True)
    model.g_loss(fake, y)["loss"].backward()
    assert all(p.grad is not None for p in model.generator.parameters())
    # non-saturating loss: -log D(G(z)) = softplus(-logit)
    logit = model.discriminator(fake, y)
    torch.testing.assert_close(model.g_loss(fake, y)["loss"],
                               -torch.log(torch.sigmoid(logit)).mean(), rtol=1e-5, atol=1e-6)
    s = model.sample(3, torch.tensor([0, 1, 2]))
    assert s.shape == (3, 1, 28, 28) and s.min() >= 0 and s.max() <= 1
    assert model.generator.training  # sample() restores the mode
