"""Text-to-image: the class-conditional diffusion model is unchanged by text conditioning,
guidance on text is eps_u + w (eps_c - eps_u), a text2image run on top of a contrastive run
generates from free text through the CLI and the server, and bad prompts get one message."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from fastapi.testclient import TestClient

from genforge.config import ConfigError, make_config
from genforge.models.diffusion import Diffusion, DiffusionConfig
from genforge.recipes import get_recipe

CLIP_TINY = {"max_steps": 2, "batch_size": 16, "train_limit": 200, "eval_batches": 1, "eval_images": 16,
             "model.image_channels": (4, 8), "model.embed_dim": 16, "model.text_width": 16,
             "model.text_layers": 1, "model.text_heads": 2, "plots": False}
T2I_TINY = {"max_steps": 2, "batch_size": 8, "train_limit": 128, "eval_batches": 1, "sample_grid": 2,
            "sample_steps": 2, "plots": False, "model.base_channels": 8, "model.timesteps": 20}


def test_class_conditional_diffusion_is_unchanged():
    cfg = DiffusionConfig(n_classes=10, base_channels=8, timesteps=20)
    m = Diffusion(cfg)
    assert not any("text" in k for k in m.state_dict())  # old checkpoints load strictly
    torch.manual_seed(0)
    x = torch.rand(2, 1, 28, 28)
    assert torch.isfinite(m(x, torch.tensor([1, 2]))["loss"])


def test_text_guidance_is_the_cfg_combination():
    torch.manual_seed(0)
    m = Diffusion(DiffusionConfig(base_channels=8, timesteps=20, text_dim=6)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # the zero-initialised output layer would hide differences
        x, t, text = torch.randn(3, 1, 28, 28), torch.tensor([3, 7, 11]), torch.randn(3, 6)
        e_c = m.net(x, t, None, text)
        e_u = m.net(x, t, None, m.net.null_text.expand(3, -1))
        assert torch.allclose(m._guided(x, t, None, 2.5, text), e_u + 2.5 * (e_c - e_u), atol=1e-5)
        assert not torch.allclose(e_c, e_u)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from genforge.train.trainer import fit

    root = tmp_path_factory.mktemp("t2i")
    fit("contrastive", make_config(get_recipe("contrastive"), dict(CLIP_TINY)), root / "clip", log=lambda s: None)
    cfg = make_config(get_recipe("text2image"), {**T2I_TINY, "clip": str(root / "clip")})
    fit("text2image", cfg, root / "t2i", log=lambda s: None)
    return root


def test_run_adopts_the_locked_clip_text_tower(runs):
    from safetensors.torch import load_file

    from genforge.train.checkpoint import load_run, weights_path

    _, cfg, model = load_run(runs / "t2i")
    clip_w = load_file(str(weights_path(runs / "clip", "best")))
    for k, v in clip_w.items():  # the text tower did not train: equal to the clip run's
        if k.startswith("text"):
            assert torch.equal(model.clip.state_dict()[k], v), k
    assert not any(p.requires_grad for p in model.clip.parameters())  # locked
    assert any(p.requires_grad for p in model.diffusion.parameters())


def _gf(*args, cwd):
    return subprocess.run([sys.executable, "-m", "genforge", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ))


def test_generate_from_free_text_and_bad_prompts(runs, tmp_path):
    run = str(runs / "t2i")
    p = _gf("generate", run, "--prompt", "a pair of running shoes", "--n", "3", "--steps", "2",
            "--out", "shoes.png", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "shoes.png").is_file() and "wrote 3 images" in p.stdout
    p = _gf("generate", run, "--prompt", "   ", "--steps", "2", cwd=tmp_path)
    assert p.returncode != 0 and "the prompt is empty" in p.stderr and "Traceback" not in p.stderr
    p = _gf("generate", run, "--prompt", "une paire de chaussures de course", "--n", "2", "--steps", "2",
            "--out", "fr.png", cwd=tmp_path)
    assert p.returncode == 0 and (tmp_path / "fr.png").is_file()
    assert "does not look like English" in p.stderr


def test_server_takes_free_text(runs):
    from genforge.serve.app import create_app
    from genforge.serve.engine import Limits, load_models

    models = load_models([runs / "t2i"])
    name = next(iter(models))
    assert "text-prompt" in models[name].capabilities
    with TestClient(create_app(models, Limits(workers=1))) as c:
        info = [m for m in c.get("/v1/models").json()["data"] if m["id"] == name][0]
        assert info["genforge"]["text_prompt"] is True
        r = c.post("/v1/images/generations", json={"model": name, "prompt": "a pair of running shoes",
                                                   "n": 2, "steps": 2, "response_format": "b64_json"})
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert len(data) == 2 and data[0]["revised_prompt"] == "a pair of running shoes"
        r = c.post("/v1/images/generations", json={"model": name, "prompt": "", "steps": 2})
        assert r.status_code == 400 and "prompt" in r.json()["error"]["message"]


def test_sample_refuses_an_empty_prompt(runs):
    from genforge.train.checkpoint import load_run

    recipe, cfg, model = load_run(runs / "t2i")
    with pytest.raises(ConfigError, match="prompt is empty"):
        recipe.sample(model, cfg, n=1, prompt="")
    assert recipe.sample(model, cfg, n=2, label="bag", steps=2).shape == (2, 1, 28, 28)


def test_run_keeps_the_training_captions_vectors_for_the_prior(runs):
    """The caption bank is the locked text tower's vectors of the distinct training captions,
    saved in the run (a loaded run has them without the data)."""
    from genforge.recipes import contrastive as cl
    from genforge.recipes import text2image as t2i
    from genforge.train.checkpoint import load_run

    _, cfg, model = load_run(runs / "t2i")
    caps = t2i.bank_captions(cfg)
    assert cfg.caption_bank == len(caps) == len(set(caps)) > 10
    with torch.no_grad():
        want = model.text(cl.encode_texts(model.tokenizer, caps, cfg.text_max_len))
    assert model.caption_bank.shape == want.shape
    assert torch.allclose(model.caption_bank, want, atol=1e-5)


def test_the_prior_is_the_weighted_mean_of_the_nearest_captions():
    from genforge.recipes.text2image import caption_prior

    torch.manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(50, 8), dim=-1)
    e = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    got = caption_prior(e, bank, k=5, temperature=0.1)
    for i in range(3):  # written out: the 5 most similar rows, softmax weights, renormalised
        sims = bank @ e[i]
        top = sorted(range(50), key=lambda j: -float(sims[j]))[:5]
        w = torch.softmax(sims[top] / 0.1, 0)
        m = sum(w[j] * bank[top[j]] for j in range(5))
        assert torch.allclose(got[i], m / m.norm(), atol=1e-6)
    # a prompt that is a bank row, with k=1, conditions on exactly that row
    assert torch.allclose(caption_prior(bank[7:8], bank, k=1, temperature=0.1), bank[7:8], atol=1e-6)
    assert torch.allclose(got.norm(dim=-1), torch.ones(3))


def test_prior_k_zero_conditions_on_the_prompts_own_vector(runs):
    from genforge.recipes import contrastive as cl
    from genforge.train.checkpoint import load_run

    _, cfg, model = load_run(runs / "t2i")
    tokens = cl.encode_texts(model.tokenizer, ["a pair of running shoes", "a tote bag"], cfg.text_max_len)
    with torch.no_grad():
        own = model.text(tokens)
        assert torch.equal(model.condition(tokens, 0, 0.05), own)
        prior = model.condition(tokens, cfg.prior_k, cfg.prior_temperature)
    assert not torch.allclose(prior, own)
    # unit vectors, as the tower's own are (the U-Net was trained on unit vectors)
    assert torch.allclose(prior.norm(dim=-1), torch.ones(2), atol=1e-5)
