"""DDIM / DDPM / DPM-Solver++(2M) samplers (genforge.generate.diffusion_samplers) and their use
by the diffusion model and the image-generation recipe.

The Gaussian toy: data x0 ~ N(mu, s^2) per pixel. Then x_t = alpha_t x0 + sigma_t eps is
Gaussian too and the exact data predictor is the posterior mean
    E[x0 | x_t] = mu + k_t (x_t - alpha_t mu),   k_t = alpha_t s^2 / (alpha_t^2 s^2 + sigma_t^2),
and the probability-flow ODE maps x_T to x_t = alpha_t mu + (r_t / r_T)(x_T - alpha_T mu),
r_t = sqrt(alpha_t^2 s^2 + sigma_t^2) (the standardised value is carried unchanged). So each
solver update and each whole solve has a closed form to compare with.
"""
import math

import pytest
import torch

from genforge.generate import diffusion_samplers as S
from genforge.models.diffusion import Diffusion, DiffusionConfig, make_betas

MU, SD = 0.3, 0.5
T = 1000
ABAR = torch.cumprod(1 - make_betas("linear", T), 0)


def alpha_sigma(t):
    a = float(ABAR[t])
    return math.sqrt(a), math.sqrt(1 - a)


def exact_x0(x, t):
    a, s = alpha_sigma(t)
    k = a * SD**2 / (a**2 * SD**2 + s**2)
    return MU + k * (x - a * MU)


def exact_flow(x_start, t_start, t_end):
    """The ODE's exact solution from t_start to t_end for the Gaussian toy."""
    a0, s0 = alpha_sigma(t_start)
    a1, s1 = alpha_sigma(t_end)
    r0, r1 = math.sqrt(a0**2 * SD**2 + s0**2), math.sqrt(a1**2 * SD**2 + s1**2)
    return a1 * MU + (r1 / r0) * (x_start - a0 * MU)


def lam(t):
    a, s = alpha_sigma(t)
    return math.log(a / s)


def test_first_order_step_is_the_closed_form_and_ddim():
    x = torch.randn(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t, s = 700, 500
    d = exact_x0(x, t)
    got = S.dpm_solver_pp_update(x, ABAR, t, s, d)
    (a_t, s_t), (a_s, s_s) = alpha_sigma(t), alpha_sigma(s)
    h = lam(s) - lam(t)
    want = s_s / s_t * x + a_s * (1 - math.exp(-h)) * d  # Lu et al. 2022, eq. (9), k = 1
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # the same step written as DDIM: x_s = alpha_s x0 + sigma_s eps_hat
    eps = (x - a_t * d) / s_t
    torch.testing.assert_close(got, a_s * d + s_s * eps, rtol=1e-10, atol=1e-10)


def test_second_order_step_is_the_closed_form_and_beats_first_order():
    x_prev = torch.randn(2000, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t_prev, t, s = 300, 200, 140  # mid-noise, where x0_hat changes fastest along the path
    x = exact_flow(x_prev, t_prev, t)  # on the exact trajectory, so only this step's error counts
    d, d_prev = exact_x0(x, t), exact_x0(x_prev, t_prev)
    got = S.dpm_solver_pp_update(x, ABAR, t, s, d, t_prev, d_prev)
    h, h_prev = lam(s) - lam(t), lam(t) - lam(t_prev)
    r = h_prev / h
    d2 = (1 + 1 / (2 * r)) * d - 1 / (2 * r) * d_prev
    a_s, s_s = alpha_sigma(s)
    want = s_s / alpha_sigma(t)[1] * x + a_s * (1 - math.exp(-h)) * d2  # Algorithm 2, 2M
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    exact = exact_flow(x, t, s)
    err2 = (got - exact).abs().max()
    err1 = (S.dpm_solver_pp_update(x, ABAR, t, s, d) - exact).abs().max()
    assert err2 < err1 / 5, (err1, err2)


def test_few_steps_recover_the_gaussian_and_beat_ddim():
    x_T = torch.randn(20000, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    exact = exact_flow(x_T, T - 1, 0)
    out = S.dpm_solver_pp_2m(x_T, exact_x0, ABAR, 15)
    assert abs(float(out.mean()) - MU) < 0.02
    assert abs(float(out.std()) - SD) < 0.02
    err_dpm = float((out - exact).abs().max())  # worst of 20,000 samples (sd 0.5)
    assert err_dpm < 0.06
    # DDIM ends at clean data rather than t = 0; sigma_0 = 0.01 is far below its error here
    err_ddim = float((S.ddim(x_T, exact_x0, ABAR, 15) - exact).abs().max())
    assert err_dpm < err_ddim / 3, (err_dpm, err_ddim)
    # more steps converge further
    err_dpm30 = float((S.dpm_solver_pp_2m(x_T, exact_x0, ABAR, 30) - exact).abs().max())
    assert err_dpm30 < err_dpm / 2


def test_grid_is_log_snr_uniform_and_strictly_decreasing():
    for steps in (1, 2, 15, 50, 998, 999):
        ts = S.dpm_solver_pp_grid(ABAR, steps)
        assert len(ts) == steps + 1 and ts[0] == T - 1 and ts[-1] == 0
        assert all(a > b for a, b in zip(ts, ts[1:])), ts
    ts = S.dpm_solver_pp_grid(ABAR, 15)
    h = [lam(s) - lam(t) for t, s in zip(ts, ts[1:])]
    assert max(h[:-3]) < 1.3 * min(h[:-3]), h  # near-equal lambda steps until t rounds to 0..3


def test_grid_skips_the_noise_levels_past_the_linear_schedules_end():
    """A cosine schedule ends at sigma/alpha ~ 20,000: the grid still starts at T - 1, but its
    next point is near sigma/alpha = MAX_NOISE_RATIO's lambda step, and the steps after it are
    uniform in lambda; the linear schedule (which ends at ~157) keeps the plain uniform grid."""
    cos = torch.cumprod(1 - make_betas("cosine", T), 0)
    lam_c = 0.5 * (torch.log(cos) - torch.log1p(-cos))
    assert float(lam_c[T - 1]) < -math.log(S.MAX_NOISE_RATIO) - 4  # the premise: far noisier
    ts = S.dpm_solver_pp_grid(cos, 10)
    assert ts[0] == T - 1 and ts[-1] == 0 and all(a > b for a, b in zip(ts, ts[1:]))
    h = [float(lam_c[s] - lam_c[t]) for t, s in zip(ts[1:], ts[2:])]
    start = -math.log(S.MAX_NOISE_RATIO)
    assert abs(float(lam_c[ts[1]]) - (start + (float(lam_c[0]) - start) / 10)) < 0.1
    assert max(h[:-2]) < 1.3 * min(h[:-2]), h
    lam_l = [lam(t) for t in range(T)]
    uniform = torch.linspace(lam_l[T - 1], lam_l[0], 11)
    assert S.dpm_solver_pp_grid(ABAR, 10) == [min(range(T), key=lambda t: abs(lam_l[t] - v)) for v in uniform.tolist()]


@pytest.mark.parametrize("sampler,steps,msg", [
    ("dpm", 10, "unknown sampler 'dpm'; choose one of ddpm, ddim, dpm++"),
    ("dpm++", 0, "dpm++: steps must be between 1 and 19"),
    ("dpm++", 20, "dpm++: steps must be between 1 and 19"),
    ("ddim", 21, "ddim: steps must be between 1 and 20"),
    ("ddpm", -1, "ddpm: steps must be between 1 and 20"),
    ("ddim", 2.5, "steps must be an integer"),
])
def test_invalid_sampler_or_steps_refused(sampler, steps, msg):
    with pytest.raises(ValueError, match=msg.replace("+", r"\+")):
        S.check_steps(sampler, steps, 20)
    model = _tiny_model()
    with pytest.raises(ValueError, match=msg.replace("+", r"\+")):
        model.sample(2, steps=steps, sampler=sampler)


def test_eta_and_guidance_interval_refused_where_they_do_not_apply():
    model = _tiny_model()
    with pytest.raises(ValueError, match="eta applies to the ddim sampler only"):
        model.sample(2, steps=3, sampler="dpm++", eta=0.5)
    with pytest.raises(ValueError, match="guidance_interval must be"):
        model.sample(2, steps=3, sampler="dpm++", guidance=2.0, guidance_interval=(0.8, 0.2))


def _tiny_model(seed=0):
    torch.manual_seed(seed)
    m = Diffusion(DiffusionConfig(image_size=8, n_classes=3, base_channels=8, channel_mult=(1, 2),
                                  timesteps=20, n_head=2)).eval()
    torch.nn.init.normal_(m.net.out[-1].weight, std=0.05)  # zero-init output: make eps depend on x
    return m


@pytest.mark.parametrize("sampler,steps", [("dpm++", 5), ("ddim", 5), ("ddpm", 20)])
def test_sampling_is_deterministic_under_a_seed(sampler, steps):
    model = _tiny_model()
    y = torch.tensor([0, 1, 2, 0])

    def draw(seed):
        return model.sample(4, y, steps=steps, guidance=2.0, sampler=sampler,
                            generator=torch.Generator().manual_seed(seed))

    a, b, c = draw(7), draw(7), draw(8)
    assert a.shape == (4, 1, 8, 8) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_model_samplers_agree_with_the_solver_functions():
    """The model's guided predictor run through the solver functions directly gives the same
    images: the model adds nothing but the predictor (guidance, clipping) and the noise draw."""
    model = _tiny_model()
    y = torch.tensor([0, 1, 2])
    g = torch.Generator().manual_seed(3)
    got = model.sample(3, y, steps=6, guidance=1.5, sampler="dpm++", generator=g)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(3))

    def pred(x_t, t):
        e = model._guided(x_t, torch.full((3,), t), y, 1.5)
        ab = float(model.abar[t])
        return ((x_t - math.sqrt(1 - ab) * e) / math.sqrt(ab)).clamp(-1, 1)

    want = ((S.dpm_solver_pp_2m(x, pred, model.abar, 6) + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(got, want)
    # one step of each is the same first-order update ending at (nearly) clean data
    one_dpm = model.sample(3, y, steps=1, sampler="dpm++", generator=torch.Generator().manual_seed(3))
    one_ddim = model.sample(3, y, steps=1, sampler="ddim", generator=torch.Generator().manual_seed(3))
    assert (one_dpm - one_ddim).abs().max() < 0.02


def test_guidance_interval_switches_guidance_off_outside_it():
    model = _tiny_model()
    y = torch.tensor([0, 1, 2])

    def draw(**kw):
        return model.sample(3, y, steps=4, sampler="dpm++", generator=torch.Generator().manual_seed(0), **kw)

    plain = draw(guidance=1.0)
    assert torch.equal(draw(guidance=3.0, guidance_interval=(0.0, 0.0)), plain)  # t=0 is never evaluated
    assert torch.equal(draw(guidance=3.0, guidance_interval=(0.0, 1.0)), draw(guidance=3.0))
    assert not torch.equal(draw(guidance=3.0, guidance_interval=(0.5, 1.0)), plain)


# ---------------------------------------------------------------------------------------
# the recipe, `genforge generate` and the server's image endpoint


@pytest.fixture(scope="module")
def runs(imagegen_runs):
    return imagegen_runs  # conftest.py: one-step gan, diffusion and vae-mlp runs


def test_recipe_defaults_to_dpm_and_refuses_bad_pairs_before_work(runs):
    from genforge.config import ConfigError
    from genforge.recipes import image_generate as R
    from genforge.train.checkpoint import load_run

    assert R.Config().sampler == "dpm++" and R.Config().sample_steps == 0  # 0: dpm++'s 15
    _, cfg, model = load_run(runs["diffusion"])
    got = R.sample(model, cfg, n=3, seed=5)
    labels = torch.arange(3) % len(cfg.classes)
    want = model.sample(3, labels, steps=cfg.sample_steps, guidance=cfg.guidance, sampler="dpm++",
                        generator=torch.Generator().manual_seed(5))
    assert torch.equal(got, want)
    assert torch.equal(R.sample(model, cfg, n=3, seed=5, sampler="ddim", steps=4),
                       model.sample(3, labels, steps=4, guidance=cfg.guidance, sampler="ddim",
                                    generator=torch.Generator().manual_seed(5)))
    cfg.sample_steps = 0  # the sampler's own default: dpm++ 10 (the tiny model has 20 timesteps)
    R.sample(model, cfg, n=1)
    with pytest.raises(ConfigError, match="ddpm: steps must be between 1 and 20"):
        R.sample(model, cfg, n=1, sampler="ddpm", steps=50)
    with pytest.raises(ConfigError, match="unknown sampler 'euler'"):
        R.sample(model, cfg, n=1, sampler="euler")
    _, vcfg, vae = load_run(runs["vae-mlp"])
    with pytest.raises(ConfigError, match="--sampler apply to diffusion models only"):
        R.sample(vae, vcfg, n=1, sampler="dpm++")


def test_guidance_interval_from_the_run_the_call_and_the_cli(runs, tmp_path):
    """The run's `guidance_interval` reaches the sampler ((0, 1): the every-step path runs
    saved before the key took), a call's overrides it, and a bad interval is one clear error
    before any work, from the config, the call and the CLI."""
    from typer.testing import CliRunner
    from genforge import config as C
    from genforge.cli import app
    from genforge.config import ConfigError
    from genforge.recipes import image_generate as R
    from genforge.train.checkpoint import load_run

    _, cfg, model = load_run(runs["diffusion"])
    labels = torch.arange(3) % len(cfg.classes)

    def direct(interval):
        return model.sample(3, labels, steps=4, guidance=3.0, sampler="dpm++",
                            generator=torch.Generator().manual_seed(5), guidance_interval=interval)

    assert cfg.guidance_interval == (0.0, 1.0)
    every = R.sample(model, cfg, n=3, seed=5, steps=4, guidance=3.0)
    assert torch.equal(every, direct(None))
    cfg.guidance_interval = (0.1, 0.6)  # as a run trained with the key would have it
    mid = R.sample(model, cfg, n=3, seed=5, steps=4, guidance=3.0)
    assert torch.equal(mid, direct((0.1, 0.6))) and not torch.equal(mid, every)
    assert torch.equal(R.sample(model, cfg, n=3, seed=5, steps=4, guidance=3.0, guidance_interval=(0, 1)), every)
    with pytest.raises(ConfigError, match="guidance_interval=0.7,0.2 is not an interval"):
        R.sample(model, cfg, n=1, guidance_interval=(0.7, 0.2))
    _, vcfg, vae = load_run(runs["vae-mlp"])
    with pytest.raises(ConfigError, match="--guidance-interval, --steps and --sampler apply to diffusion"):
        R.sample(vae, vcfg, n=1, guidance_interval=(0.1, 0.6))

    with pytest.raises(ConfigError, match="guidance_interval=0.2,1.5 is out of range"):
        C.make_config(R, {"guidance_interval": (0.2, 1.5)})
    bad = C.make_config(R, {**R.TEST_CONFIGS["diffusion"], "guidance_interval": (0.7, 0.2)})
    with pytest.raises(ConfigError, match="not an interval of t/T"):
        R.build(bad)
    preset = R.PRESETS["diffusion-fashion"][0]
    assert R.check_guidance_interval(preset["guidance_interval"]) == tuple(preset["guidance_interval"])

    out = tmp_path / "grid.png"
    res = CliRunner().invoke(app, ["generate", str(runs["diffusion"]), "--guidance-interval", "0.1,0.6",
                                   "--n", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.is_file()
    res = CliRunner().invoke(app, ["generate", str(runs["diffusion"]), "--guidance-interval", "0.5",
                                   "--out", str(tmp_path / "no.png")])
    assert res.exit_code == 2 and "--guidance-interval takes LO,HI" in res.output
    res = CliRunner().invoke(app, ["generate", str(runs["diffusion"]), "--guidance-interval", "0.9,0.1",
                                   "--out", str(tmp_path / "no.png")])
    assert res.exit_code != 0 and "not an interval of t/T" in str(res.exception)
    assert not (tmp_path / "no.png").exists()


def test_generate_cli_sampler_option(runs, tmp_path):
    from typer.testing import CliRunner
    from genforge.cli import app

    out = tmp_path / "grid.png"
    res = CliRunner().invoke(app, ["generate", str(runs["diffusion"]), "--sampler", "dpm++",
                                   "--steps", "15", "--n", "4", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.is_file()
    res = CliRunner().invoke(app, ["generate", str(runs["diffusion"]), "--sampler", "dpm++",
                                   "--steps", "20", "--n", "4", "--out", str(tmp_path / "no.png")])
    # genforge's main() prints a ConfigError as one line; under CliRunner it is the exception
    assert res.exit_code != 0 and "dpm++: steps must be between 1 and 19" in str(res.exception)
    assert not (tmp_path / "no.png").exists()


def test_image_endpoint_sampler_field(runs):
    from fastapi.testclient import TestClient
    from genforge.serve.app import create_app
    from genforge.serve.engine import Limits, load_models

    models = load_models([runs["diffusion"], runs["vae-mlp"]])
    with TestClient(create_app(models, Limits(workers=1))) as c:
        listed = {m["id"]: m["genforge"] for m in c.get("/v1/models").json()["data"]}
        assert listed["diffusion"]["sampler"] == "dpm++"
        assert listed["diffusion"]["samplers"] == ["dpm++", "ddpm", "ddim"]
        assert "samplers" not in listed["vae-mlp"]

        def post(**kw):
            return c.post("/v1/images/generations", json={"prompt": "bag", "seed": 0, **kw})

        r = post(model="diffusion", sampler="ddim", steps=3)
        assert r.status_code == 200 and len(r.json()["data"]) == 1
        same = post(model="diffusion", sampler="ddim", steps=3)
        assert same.json()["data"] == r.json()["data"]  # deterministic under a seed
        assert post(model="diffusion", sampler="dpm++", steps=3).json()["data"] != r.json()["data"]
        r = post(model="diffusion", sampler="dpm++", steps=20)
        assert r.status_code == 400 and "dpm++: steps must be between 1 and 19" in r.json()["error"]["message"]
        r = post(model="diffusion", sampler="euler")
        assert r.status_code in (400, 422) and "sampler" in r.text
        r = post(model="vae-mlp", sampler="dpm++")
        assert r.status_code == 400 and r.json()["error"]["param"] == "sampler"
        r = post(model="diffusion", sampler="dpm++", steps=4, guidance=3, guidance_interval=[0.5, 1])
        assert r.status_code == 200
        assert r.json()["data"] != post(model="diffusion", sampler="dpm++", steps=4, guidance=3).json()["data"]
        r = post(model="diffusion", guidance_interval=[0.8, 0.2])
        assert r.status_code == 400 and "not an interval of t/T" in r.json()["error"]["message"]
        r = post(model="diffusion", guidance_interval=[0.2, 1.5])
        assert r.status_code in (400, 422) and "guidance_interval" in r.text
        r = post(model="vae-mlp", guidance_interval=[0.2, 0.8])
        assert r.status_code == 400 and r.json()["error"]["param"] == "guidance_interval"


def test_playground_offers_the_runs_samplers_and_sends_the_choice(runs):
    """The image tab in a real browser (Debian's Chromium, as tests/test_serve_browser.py):
    the sampler menu lists the run's samplers, default first, and a choice reaches the server."""
    import json
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install -y --no-install-recommends chromium)")
    from playwright.sync_api import sync_playwright
    from genforge.serve.engine import Limits
    from serving import LiveServer

    with LiveServer([runs["diffusion"], runs["vae-mlp"]], Limits(workers=1)) as live, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            bodies = []
            page.on("request", lambda r: bodies.append(json.loads(r.post_data))
                    if r.url.endswith("/v1/images/generations") else None)
            page.goto(live.url + "/")
            page.click("#tab-images")
            page.wait_for_function("document.querySelectorAll('#image-model option').length > 1")
            page.select_option("#image-model", "vae-mlp")
            assert page.is_disabled("#image-sampler")
            page.select_option("#image-model", "diffusion")
            options = page.eval_on_selector_all("#image-sampler option", "os => os.map(o => o.value)")
            assert options == ["", "dpm++", "ddpm", "ddim"]
            assert "dpm++" in page.text_content("#image-sampler option")  # "default (dpm++)"
            page.select_option("#image-sampler", "ddim")
            page.fill("#image-steps", "2")
            page.fill("#image-n", "2")
            page.click("#image-go")
            page.wait_for_function("document.querySelectorAll('#image-results img').length === 2",
                                   timeout=60_000)
            assert bodies[-1]["sampler"] == "ddim" and bodies[-1]["steps"] == 2
        finally:
            browser.close()


def test_v_prediction_run_trains_saves_and_samples(tmp_path):
    """`model.prediction=v` through the recipe: trained, saved and loaded as a v model that
    samples deterministically; a run whose config.json predates the key loads as eps; a bad
    value is one ConfigError naming the key before any work."""
    import json

    from genforge.config import ConfigError, make_config
    from genforge.recipes import get_recipe
    from genforge.train.checkpoint import load_run
    from genforge.train.trainer import fit

    R = get_recipe("image-generate")
    run = fit("image-generate", make_config(R, {**R.TEST_CONFIGS["diffusion"], "max_steps": 2,
                                                 "model.prediction": "v"}), tmp_path / "v", log=lambda s: None)
    _, cfg, model = load_run(run)
    assert model.cfg.prediction == "v"
    a, b = R.sample(model, cfg, n=3, seed=1), R.sample(model, cfg, n=3, seed=1)
    assert a.shape == (3, 1, 28, 28) and torch.equal(a, b)
    cj = json.loads((run / "config.json").read_text())
    assert cj["model_cfg"]["prediction"] == "v"
    # the same run as one saved before the key existed: its network is read as an eps model
    del cj["model_cfg"]["prediction"]
    (run / "config.json").write_text(json.dumps(cj))
    assert load_run(run)[2].cfg.prediction == "eps"
    with pytest.raises(ConfigError, match="prediction"):
        make_config(R, {**R.TEST_CONFIGS["diffusion"], "model.prediction": "x0"})
